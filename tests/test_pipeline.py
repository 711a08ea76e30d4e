"""examples/Makefile end to end with tiny overrides: every stage's file exists and make is then up to date."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EBMTOOL = Path(sys.executable).parent / "ebmtool"


@pytest.mark.skipif(shutil.which("make") is None or not EBMTOOL.exists(), reason="needs make and the ebmtool script")
def test_makefile_pipeline(tmp_path):
    tiny = ["SIZE=4", "STEPS=2", "K=2", "CANDIDATES=2", "REFINE=1", "EVAL_N=8", f"OUT={tmp_path}",
            f"EBMTOOL={EBMTOOL}",
            "EXTRA=--width 32 --train-size 128 --batch-size 32 --val-size 4 --eval-every 0 --log-every 1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny models: threads only contend
    r = subprocess.run(["make", "-C", str(ROOT / "examples"), *tiny], capture_output=True, text=True, timeout=300,
                       env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for name in ("base/ckpt.safetensors", "negs.h5", "scores.h5", "weights.h5", "refined/ckpt.safetensors",
                 "control/ckpt.safetensors", "compare.txt"):
        assert (tmp_path / name).exists(), name
    text = (tmp_path / "compare.txt").read_text()
    assert "control (baseline)" in text and "refined" in text  # refined is compared with its control
    assert "WARNING" not in text, text  # the pipeline declares what it varies, compute included
    from ebmtool.io.checkpoints import load_checkpoint

    control, refined = (load_checkpoint(tmp_path / n / "ckpt.safetensors") for n in ("control", "refined"))
    assert control.config["init_steps"] == refined.config["init_steps"] == 2 and control.step == refined.step
    assert control.config["k"] == refined.config["k"] == 2
    q = subprocess.run(["make", "-q", "-C", str(ROOT / "examples"), *tiny], capture_output=True, text=True)
    assert q.returncode == 0  # every target is a file: nothing left to do


@pytest.mark.skipif(shutil.which("make") is None or not EBMTOOL.exists(), reason="needs make and the ebmtool script")
def test_a_ctrl_c_base_run_is_resumed_not_used(tmp_path):
    """Ctrl-C during the base run, then make again: the base finishes its steps before anything is mined from it
    (a target means a finished stage, not a checkpoint that exists)."""
    import signal
    import time

    import json

    import h5py

    from ebmtool.io.artifacts import safetensors_metadata, sha256_file
    from ebmtool.io.checkpoints import load_checkpoint

    steps = 60  # with a checkpoint (and its fsync) every step: seconds, long enough to be interrupted
    tiny = ["SIZE=4", f"STEPS={steps}", "REFINE_STEPS=2", "K=2", "CANDIDATES=2", "REFINE=1", "EVAL_N=8",
            f"OUT={tmp_path}", f"EBMTOOL={EBMTOOL}",
            "EXTRA=--width 32 --train-size 128 --batch-size 32 --val-size 4 --eval-every 0 --ckpt-every 1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = ["make", "-C", str(ROOT / "examples"), *tiny]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    ckpt = tmp_path / "base" / "ckpt.safetensors"
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None and time.monotonic() < deadline, "the base run ended before it was interrupted"
        # checkpoints are written atomically (renamed into place): one that exists is complete
        if ckpt.exists() and int(safetensors_metadata(ckpt)["ebmtool.step"]) >= 2:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal: the whole foreground process group
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, out
    stopped = load_checkpoint(ckpt).step
    assert stopped < steps and not (tmp_path / "negs.h5").exists()
    r = subprocess.run([*cmd, str(tmp_path / "negs.h5")], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert load_checkpoint(ckpt).step == steps  # continued to the end, then mined from
    with h5py.File(tmp_path / "negs.h5", "r") as f:
        mined_from = json.loads(f.attrs["provenance"])["inputs"]["checkpoint"]["sha256"]
    assert mined_from == sha256_file(ckpt)
