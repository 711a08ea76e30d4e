"""Compute counted by the training loop, budgets (--budget, --budget-of), --autoresume, --resume with the run's
own flags, and the run-directory lock."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from benchmarks.common import profiled_matmul_flops
from ebmtool.io.checkpoints import load_checkpoint
from ebmtool.cli import cli
from ebmtool.analysis.confounds import compute_summary
from ebmtool.analysis.arms import load_groups
from ebmtool.method.compute import counted_flops, flop_rule, parse_flops
from ebmtool.runtime.errors import InputError
from ebmtool.method.models import build_model
from ebmtool.config import NO_STEP_CAP
from ebmtool.training.state import RunLock, checkpoint_compute
from ebmtool.training.loop import train

from helpers import TINY_FLAGS, tiny

QUIET = dict(log=lambda m: None)


def _flops(run_dir) -> float:
    return checkpoint_compute(load_checkpoint(run_dir / "ckpt.safetensors"))


def _rows(run_dir, *cols):
    with h5py.File(run_dir / "metrics.h5", "r") as f:
        return [f[c][()] for c in cols]


@pytest.mark.parametrize("kw", [dict(supervise_energy=False), dict(negatives="anm", k=2),
                                dict(negatives="hnm"), dict(negatives="gaussian", k=2)])
def test_recorded_compute_equals_the_profiled_matrix_products(kw, tmp_path):
    """The loop's count (rows from the counter, FLOPs by the rule) is what torch.profiler sees the step compute,
    logging steps included: measuring the energy term's gradient share back-propagates the two terms apart,
    which costs no matrix product beyond one backward of their sum."""
    cfg = tiny(seed=3, steps=3, val_size=0, batch_size=256, train_size=512, width=64, **kw)  # the rule leaves
    # out the per-level time layers, which are under 3 % of a call from batch 256 on
    profiled = profiled_matmul_flops(lambda: train(cfg, tmp_path / "r", **QUIET))
    assert _flops(tmp_path / "r") == pytest.approx(profiled, rel=0.03)


def test_the_rule_of_other_networks_comes_from_one_probed_row():
    model = build_model({"arch": "graph_nlm", "hidden": 8, "depth": 2, "time_dim": 8, "x_channels": 1})
    rule = flop_rule(model, 16, 16)  # a 4-node graph
    x, y, t = torch.zeros(32, 16), torch.zeros(32, 16), torch.zeros(32, dtype=torch.long)
    before = model.counter.rows
    with torch.no_grad():
        profiled = profiled_matmul_flops(lambda: model(x, y, t))
    assert model.counter.rows - before == 32  # the probe itself is not counted as the run's work
    assert counted_flops(rule, 32, 0) == pytest.approx(profiled, rel=0.03)
    with pytest.raises(ValueError, match="needs the problem's x_dim"):
        flop_rule(model)


def test_compute_is_deterministic_and_cumulative_in_metrics(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        train(tiny(seed=1, steps=6, log_every=1), out, **QUIET)
    assert _flops(a) == _flops(b) > 0
    (col,) = _rows(a, "compute_flops")
    assert np.all(np.diff(col) > 0) and col[-1] == _flops(a)
    assert np.allclose(np.diff(col), col[0])  # ired K = 1: every step costs the same


def test_budget_stops_at_the_first_step_at_or_past_it(tmp_path):
    base, anm = tmp_path / "base", tmp_path / "anm"
    train(tiny(seed=2, steps=20), base, **QUIET)
    budget = _flops(base)
    train(tiny(seed=2, steps=NO_STEP_CAP, negatives="anm", k=4, budget_flops=budget, log_every=1), anm, **QUIET)
    (col, steps) = _rows(anm, "compute_flops", "step")
    assert col[-1] >= budget > col[-2]
    assert steps[-1] < 20  # a dearer step: fewer of them
    assert load_checkpoint(anm / "ckpt.safetensors").step == steps[-1]


def test_steps_bound_a_budgeted_run(tmp_path):
    train(tiny(seed=2, steps=5, budget_flops=1e15), tmp_path / "r", **QUIET)
    assert load_checkpoint(tmp_path / "r" / "ckpt.safetensors").step == 5


def test_a_curriculum_follows_the_compute_spent_in_a_budgeted_run(tmp_path):
    cfg = tiny(seed=4, steps=NO_STEP_CAP, curriculum="0:ired,0.5:anm", k=2, budget_flops=4e8, log_every=1)
    train(cfg, tmp_path / "r", **QUIET)
    stage, col = _rows(tmp_path / "r", "stage", "compute_flops")
    before = np.concatenate([[0.0], col[:-1]])  # the compute spent when each step began
    assert np.array_equal(stage, (before >= 0.5 * 4e8).astype(float))
    assert 0 < stage.sum() < len(stage)


def test_a_resumed_budgeted_run_keeps_budget_and_layout(tmp_path):
    cfg = dict(seed=5, curriculum="0:ired,0.5:anm", k=2, budget_flops=4e8, log_every=1)
    train(tiny(steps=NO_STEP_CAP, **cfg), tmp_path / "straight", **QUIET)
    train(tiny(steps=7, **cfg), tmp_path / "cut", **QUIET)  # stopped by its step bound halfway
    train(None, tmp_path / "cut", resume=tmp_path / "cut" / "ckpt.safetensors", overrides={"steps": NO_STEP_CAP},
          **QUIET)
    a, b = load_checkpoint(tmp_path / "straight" / "ckpt.safetensors"), load_checkpoint(tmp_path / "cut" /
                                                                                       "ckpt.safetensors")
    assert a.step == b.step and a.meta["ebmtool.compute_flops"] == b.meta["ebmtool.compute_flops"]
    assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors if k.startswith("model/"))


def test_parse_flops():
    assert parse_flops("3.1e13") == 3.1e13
    for bad in ("-1", "0", "inf", "lots"):
        with pytest.raises(ValueError):
            parse_flops(bad)


# ------------------------------------------------------------------------------------------------ the CLI

def _train(runner, *args):
    return runner.invoke(cli, ["train", *TINY_FLAGS, *[str(a) for a in args]])


def test_budget_of_matches_the_baseline_compute_and_compare_sees_it(runner, tmp_path):
    base, anm = tmp_path / "base", tmp_path / "anm"
    assert _train(runner, "--seed", 0, "--steps", 200, "-o", base).exit_code == 0
    r = _train(runner, "--seed", 0, "--anm", "--k", 4, "--budget-of", base, "-o", anm)
    assert r.exit_code == 0, r.output
    ck = load_checkpoint(anm / "ckpt.safetensors")
    assert ck.config["budget_of"] == str(base / "ckpt.safetensors") and ck.config["budget_flops"] == _flops(base)
    assert 20 <= ck.step < 100  # an anm K = 4 step costs several baseline steps
    groups = load_groups([("base", [base / "ckpt.safetensors"]), ("anm", [anm / "ckpt.safetensors"])])
    ratio = compute_summary(groups, "base")["groups"]["anm"]["compute_ratio"]
    assert ratio == pytest.approx(1.0, abs=0.05)


def test_budget_flags_are_checked(runner, tmp_path):
    r = _train(runner, "--budget", "lots", "-o", tmp_path / "r")
    assert r.exit_code == 2 and "not a number of FLOPs" in r.output
    r = _train(runner, "--budget", "1e9", "--budget-of", tmp_path, "-o", tmp_path / "r")
    assert r.exit_code == 2 and "exclude each other" in r.output


def test_autoresume_starts_skips_continues_and_refuses_another_config(runner, tmp_path):
    out = tmp_path / "r"
    assert _train(runner, "--seed", 1, "--steps", 4, "--autoresume", "-o", out).exit_code == 0  # empty: starts
    r = _train(runner, "--seed", 1, "--steps", 4, "--autoresume", "-o", out)
    assert r.exit_code == 0 and "already holds the finished run" in r.output
    r = _train(runner, "--seed", 1, "--steps", 4, "--k", 2, "--autoresume", "-o", out)
    assert r.exit_code == 2 and "--k is 1 there and 2 here" in r.output
    r = _train(runner, "--seed", 1, "--steps", 8, "--autoresume", "-o", out)  # more steps: continues
    assert r.exit_code == 0 and "steps 4 -> 8" in r.output
    assert _train(runner, "--seed", 1, "--steps", 8, "-o", tmp_path / "straight").exit_code == 0
    a, b = (load_checkpoint(p / "ckpt.safetensors") for p in (out, tmp_path / "straight"))
    assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors if k.startswith("model/"))


def test_autoresume_reuses_a_drawn_seed(runner, tmp_path):
    out = tmp_path / "r"
    assert _train(runner, "--steps", 2, "--autoresume", "-o", out).exit_code == 0
    r = _train(runner, "--steps", 2, "--autoresume", "-o", out)
    assert r.exit_code == 0 and "already holds the finished run" in r.output


def test_resume_accepts_the_runs_own_flags_repeated(runner, tmp_path):
    out = tmp_path / "r"
    assert _train(runner, "--seed", 1, "--steps", 2, "-o", out).exit_code == 0
    r = runner.invoke(cli, ["train", "--resume", str(out), "--batch-size", "32", "--size", "4", "--steps", "4"])
    assert r.exit_code == 0, r.output
    assert load_checkpoint(out / "ckpt.safetensors").step == 4
    r = runner.invoke(cli, ["train", "--resume", str(out), "--batch-size", "64"])
    assert r.exit_code == 2 and "--batch-size cannot change on --resume (the run has 32, given 64)" in r.output


def test_a_locked_run_directory_is_refused_naming_the_holder(runner, tmp_path):
    out = tmp_path / "r"
    with RunLock(out):
        r = _train(runner, "--seed", 1, "--steps", 2, "-o", out)
        assert r.exit_code == 2 and f"{out} is in use: process " in r.output
        assert (out / ".lock").read_text().isdigit()
    assert _train(runner, "--seed", 1, "--steps", 2, "-o", out).exit_code == 0  # released


def test_seeds_skip_finished_runs(runner, tmp_path):
    assert _train(runner, "--seeds", "0,1", "--steps", 2, "-o", tmp_path).exit_code == 0
    r = _train(runner, "--seeds", "0,1", "--steps", 2, "-o", tmp_path)
    assert r.exit_code == 0 and r.output.count("already holds the finished run") == 2


def test_init_records_inherited_steps_and_compute(tmp_path):
    train(tiny(seed=1, steps=6), tmp_path / "base", **QUIET)
    base = tmp_path / "base" / "ckpt.safetensors"
    train(tiny(seed=1, steps=3, init=str(base)), tmp_path / "more", **QUIET)
    ck = load_checkpoint(tmp_path / "more" / "ckpt.safetensors")
    assert ck.config["init_steps"] == 6
    one_step = _flops(tmp_path / "base") / 6
    assert checkpoint_compute(ck) == pytest.approx(_flops(tmp_path / "base") + 3 * one_step)


def test_info_shows_compute(runner, tmp_path):
    train(tiny(seed=1, steps=2), tmp_path / "r", **QUIET)
    r = runner.invoke(cli, ["info", str(tmp_path / "r" / "ckpt.safetensors")])
    assert f"compute   {_flops(tmp_path / 'r'):.2e} FLOPs" in r.output


@pytest.mark.parametrize("kw,msg", [
    (dict(task="sudoku", neg_steps=3), "--neg-steps has no effect on sudoku"),
    (dict(task="connectivity", clamp_mode="first-example"), "--clamp-mode has no effect on connectivity"),
    (dict(task="shortest-path", neg_noise_scale=1.0), "--neg-noise-scale has no effect on shortest-path"),
    (dict(connectivity_negative="flip"), "applies to the connectivity task only"),
    (dict(budget_flops=-1.0), "--budget must be a positive number"),
])
def test_settings_that_would_be_ignored_are_refused(kw, msg):
    with pytest.raises(InputError, match=msg):
        tiny(**kw).validate()


def test_connectivity_records_its_negative_form():
    assert tiny(task="connectivity", size=None).validate().connectivity_negative == "reference"
    assert json.loads(json.dumps(tiny(task="connectivity", size=None, connectivity_negative="flip")
                                 .validate().to_dict()))["connectivity_negative"] == "flip"
