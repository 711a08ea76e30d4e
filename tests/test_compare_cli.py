"""`ebmtool compare` and `ebmtool train --seeds` through click's CliRunner, on tiny checkpoints."""

import json

import pytest
import torch

from ebmtool.io.checkpoints import load_checkpoint, save_checkpoint
from ebmtool.io.artifacts import sha256_file
from ebmtool.cli import cli
from ebmtool.tasks.data import TrainingData
from ebmtool.training.loop import prepare, train
from ebmtool.training.state import RunState

from helpers import SMALL, tiny

RUN = dict(**SMALL, log_every=1)  # tiny() at small batches, a metrics row every step
FAST = ["-n", "32", "--bootstrap", "200", "--permutations", "200", "--batch-size", "32"]


def trained(out, seed, **over):
    train(tiny(**{**RUN, "steps": 2, "seed": seed, **over}), out, log=lambda m: None)
    return out / "ckpt.safetensors"


def untrained(out, seed, **over):
    """A checkpoint at step 0 built through the library (no training: fast)."""
    cfg, _ = prepare(tiny(**{**RUN, "steps": 1, "seed": seed, **over}))
    st = RunState(cfg, TrainingData(cfg), torch.device("cpu"))
    out.mkdir(parents=True)
    st.save(out / "ckpt.safetensors")
    return out / "ckpt.safetensors"


def with_compute(path, flops):
    """Rewrite a checkpoint with training FLOPs in its metadata, as the training code records them (None: without
    them, as checkpoints written before compute was counted)."""
    ck = load_checkpoint(path)
    meta = {k: v for k, v in ck.meta.items() if k != "ebmtool.compute_flops"}
    save_checkpoint(path, ck.tensors, meta if flops is None else {**meta, "ebmtool.compute_flops": json.dumps(flops)})
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("cmp")
    return {
        "base0": trained(root / "base" / "seed-0", 0),
        "base1": untrained(root / "base" / "seed-1", 1),
        "var0": trained(root / "var" / "seed-0", 0, supervise_energy=False),
        "var1": untrained(root / "var" / "seed-1", 1, supervise_energy=False, steps=1),
        "other_size": untrained(root / "size3", 0, size=3),
        "other_task": untrained(root / "addition", 0, task="addition"),
        "root": root,
    }


def invoke(runner, args):
    return runner.invoke(cli, ["compare", *FAST, *args], catch_exceptions=False)


def test_identical_models_no_difference_and_outputs(runner, ckpts, tmp_path):
    a = ckpts["base0"]
    sha = sha256_file(a)
    res = invoke(runner, [str(a), str(a), "--json-file", str(tmp_path / "r.json"),
                          "--markdown-file", str(tmp_path / "r.md"),
                          "--plot", str(tmp_path / "figs")])
    assert res.exit_code == 0, res.output
    assert "NO DIFFERENCE SHOWN" in res.stdout  # one seed per arm: a statement about checkpoints
    assert "compare a model with itself" in res.stdout
    rep = json.loads((tmp_path / "r.json").read_text())
    c = rep["comparisons"][0]
    assert c["problems"]["mean_diff"] == 0 and c["primary"]["ci_low"] <= 0 <= c["primary"]["ci_high"]
    assert rep["metric"] == "mse" and rep["direction"] == "lower" and rep["seed"] == 20240614
    assert rep["runs"][0]["sha256"] == sha and rep["runs"][0]["step"] == 2
    assert "## Configuration differences" in (tmp_path / "r.md").read_text()
    figs = sorted(p.name for p in (tmp_path / "figs").glob("*.png"))
    assert figs == ["energy-histograms.png", "error-distributions.png", "scatter-base_seed-0_2.png",
                    "training-curves-compute.png", "training-curves.png"]
    assert all((tmp_path / "figs" / f).stat().st_size > 10_000 for f in figs)
    assert sha256_file(a) == sha  # compare never changes a checkpoint
    # outputs are not overwritten without --overwrite
    res = invoke(runner, [str(a), str(a), "--json-file", str(tmp_path / "r.json")])
    assert res.exit_code == 2 and "--overwrite" in res.output


def test_groups_config_diff_and_seed_test(runner, ckpts, tmp_path):
    root = ckpts["root"]
    res = invoke(runner, ["--group", f"base={root}/base/seed-*", "--group", f"var={root}/var/seed-0,{root}/var/seed-1",
                          "--json-file", str(tmp_path / "g.json")])
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert "supervise_energy" in out and "trained_steps" in out  # the differing keys are named
    assert "seed (replicates)" in out
    # seed-0 trained 2 steps, seed-1 none: steps is a difference, trained_steps follows from it
    assert "the replicates of 'var' differ in more than the seed: steps\n" in out
    assert "trained_steps (derived)" in out
    assert "varies: 1, 2" in out and "var - base" in out
    rep = json.loads((tmp_path / "g.json").read_text())
    assert rep["comparisons"][0]["seeds"]["test"].startswith("paired t-test")
    assert [g["n_seeds"] for g in rep["groups"]] == [2, 2]


def test_reused_replicate_exits_nonzero_unless_allowed(runner, ckpts):
    a = ckpts["base0"]
    args = ["--group", f"base={a},{a}", "--group", f"var={ckpts['var0']},{ckpts['var1']}"]
    res = invoke(runner, args)
    assert res.exit_code == 1
    assert "WARNING: base/seed-0 and base/seed-0#2 are the same checkpoint" in res.stdout
    assert "identical results" in res.output
    assert invoke(runner, [*args, "--allow-identical"]).exit_code == 0


@pytest.mark.parametrize("other", ["other_size", "other_task"])
def test_task_mismatch_exits_2(runner, ckpts, other):
    res = invoke(runner, [str(ckpts["base0"]), str(ckpts[other])])
    assert res.exit_code == 2
    assert "compare only checkpoints of one task" in res.output


def test_bad_inputs_exit_2(runner, ckpts, tmp_path):
    assert invoke(runner, []).exit_code == 2
    assert invoke(runner, ["--group", "nopaths"]).exit_code == 2
    res = invoke(runner, ["--group", f"a={tmp_path}/nothing-*", str(ckpts["base0"])])
    assert res.exit_code == 2 and "matches no file" in res.output
    res = invoke(runner, [str(ckpts["base0"]), str(ckpts["var0"]), "--baseline", "nope"])
    assert res.exit_code == 2 and "--baseline" in res.output
    res = invoke(runner, [str(ckpts["base0"]), str(ckpts["var0"]), "--vary", "nope"])
    assert res.exit_code == 2 and "no such configuration key" in res.output


def test_train_seeds_writes_one_run_per_seed(runner, tmp_path):
    args = ["train", "--size", "4", "--width", "32", "--steps", "2", "--train-size", "16", "--batch-size", "16",
            "--val-size", "0", "--device", "cpu", "--seeds", "3,4", "-o", str(tmp_path / "r")]
    res = runner.invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    from ebmtool.io.checkpoints import load_checkpoint

    assert [load_checkpoint(tmp_path / "r" / f"seed-{s}" / "ckpt.safetensors").seed for s in (3, 4)] == [3, 4]
    assert runner.invoke(cli, [*args[:-2], "--seed", "1", "-o", str(tmp_path / "q")]).exit_code == 2
    assert runner.invoke(cli, ["train", "--seeds", "1,x", "-o", str(tmp_path / "q")]).exit_code == 2
    assert runner.invoke(cli, ["train", "--seeds", "1,2"]).exit_code == 2  # needs -o


def test_help(runner):
    res = runner.invoke(cli, ["compare", "--help"])
    assert res.exit_code == 0 and "--group" in res.output and "NAME=PATHS" in res.output
    words = " ".join(res.output.split())
    assert "--vary compute declares an intended difference in training compute" in words
    assert 'With one seed in an arm the verdict compares checkpoints ("checkpoints differ" or "no difference shown")' \
        in words


def test_compute_columns_warning_and_vary_compute(runner, tmp_path):
    """Arms at 3.1e13 and 1.09e14 FLOPs, and an arm of older checkpoints without compute."""
    for s in (0, 1):
        with_compute(untrained(tmp_path / "base" / f"seed-{s}", s), 3.1e13)
        with_compute(untrained(tmp_path / "anm4" / f"seed-{s}", s, negatives="anm", steps=2), 1.09e14)
        with_compute(untrained(tmp_path / "old" / f"seed-{s}", s, negatives="anm"), None)  # an older checkpoint
    args = [f"--group=base={tmp_path}/base/seed-*", f"--group=anm4={tmp_path}/anm4/seed-*",
            f"--group=old={tmp_path}/old/seed-*", "--vary", "negatives", "--vary", "steps"]
    res = invoke(runner, [*args, "--json-file", str(tmp_path / "c.json"), "--markdown-file", str(tmp_path / "c.md")])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    top = next(i for i, ln in enumerate(lines) if ln.startswith("arm "))
    assert lines[top].split()[:5] == ["arm", "seeds", "compute", "x", "base"]
    arm_rows = [ln.replace("base (baseline)", "base(baseline)").split()[:4] for ln in lines[top + 2:top + 5]]
    assert arm_rows == [["base(baseline)", "2", "3.10e13", "1.00"], ["anm4", "2", "1.09e14", "3.52"],
                        ["old", "2", "n/a", "n/a"]]
    assert ("WARNING: arm anm4 used 3.52x the baseline's compute (matched-compute comparisons need a ratio within "
            "10 %; declare an intended difference with --vary compute)") in lines
    assert ("note: compute is unknown for old/seed-0, old/seed-1: no ebmtool.compute_flops in the checkpoint "
            "(written before ebmtool recorded training FLOPs), so matched compute cannot be checked") in lines
    assert not any(ln.startswith("WARNING") and "anm_" in ln for ln in lines)  # anm's defaults are no confound
    rep = json.loads((tmp_path / "c.json").read_text())
    by = {g["name"]: g for g in rep["groups"]}
    assert by["base"]["compute_flops"] == [3.1e13, 3.1e13] and by["base"]["compute_ratio"] == 1.0
    assert by["anm4"]["compute_flops_mean"] == 1.09e14 and by["anm4"]["compute_ratio"] == pytest.approx(3.516129)
    assert by["old"]["compute_flops"] == [None, None] and by["old"]["compute_ratio"] is None
    assert [r["compute_flops"] for r in rep["runs"]][:2] == [3.1e13, 3.1e13]
    md = (tmp_path / "c.md").read_text()
    assert "| anm4 | 2 | 1.09e14 | 3.52 |" in md and "| old | 2 | n/a | n/a |" in md
    res = invoke(runner, [*args, "--vary", "compute"])
    assert res.exit_code == 0, res.output
    assert not any(ln.startswith("WARNING") for ln in res.stdout.splitlines())


def test_harder_split_and_user_data(runner, ckpts, tmp_path):
    a, b = str(ckpts["base0"]), str(ckpts["var0"])
    res = invoke(runner, [a, b, "--harder", "--json-file", str(tmp_path / "h.json")])
    assert res.exit_code == 0, res.output
    assert "test harder" in res.stdout
    assert json.loads((tmp_path / "h.json").read_text())["problems"]["harder"] is True
    assert runner.invoke(cli, ["data", "inverse", "--size", "4", "-n", "20", "--split", "test", "-o",
                               str(tmp_path / "d.h5")]).exit_code == 0
    res = invoke(runner, [a, b, "--data", str(tmp_path / "d.h5")])
    assert res.exit_code == 0, res.output
    assert "d.h5" in res.stdout and "20 problems" in res.stdout
    assert runner.invoke(cli, ["data", "inverse", "--size", "3", "-n", "20", "--split", "test", "-o",
                               str(tmp_path / "d3.h5")]).exit_code == 0
    res = invoke(runner, [a, b, "--data", str(tmp_path / "d3.h5")])
    assert res.exit_code == 2 and "but the checkpoint was trained on inverse 4x4" in res.output
