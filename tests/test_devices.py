"""--device and --precision: refused where they cannot run; on CUDA, results agree with the CPU and with fp32.

The CUDA tests are skipped on a machine without a GPU (CI); they were run on an H200 (README, "Devices").
"""

import numpy as np
import pytest
import torch

from ebmtool.io.checkpoints import load_checkpoint
from ebmtool.cli import cli
from ebmtool.runtime.devices import autocast, check_precision, resolve_device
from ebmtool.runtime.errors import InputError
from ebmtool.analysis.evaluate import evaluation_problems, load_model, per_problem_errors, sample_answers
from ebmtool.training.loop import train

from helpers import TINY_FLAGS, tiny

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_unknown_device_and_precision_are_input_errors():
    with pytest.raises(InputError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    with pytest.raises(InputError, match="unknown precision 'fp8'"):
        check_precision("fp8", torch.device("cpu"))
    assert resolve_device("cpu") == torch.device("cpu")


def test_bf16_on_cpu_is_refused_with_one_sentence(runner, tmp_path):
    r = runner.invoke(cli, ["train", *TINY_FLAGS, "--steps", "1", "--precision", "bf16", "-o", str(tmp_path / "r")])
    assert r.exit_code == 2
    assert "Error: --precision bf16 runs on CUDA only" in r.output
    assert not (tmp_path / "r" / "ckpt.safetensors").exists()


def test_fp32_autocast_turns_no_autocast_on_and_bf16_is_refused_on_the_cpu():
    """fp32: no autocast context of any device (one for CUDA would change nothing in a CPU matmul, so the
    context itself is checked); bf16 on the CPU: refused (a CPU autocast would really give bf16 products)."""
    ctx = autocast("cpu", "fp32")
    assert not isinstance(ctx, torch.autocast), ctx
    with ctx:
        assert not torch.is_autocast_enabled("cpu") and not torch.is_autocast_enabled("cuda")
    with pytest.raises(InputError, match="--precision bf16 runs on CUDA only"):
        autocast("cpu", "bf16")


@cuda
def test_bf16_autocast_gives_bf16_products_on_cuda_and_fp32_gives_fp32():
    x = torch.randn(64, 64, device="cuda")
    with autocast("cuda", "bf16"):
        assert torch.is_autocast_enabled("cuda") and (x @ x).dtype == torch.bfloat16
        assert (x + x).dtype == torch.float32  # autocast's policy: only the products are rounded
    with autocast("cuda", "fp32"):
        assert not torch.is_autocast_enabled("cuda") and (x @ x).dtype == torch.float32


def test_eval_records_device_and_precision(runner, tmp_path):
    out = tmp_path / "r"
    assert runner.invoke(cli, ["train", *TINY_FLAGS, "--steps", "2", "--seed", "0", "-o", str(out)]).exit_code == 0
    r = runner.invoke(cli, ["eval", str(out), "-n", "8", "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    assert '"precision": "fp32"' in r.output and '"device": "cpu"' in r.output
    r = runner.invoke(cli, ["eval", str(out), "-n", "8", "--device", "cpu", "--precision", "bf16"])
    assert r.exit_code == 2 and "--precision bf16 runs on CUDA only" in r.output


@cuda
def test_cuda_training_matches_cpu_training(tmp_path):
    """Every random draw is made on the CPU and moved, so the device changes only float rounding."""
    cpu = train(tiny(steps=20, seed=3, device="cpu"), tmp_path / "cpu", log=lambda *_: None)
    gpu = train(tiny(steps=20, seed=3, device="cuda"), tmp_path / "gpu", log=lambda *_: None)
    a, b = load_checkpoint(cpu.out_dir / "ckpt.safetensors"), load_checkpoint(gpu.out_dir / "ckpt.safetensors")
    for name, t in a.group("model").items():
        assert torch.allclose(t, b.group("model")[name], atol=1e-4, rtol=1e-3), name


@cuda
def test_bf16_agrees_with_fp32_within_tolerance(tmp_path):
    """Stated tolerance: after 200 steps the bf16 run's denoising loss is within 10 % of fp32's, and a bf16
    sampler on the fp32 weights gives answers within 0.05 RMS of the fp32 sampler's (answers are O(1))."""
    import h5py

    runs = {p: train(tiny(steps=200, seed=5, device="cuda", precision=p), tmp_path / p, log=lambda *_: None)
            for p in ("fp32", "bf16")}
    loss = {}
    for p, r in runs.items():
        with h5py.File(r.out_dir / "metrics.h5") as f:
            loss[p] = float(np.mean(f["loss_denoise"][-5:]))
    assert abs(loss["bf16"] - loss["fp32"]) <= 0.10 * loss["fp32"], loss

    ckpt = load_checkpoint(runs["fp32"].out_dir / "ckpt.safetensors")
    task, problems, _ = evaluation_problems(ckpt, n=256)
    model = load_model(ckpt, "model", "cuda")
    answers = {p: sample_answers(model, task, problems, device="cuda", precision=p) for p in ("fp32", "bf16")}
    rms = float(np.sqrt(np.mean((answers["bf16"] - answers["fp32"]) ** 2)))
    assert rms < 0.05, rms
    mse = {p: float(per_problem_errors(task, problems, a)["mse"].mean()) for p, a in answers.items()}
    assert abs(mse["bf16"] - mse["fp32"]) <= 0.1 * mse["fp32"] + 1e-3, mse


def test_under_torchrun_a_process_without_its_own_gpu_is_refused_but_cpu_runs(monkeypatch):
    from ebmtool.runtime import distributed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(distributed, "active", lambda: True)
    monkeypatch.setattr(distributed, "local_rank", lambda: 1)
    with pytest.raises(InputError, match="LOCAL_RANK 1 has no GPU of its own"):
        resolve_device("auto")
    with pytest.raises(InputError, match="each process uses its own GPU"):
        resolve_device("cuda:0")
    assert resolve_device("cpu") == torch.device("cpu")
