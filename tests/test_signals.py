"""Kill `ebmtool train` with SIGINT / SIGTERM at random steps, resume, and get the uninterrupted result exactly.

The interrupted runs are real processes (`python -m ebmtool train`); the steps at which they are interrupted are
drawn from a seeded generator. A run checkpoints every step (--ckpt-every 1) so the test can see how far it got;
checkpoint cadence does not change what is computed.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch

from ebmtool.runtime.errors import InputError
from ebmtool.io.artifacts import safetensors_metadata
from ebmtool.io.checkpoints import load_checkpoint
from ebmtool.cli import cli
from ebmtool.config import TrainConfig
from ebmtool.training.loop import train

from helpers import TINY_PROBLEM, flags

STEPS = 60
# the tiny problem at the training defaults otherwise; the interrupted CLI runs and the library reference share it
SETTINGS = dict(**TINY_PROBLEM, seed=11, log_every=1)
FLAGS = flags(**SETTINGS)
COLUMNS = ("step", "loss_total", "loss_denoise", "loss_energy", "energy_pos", "energy_neg", "grad_norm",
           "skipped_steps")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    train(TrainConfig(**SETTINGS, steps=STEPS), out, log=lambda m: None)
    return out


def _current_step(ckpt) -> int:
    try:
        return int(safetensors_metadata(ckpt)["ebmtool.step"])
    except (InputError, FileNotFoundError):
        return -1


def _interrupt_at(out, step: int, signum) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "ebmtool", "train", *FLAGS, "--steps", str(STEPS), "--ckpt-every", "1",
           "-o", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while _current_step(out / "ckpt.safetensors") < step:
        assert proc.poll() is None, f"train ended before step {step}: {proc.communicate()}"
        assert time.monotonic() < deadline, "train made no progress"
        time.sleep(0.005)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


CASES = [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGUSR1, 138), (signal.SIGUSR2, 140)]


@pytest.mark.parametrize("signum,code", CASES, ids=["SIGINT", "SIGTERM", "SIGUSR1", "SIGUSR2"])
def test_interrupt_then_resume_equals_uninterrupted(signum, code, uninterrupted, tmp_path, runner):
    step = random.Random(int(signum)).randrange(2, 30)  # a random step, reproducible
    out = tmp_path / "run"
    done = _interrupt_at(out, step, signum)
    assert done.returncode == code, (done.returncode, done.stderr)
    last = done.stderr.strip().splitlines()[-1]
    name = signal.Signals(signum).name
    assert f"{name}: saved a resumable checkpoint at step" in last and "--resume" in last, done.stderr
    assert "Traceback" not in done.stderr
    stopped = load_checkpoint(out / "ckpt.safetensors").step
    assert step <= stopped < STEPS
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # no half-written file left

    r = runner.invoke(cli, ["train", "--resume", str(out)])
    assert r.exit_code == 0, (r.output, r.exception)

    a, b = load_checkpoint(out / "ckpt.safetensors"), load_checkpoint(uninterrupted / "ckpt.safetensors")
    assert a.step == b.step == STEPS
    assert a.tensors.keys() == b.tensors.keys()
    different = [k for k in a.tensors if not torch.equal(a.tensors[k], b.tensors[k])]
    assert not different, f"resumed after step {stopped}: tensors differ: {different[:5]}"
    with h5py.File(out / "metrics.h5") as fa, h5py.File(uninterrupted / "metrics.h5") as fb:
        for c in COLUMNS:
            assert np.array_equal(fa[c][()], fb[c][()], equal_nan=True), c
        assert np.array_equal(fa["eval/mse_ema"][()], fb["eval/mse_ema"][()])
