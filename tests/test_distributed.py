"""Several processes under torchrun (gloo, CPU) reproduce one process: training, resume, mining, scoring.

Each torchrun launch is a real `python -m torch.distributed.run --nproc-per-node 2 -m ebmtool ...` (a few seconds of
start-up each, so the launches are few and the problems tiny). The one-process references run in this process
through the library, with the same seed and the same global batch.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from ebmtool.runtime import distributed
from ebmtool.io.artifacts import safetensors_metadata
from ebmtool.io.checkpoints import load_checkpoint
from ebmtool.runtime.errors import InputError
from ebmtool.method.diffusion import cosine_schedule
from ebmtool.offline.mining import MineOptions, mine, score
from ebmtool.method.models import EnergyMLP
from ebmtool.negatives import NegativeSettings, draw_noise, generate
from ebmtool.training.state import RunState
from ebmtool.config import TrainConfig
from ebmtool.tasks.data import TrainingData
from ebmtool.training.loop import check_world, train

from helpers import flags

ROOT = Path(__file__).resolve().parents[1]
# a traceback line inside the ebmtool package itself (not torchrun's own, which may live under a checkout that is
# also called ebmtool/, e.g. CI's)
OWN_TRACEBACK = 'File "' + re.escape(str(Path(distributed.__file__).resolve().parent)) + '/'
pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available in this torch build")

# the CLI flags and the library configuration of the same tiny run
CFG = dict(task="inverse", size=4, steps=6, batch_size=8, train_size=64, val_size=16, width=32, seed=7, log_every=1,
           eval_every=0, device="cpu")  # a global batch that two processes split evenly
FLAGS = flags(**CFG)
LOSS_COLUMNS = ("step", "loss_total", "loss_denoise", "loss_energy", "energy_pos", "energy_neg", "margin", "p_hard",
                "norm_ratio", "grad_norm", "skipped_steps")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path, "TQDM_DISABLE": "1"}


def _torchrun_cmd(*args: str, nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-port",
            str(_free_port()), "-m", "ebmtool", *args]


def torchrun(*args: str, nproc: int = 2, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(_torchrun_cmd(*args, nproc=nproc), capture_output=True, text=True, env=_env(),
                          timeout=300, cwd=ROOT)
    if check:
        assert done.returncode == 0, done.stderr[-4000:]
    return done


def _quiet(msg):
    pass


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    ck = load_checkpoint(path)
    return {k: v for k, v in ck.tensors.items() if k.startswith(("model/", "ema/", "optim/"))}


def assert_same_tensors(a: Path, b: Path, atol: float = 1e-5):
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        torch.testing.assert_close(ta[k].float(), tb[k].float(), atol=atol, rtol=0, msg=k)


def assert_same_metrics(a: Path, b: Path, columns=LOSS_COLUMNS, rtol: float = 1e-4):
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        for c in columns:
            np.testing.assert_allclose(fa[c][()], fb[c][()], rtol=rtol, atol=1e-6, err_msg=c)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The one-process reference run (6 steps) and its initial weights."""
    out = tmp_path_factory.mktemp("single") / "run"
    cfg = TrainConfig(**CFG)
    train(cfg, out, log=_quiet)
    torch.manual_seed(0)
    initial = RunState(TrainConfig(**CFG).validate(), TrainingData(TrainConfig(**CFG)), "cpu").model.state_dict()
    return out, initial


# ------------------------------------------------------------------------------------------------ one process

def test_helpers_are_no_ops_in_one_process():
    assert not distributed.active() and distributed.world_size() == 1 and distributed.rank() == 0
    assert distributed.is_main() and distributed.row_range(8) == (0, 8) and distributed.block_range(5) == (0, 5)
    t = torch.arange(3.0)
    assert distributed.all_reduce_sum(t) is t and distributed.all_gather_rows(t) is t
    assert distributed.broadcast_json({"a": 1}) == {"a": 1}
    distributed.barrier()


def test_block_and_row_ranges_cover_everything_once(monkeypatch):
    for n in (1, 2, 3, 4):
        monkeypatch.setattr(distributed, "world_size", lambda n=n: n)
        blocks, rows = [], []
        for r in range(n):
            monkeypatch.setattr(distributed, "rank", lambda r=r: r)
            blocks.append(distributed.block_range(7))
            rows.append(distributed.row_range(4 * n))
        assert [i for lo, hi in blocks for i in range(lo, hi)] == list(range(7))
        assert [i for lo, hi in rows for i in range(lo, hi)] == list(range(4 * n))


def test_settings_that_cannot_be_split_are_refused(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    with pytest.raises(InputError, match=r"--batch-size 9 cannot be split across 2 processes.*\(e\.g\. 8 or 10\)"):
        check_world(TrainConfig(**{**CFG, "batch_size": 9}).validate())
    with pytest.raises(InputError, match="first-example"):
        check_world(TrainConfig(**{**CFG, "clamp_mode": "first-example"}).validate())
    check_world(TrainConfig(**CFG).validate())  # a multiple of 2 is fine


@pytest.mark.parametrize("source,k", [("ired", 3), ("anm", 2), ("hnm", 2), ("gaussian", 2)])
def test_rows_of_a_whole_batch_draw_equal_the_whole_batch(source, k):
    """What the distributed trainer relies on: drawing a source's noise for the whole batch and generating on some
    rows gives those rows exactly what generating on the whole batch gives them."""
    torch.manual_seed(0)
    model = EnergyMLP(16, 16, 32, 16)
    sched = cosine_schedule()
    g = torch.Generator().manual_seed(3)
    b, d = 6, 16
    x, y, eps = torch.randn(b, d, generator=g), torch.randn(b, d, generator=g), torch.randn(b, d, generator=g)
    t = torch.randint(0, 10, (b,), generator=g)
    s = NegativeSettings(hnm_candidates=3)
    whole = generate(source, model, x, y, t, eps, sched, k, s, torch.Generator().manual_seed(5))
    noise = draw_noise(source, b, k, d, s, torch.Generator().manual_seed(5))
    rows = torch.tensor([1, 2, 4])
    part = generate(source, model, x[rows], y[rows], t[rows], eps[rows], sched, k, s, None,
                    noise={key: v[rows] for key, v in noise.items()})
    # equal up to float rounding: a subset of rows runs the network at other matrix shapes
    torch.testing.assert_close(part.y_neg, whole.y_neg[rows], atol=2e-5, rtol=0)
    assert torch.equal(part.valid, whole.valid[rows])


# ------------------------------------------------------------------------------------------------ torchrun

def test_two_processes_train_like_one_and_resume(single, tmp_path):
    ref, initial = single
    run = tmp_path / "two"
    done = torchrun("train", *FLAGS, "-o", str(run))
    assert "2 processes x 4 examples (global batch 8)" in done.stderr
    assert done.stdout.count("trained 6 steps") == 1, done.stdout  # process 0 reports for the job
    assert_same_tensors(ref / "ckpt.safetensors", run / "ckpt.safetensors")
    assert_same_metrics(ref / "metrics.h5", run / "metrics.h5")
    model = load_checkpoint(run / "ckpt.safetensors").group("model")
    moved = max((model[k] - initial[k]).abs().max().item() for k in initial)
    assert moved > 1e-3, "training did not change the weights: the comparison would be trivial"
    assert safetensors_metadata(run / "ckpt.safetensors")["ebmtool.world_size"] == "2"
    with h5py.File(run / "metrics.h5", "r") as f:
        assert int(f.attrs["world_size"]) == 2
    # 3 steps under torchrun, then --resume to 6 under torchrun: the uninterrupted result
    res = tmp_path / "resumed"
    torchrun("train", *[("3" if a == "6" and FLAGS[i - 1] == "--steps" else a) for i, a in enumerate(FLAGS)],
             "-o", str(res))
    assert load_checkpoint(res / "ckpt.safetensors").step == 3
    torchrun("train", "--resume", str(res), "--steps", "6")
    assert load_checkpoint(res / "ckpt.safetensors").step == 6
    assert_same_tensors(ref / "ckpt.safetensors", res / "ckpt.safetensors")
    assert_same_tensors(run / "ckpt.safetensors", res / "ckpt.safetensors")
    assert_same_metrics(ref / "metrics.h5", res / "metrics.h5")


def test_batch_not_divisible_by_the_process_count_is_refused(tmp_path):
    args = [("9" if a == "8" else a) for a in FLAGS]
    done = torchrun("train", *args, "-o", str(tmp_path / "bad"), check=False)
    assert done.returncode != 0
    msg = ("--batch-size 9 cannot be split across 2 processes: the global batch is divided evenly among them, so "
           "give a multiple of 2 (e.g. 8 or 10)")
    lines = done.stderr.splitlines()
    assert lines.count(f"Error: {msg}") == 1, done.stderr[-3000:]  # said once, by process 0
    # and named once in torchrun's summary, from the error file process 0 wrote (the other process's is empty)
    assert sum(ln.strip() == f"traceback : ebmtool.runtime.errors.InputError: {msg}" for ln in lines) == 1, done.stderr[-3000:]
    assert "exitcode  : 2" in done.stderr  # each worker exits 2 (torchrun itself exits 1 when a worker fails)
    assert not re.search(OWN_TRACEBACK, done.stderr), "a worker showed a traceback"  # (torchrun shows its own)
    assert not (tmp_path / "bad" / "ckpt.safetensors").exists()


def test_mine_score_and_offline_training_sharded_equal_one_process(single, tmp_path):
    ref, _ = single
    ckpt = ref / "ckpt.safetensors"
    # 64 rows in batches of 12: 6 batches, the last round with one batch for two processes
    opts = MineOptions(k=2, candidates=3, refine_steps=2, batch_size=12, seed=1)
    mine(ckpt, tmp_path / "negs1.h5", opts, log=_quiet)
    torchrun("mine-negatives", str(ckpt), "--k", "2", "--candidates", "3", "--refine-steps", "2", "--batch-size",
             "12", "--seed", "1", "--device", "cpu", "-o", str(tmp_path / "negs2.h5"))
    assert not (tmp_path / "negs2.h5.partial").exists()
    _assert_same_h5(tmp_path / "negs1.h5", tmp_path / "negs2.h5")

    one = score(ckpt, tmp_path / "negs1.h5", levels="all", batch_size=10)
    torchrun("score", str(ckpt), str(tmp_path / "negs1.h5"), "--levels", "all", "--batch-size", "10", "--device",
             "cpu", "-o", str(tmp_path / "scores2.h5"))
    with h5py.File(tmp_path / "scores2.h5", "r") as f:
        for name, arr in one["datasets"].items():
            np.testing.assert_allclose(f[name][()], arr, rtol=0, atol=1e-6, err_msg=name)
        for key, v in one["attrs"].items():
            assert f.attrs[key] == v, key

    # offline negatives + a mix of online sources (anm, hnm) + SANS, K = 2: every per-source draw is sliced
    extra = ["--offline-negatives", str(tmp_path / "negs1.h5"), "--negatives-from", "ired:0.4,anm:0.3,hnm:0.3", "--sans"]
    cfg = TrainConfig(**{**CFG, "offline_negatives": str(tmp_path / "negs1.h5"), "negatives": "ired:0.4,anm:0.3,hnm:0.3",
                         "sans": True, "k": 2})
    train(cfg, tmp_path / "off1", log=_quiet)
    torchrun("train", *FLAGS, *extra, "-o", str(tmp_path / "off2"))
    assert_same_tensors(tmp_path / "off1" / "ckpt.safetensors", tmp_path / "off2" / "ckpt.safetensors")
    diag = ("offline_fraction", "dup_fraction", "weight_entropy", "weight_ess", "source/anm/fraction",
            "source/anm/p_hard", "source/hnm/margin", "source/hnm/selected_level", "source/ired/energy_neg",
            "grad_share_energy")
    assert_same_metrics(tmp_path / "off1" / "metrics.h5", tmp_path / "off2" / "metrics.h5", LOSS_COLUMNS + diag)


def test_discrete_task_two_processes_equal_one(tmp_path):
    """Connectivity: the task's own negatives are drawn for the whole batch (duplicates re-drawn) and sliced."""
    flags = ["--task", "connectivity", "--width", "8", "--train-size", "32", "--batch-size", "8", "--steps", "3",
             "--val-size", "8", "--seed", "2", "--log-every", "1", "--eval-every", "0", "--device", "cpu",
             "--negatives-from", "ired:0.5,gaussian:0.5", "--k", "2"]
    cfg = TrainConfig(task="connectivity", size=None, width=8, train_size=32, batch_size=8, steps=3, val_size=8,
                      seed=2, log_every=1, eval_every=0, device="cpu", negatives="ired:0.5,gaussian:0.5", k=2)
    train(cfg, tmp_path / "one", log=_quiet)
    torchrun("train", *flags, "-o", str(tmp_path / "two"))
    assert_same_tensors(tmp_path / "one" / "ckpt.safetensors", tmp_path / "two" / "ckpt.safetensors")
    assert_same_metrics(tmp_path / "one" / "metrics.h5", tmp_path / "two" / "metrics.h5",
                        LOSS_COLUMNS + ("dup_fraction", "source/ired/p_hard", "source/gaussian/fraction"))


def test_sigterm_to_torchrun_saves_one_resumable_checkpoint(tmp_path):
    """torchrun forwards SIGTERM to every process; they agree on the step, process 0 saves, nobody hangs."""
    out = tmp_path / "run"
    args = [("400" if a == "6" else a) for a in FLAGS] + ["--ckpt-every", "1", "-o", str(out)]
    proc = subprocess.Popen(_torchrun_cmd("train", *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_env(), cwd=ROOT)
    deadline = time.monotonic() + 120
    while _step(out / "ckpt.safetensors") < 2:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert stderr.count("SIGTERM: saved a resumable checkpoint at step") == 1, stderr[-3000:]
    step = load_checkpoint(out / "ckpt.safetensors").step
    assert 2 <= step < 400 and f"at step {step} in" in stderr


def _step(path: Path) -> int:
    try:
        return int(safetensors_metadata(path)["ebmtool.step"])
    except (InputError, FileNotFoundError):
        return -1


def _assert_same_h5(a: Path, b: Path):
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        assert set(fa) == set(fb)
        for name in fa:
            np.testing.assert_array_equal(fa[name][()], fb[name][()], err_msg=name)
        skip = {"provenance", "content_sha256"}  # provenance holds the creation time
        assert {k: str(v) for k, v in fa.attrs.items() if k not in skip} == \
            {k: str(v) for k, v in fb.attrs.items() if k not in skip}


def test_non_finite_loss_stops_every_process_at_the_same_step(tmp_path):
    """A huge learning rate makes step 1's loss non-finite: the processes agree, process 0 keeps the step-1
    checkpoint and says so once, nobody hangs."""
    out = tmp_path / "nan"
    args = [("20" if a == "6" else a) for a in FLAGS] + ["--lr", "1e30", "--ckpt-every", "1", "-o", str(out)]
    done = torchrun("train", *args, check=False)
    assert done.returncode != 0
    msg = (f"non-finite loss_denoise at step 1; training stopped and the last good checkpoint "
           f"{out / 'ckpt.safetensors'} is kept")
    lines = done.stderr.splitlines()
    assert sum(ln.startswith(f"Error: {msg}") for ln in lines) == 1, done.stderr[-3000:]  # said once
    # and named once in torchrun's summary, from process 0's error file
    assert sum(ln.strip().startswith(f"traceback : ebmtool.runtime.errors.RunError: {msg}") for ln in lines) == 1
    assert "exitcode  : 1" in done.stderr and not re.search(OWN_TRACEBACK, done.stderr)
    assert load_checkpoint(out / "ckpt.safetensors").step == 1
    with h5py.File(out / "metrics.h5", "r") as f:
        assert f["step"][()].tolist() == [1]
