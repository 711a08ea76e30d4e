"""studies/Makefile end to end on a tiny study: it completes, a re-run retrains nothing, an interrupted study
finishes with the same numbers, and trainings can run under a launcher prefix (a fake srun here)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import TINY_PROBLEM, flags

ROOT = Path(__file__).resolve().parents[1]
EBMTOOL = Path(sys.executable).parent / "ebmtool"
# the tiny study's make variables: 2 arms x 2 seeds of the tiny problem
STUDY = ["TASKS=inverse", "ARMS=ired anm1", "SEEDS=0 1", "STEPS=30", "EVAL_N=16", "FIGURES=no", f"EBMTOOL={EBMTOOL}",
         "RECIPE=" + " ".join(flags(**TINY_PROBLEM, eval_every=0, device="cpu"))]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
RUNS = [f"inverse/{a}/s{s}" for a in ("ired", "anm1") for s in (0, 1)]

pytestmark = pytest.mark.skipif(not EBMTOOL.exists(), reason="needs the ebmtool script (make install)")


def _make(out, *extra, **kw):
    return subprocess.run(["make", "-f", str(ROOT / "studies" / "Makefile"), "study", *STUDY, f"OUT={out}", *extra],
                          capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=600, **kw)


def _means(out) -> dict:
    """Every run's metric values per split and weight set, from the compare JSONs."""
    got = {}
    for p in sorted((out / "inverse").glob("compare-*.json")):
        rep = json.loads(p.read_text())
        got[p.name] = {g["name"]: g["per_seed"] for g in rep["groups"]}
    return got


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    d = tmp_path_factory.mktemp("study")
    srun = d / "fake-srun"
    srun.write_text(f'#!/bin/sh\necho "$@" >> {d}/srun.log\nexec "$@"\n')
    srun.chmod(0o755)
    r = _make(d / "out", f"TRAIN_PREFIX={srun}")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return d


def test_the_study_completes_with_a_report(study):
    out = study / "out"
    assert all((out / run / "done").exists() for run in RUNS)
    report = (out / "REPORT.md").read_text()
    assert "anm1" in report and "ired (baseline)" in report
    assert len(list((out / "inverse").glob("compare-*.json"))) == 4  # test/harder x model/ema
    arms = (out / "arms.txt").read_text().splitlines()
    assert arms == ["ired: --steps 30", "anm1: --anm --budget-of ired"]  # the value, not the variable name


def test_every_training_ran_under_the_launcher_prefix(study):
    calls = (study / "srun.log").read_text().splitlines()
    assert len(calls) == 4 and all(" train --autoresume " in c for c in calls)


def test_anm_runs_match_the_baseline_compute_of_their_seed(study):
    from ebmtool.io.checkpoints import load_checkpoint
    from ebmtool.training.state import checkpoint_compute

    for s in (0, 1):
        base, anm = (load_checkpoint(study / "out" / f"inverse/{a}/s{s}/ckpt.safetensors") for a in ("ired", "anm1"))
        assert anm.config["budget_flops"] == checkpoint_compute(base)
        assert 1.0 <= checkpoint_compute(anm) / checkpoint_compute(base) < 1.1


def test_a_rerun_retrains_nothing(study):
    stamps = {run: (study / "out" / run / "done").stat().st_mtime_ns for run in RUNS}
    r = _make(study / "out")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "train inverse" not in r.stdout and "compare inverse" not in r.stdout
    assert stamps == {run: (study / "out" / run / "done").stat().st_mtime_ns for run in RUNS}


def test_an_interrupted_study_finishes_with_the_same_numbers(study, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(["make", "-f", str(ROOT / "studies" / "Makefile"), "study", *STUDY, f"OUT={out}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    while not (out / "inverse/ired/s0/done").exists():  # the first run finished: interrupt the next ones
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: make and its trainings (which save a resumable checkpoint)
    proc.communicate(timeout=120)
    assert proc.returncode != 0 and not (out / "REPORT.md").exists()
    r = _make(out)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "train inverse ired seed 0" not in r.stdout  # finished before the interrupt: not retrained
    assert _means(out) == _means(study / "out")


def test_a_study_whose_compare_would_have_one_checkpoint_is_refused_before_training(tmp_path):
    r = _make(tmp_path / "out", "ARMS=ired", "SEEDS=0")
    assert r.returncode != 0 and "compare needs at least two" in r.stderr
    assert not (tmp_path / "out").exists()  # nothing was trained
