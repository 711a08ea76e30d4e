"""studies/Snakefile, through the real Snakemake engine and its local executor: the same jobs as studies/Makefile
(which defines the study), a tiny study that completes, resumes an interrupted run and, run again, does nothing.
Skipped where Snakemake is not installed (pip install 'ebmtool[snakemake]'; the test extra installs it)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ebmtool.io.checkpoints import load_checkpoint

pytest.importorskip("snakemake")
ROOT = Path(__file__).resolve().parent.parent
SNAKEFILE, MAKEFILE = ROOT / "studies" / "Snakefile", ROOT / "studies" / "Makefile"
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
EBMTOOL = Path(sys.executable).parent / "ebmtool"
# a tiny study: the Makefile's variables, given to both engines (the tests' tiny network, 8 steps, 16 problems)
TINY = {"OUT": "st", "TASKS": "inverse", "ARMS": "ired anm1", "SEEDS": "0", "STEPS": "8", "EVAL_N": "16",
        "FIGURES": "no", "EBMTOOL": str(EBMTOOL),
        "RECIPE": "--size 4 --width 32 --train-size 256 --batch-size 32 --val-size 8 --lr 1e-3 --eval-every 0 "
                  "--device cpu"}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


def snakemake(where: Path, *args) -> str:
    done = subprocess.run([str(SNAKEMAKE), "-s", str(SNAKEFILE), "-d", str(where), "--cores", "2", "--config",
                           *(f"{k}={v}" for k, v in TINY.items()), *args],
                          capture_output=True, text=True, env=ENV, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def make_plan(where: Path) -> list[str]:
    """What `make study` would run from scratch (make -n -B): its commands, one per line."""
    out = subprocess.run(["make", "-n", "-B", "-f", str(MAKEFILE), *(f"{k}={v}" for k, v in TINY.items()), "study"],
                         cwd=where, capture_output=True, text=True, check=True).stdout
    return out.splitlines()


def test_the_dry_run_plans_the_makefiles_jobs(tmp_path):
    plan = make_plan(tmp_path)
    make_outputs = {ln.split()[1] for ln in plan if ln.startswith("touch ") and ln.endswith("/done")}
    make_outputs |= set(re.findall(r"--json-file (\S+)", "\n".join(plan))) | {"st/REPORT.md"}
    dry = snakemake(tmp_path, "-n")
    planned = set(re.findall(r"^\s+output: (.+)$", dry, re.M))
    assert planned == make_outputs
    assert len([o for o in planned if o.endswith("/done")]) == 2 and len(planned) == 2 + 4 + 1


def test_a_tiny_study_completes_resumes_an_interrupted_run_and_then_does_nothing(tmp_path):
    # an interrupted run: the baseline's own command (the Makefile's recipe) stopped at step 4 of 8
    train = next(ln for ln in make_plan(tmp_path) if " train --autoresume " in ln and "-o st/inverse/ired/s0 " in ln)
    (tmp_path / "st/inverse/ired/s0").mkdir(parents=True)
    subprocess.run(train.replace("--steps 8", "--steps 4"), shell=True, cwd=tmp_path, env=ENV, check=True)
    assert load_checkpoint(tmp_path / "st/inverse/ired/s0/ckpt.safetensors").step == 4

    snakemake(tmp_path)
    base = load_checkpoint(tmp_path / "st/inverse/ired/s0/ckpt.safetensors")
    assert base.step == 8 and "steps 4 -> 8" in (tmp_path / "st/inverse/ired/s0/train.log").read_text()
    assert (tmp_path / "st/inverse/anm1/s0/done").exists() and (tmp_path / "st/REPORT.md").exists()
    assert sorted(p.name for p in (tmp_path / "st/inverse").glob("compare-*.json")) == [
        "compare-harder-ema.json", "compare-harder-model.json", "compare-test-ema.json", "compare-test-model.json"]

    stamp = (tmp_path / "st/REPORT.md").stat().st_mtime_ns
    assert "Nothing to be done" in snakemake(tmp_path)  # a re-run does nothing
    assert (tmp_path / "st/REPORT.md").stat().st_mtime_ns == stamp


@pytest.mark.skipif(shutil.which("sbatch") is not None, reason="a real Slurm cluster: the dry run would query it")
def test_the_slurm_profile_loads(tmp_path):
    pytest.importorskip("snakemake_executor_plugin_slurm")
    out = snakemake(tmp_path, "-n", "--profile", str(ROOT / "studies/profiles/slurm"))
    assert "runtime=240" in out and "mem_mb=4000" in out and "cpus_per_task=1" in out
