"""The live log (metrics.jsonl) and TensorBoard: rows appear as they are logged, a torn line after a hard kill
is skipped and counted, and the event files hold exactly metrics.h5's rows."""

import json
import os
import sys
import threading

import h5py
import numpy as np
from click.testing import CliRunner

from ebmtool.cli import cli
from ebmtool.training import loop as train_loop
from ebmtool.training import train
from ebmtool.training.metrics import read_live_log

from helpers import TINY_FLAGS, tiny


def quiet(msg):
    pass


def _h5_rows(path):
    with h5py.File(path, "r") as f:
        cols = [c for c in f if isinstance(f[c], h5py.Dataset)]
        return {c: f[c][()] for c in cols}, {c: f["eval"][c][()] for c in f["eval"]}


def test_tensorboard_scalars_equal_the_metrics_rows(tmp_path, runner):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "r"
    r = runner.invoke(cli, ["train", *TINY_FLAGS, "--steps", "60", "--log-every", "10", "--eval-every", "30",
                            "--seed", "0", "--tensorboard", "-o", str(out)])
    assert r.exit_code == 0, r.output
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    rows, evals = _h5_rows(out / "metrics.h5")
    assert len(rows["step"]) == 6
    checked = 0
    for col, values in rows.items():
        if col == "step" or not np.isfinite(values).any():
            continue
        events = acc.Scalars(col)
        assert [e.step for e in events] == [int(s) for s, v in zip(rows["step"], values) if np.isfinite(v)], col
        finite = values[np.isfinite(values)]
        assert np.allclose([e.value for e in events], finite, rtol=1e-6, atol=0), col  # stored as float32
        checked += 1
    assert checked >= 15  # losses, energies, margins, p_hard, per-source columns, compute, grad share ...
    assert {"loss_denoise", "p_hard", "compute_flops", "source/ired/p_hard", "grad_share_energy"} <= \
        set(acc.Tags()["scalars"])
    ev = acc.Scalars("eval/metric_model")
    assert [e.step for e in ev] == evals["step"].tolist()
    assert np.allclose([e.value for e in ev], evals["metric_model"], rtol=1e-6)


def test_the_live_log_holds_each_row_while_the_run_is_still_going(tmp_path, monkeypatch):
    """Hold the run before its step 61: metrics.jsonl already has the 6 rows of steps 10..60, while metrics.h5
    (written at checkpoints, none here before the end) does not exist yet."""
    reached, release = threading.Event(), threading.Event()
    real = train_loop.train_step

    def held(st, batch, signum=None):
        if st.step == 60:
            reached.set()
            release.wait(60)
        return real(st, batch, signum)

    monkeypatch.setattr(train_loop, "train_step", held)
    out = tmp_path / "r"
    worker = threading.Thread(target=train, args=(tiny(seed=0, steps=70, log_every=10), out), kwargs={"log": quiet})
    worker.start()
    try:
        assert reached.wait(120)
        rows, evals, torn = read_live_log(out / "metrics.jsonl")
        assert [r["step"] for r in rows] == [10, 20, 30, 40, 50, 60] and torn == 0
        assert not (out / "metrics.h5").exists()
        r = CliRunner().invoke(cli, ["info", str(out)])  # what a user sees of the running job
        assert r.exit_code == 0, r.output
        assert f"status    training now (process {os.getpid()})" in r.output
        assert "progress  step 60 of 70 (86%); 6 rows in metrics.jsonl" in r.output
        assert "latest    loss_total " in r.output and "saved" not in r.output
    finally:
        release.set()
        worker.join(120)
    rows, _, _ = read_live_log(out / "metrics.jsonl")
    h5, _ = _h5_rows(out / "metrics.h5")
    assert [r["step"] for r in rows] == h5["step"].tolist() == [10, 20, 30, 40, 50, 60, 70]
    assert np.allclose([r["loss_total"] for r in rows], h5["loss_total"], rtol=0, atol=0)
    r = CliRunner().invoke(cli, ["info", str(out)])
    assert "status    not training" in r.output and "progress  step 70 of 70 (100%)" in r.output
    assert "saved     step 70 in ckpt.safetensors" in r.output


def test_a_torn_last_line_is_skipped_and_counted(tmp_path):
    train(tiny(seed=0, steps=6, log_every=2), tmp_path / "r", log=quiet)
    path = tmp_path / "r" / "metrics.jsonl"
    with open(path, "a") as f:
        f.write('{"kind": "train", "step": 8, "loss_to')  # a write cut short by SIGKILL
    rows, evals, torn = read_live_log(path)
    assert [r["step"] for r in rows] == [2, 4, 6] and torn == 1 and [e["step"] for e in evals] == [6]


def test_a_resume_rewrites_the_live_log_to_the_checkpoint_rows(tmp_path):
    """Rows a killed run logged after its last checkpoint are dropped on resume, as metrics.h5's are."""
    out = tmp_path / "r"
    train(tiny(seed=0, steps=4, log_every=2), out, log=quiet)
    with open(out / "metrics.jsonl", "a") as f:  # as if the run had gone on past its checkpoint, then died
        f.write(json.dumps({"kind": "train", "step": 6, "loss_total": 9.0}) + "\n")
    train(None, out, resume=out / "ckpt.safetensors", overrides={"steps": 8}, log=quiet)
    rows, _, _ = read_live_log(out / "metrics.jsonl")
    h5, _ = _h5_rows(out / "metrics.h5")
    assert [r["step"] for r in rows] == h5["step"].tolist() == [2, 4, 6, 8]
    assert 9.0 not in [r["loss_total"] for r in rows]


def test_tensorboard_missing_is_one_sentence(tmp_path, runner, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    r = runner.invoke(cli, ["train", *TINY_FLAGS, "--steps", "2", "--tensorboard", "-o", str(tmp_path / "r")])
    assert r.exit_code == 2
    assert "(--tracker tensorboard, --tensorboard) needs the tensorboard package: pip install " \
        "'ebmtool[tensorboard]'" in r.output
