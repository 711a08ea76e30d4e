"""The compute rule's version (ebmtool.method.compute.RULE_VERSION): recorded in every artifact that carries a count
(checkpoint, metrics.h5, negatives and scores files), read as rule 1 where an older artifact records none, combined
("1+2") where a run adds counts of two rules, and the refusals: `compare` and `--budget-of` will not match or
compare counts made under different rules (exit 2, one sentence naming both)."""

import json

import h5py
import pytest

from ebmtool.analysis.arms import load_groups
from ebmtool.io.checkpoints import load_checkpoint, save_checkpoint
from ebmtool.cli import cli
from ebmtool.method.compute import RULE, combined_rule, counted_flops, flop_rule
from ebmtool.analysis.info import describe, format_description
from ebmtool.method.models import build_model
from ebmtool.training.loop import train
from ebmtool.training.state import checkpoint_compute_rule

from helpers import SMALL, TINY_FLAGS, tiny

QUIET = dict(log=lambda m: None)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("rule")
    for name, seed in (("a", 0), ("b", 1)):
        train(tiny(**{**SMALL, "steps": 2, "seed": seed, "log_every": 1}), root / name, **QUIET)
    old = root / "old"
    old.mkdir()
    as_rule(root / "a" / "ckpt.safetensors", old / "ckpt.safetensors", None)
    return root


def as_rule(src, dst, label):
    """A copy of a checkpoint whose compute is recorded as counted under `label` (None: no record, as checkpoints
    written before rule versions were recorded)."""
    ck = load_checkpoint(src)
    meta = {k: v for k, v in ck.meta.items() if k != "ebmtool.compute_rule"}
    save_checkpoint(dst, ck.tensors, meta if label is None else {**meta, "ebmtool.compute_rule": label})
    return dst


def test_rule_2_is_this_code_and_labels_combine():
    assert RULE == "2"
    assert combined_rule("1", "2") == combined_rule("2", "1+2") == "1+2"
    assert combined_rule("2", "2") == "2"


def test_a_run_records_its_rule_and_an_old_checkpoint_reads_as_rule_1(runs):
    ck = load_checkpoint(runs / "a" / "ckpt.safetensors")
    assert ck.meta["ebmtool.compute_rule"] == "2" and checkpoint_compute_rule(ck) == "2"
    with h5py.File(runs / "a" / "metrics.h5", "r") as f:
        assert f.attrs["compute_rule"] == "2"
    old = load_checkpoint(runs / "old" / "ckpt.safetensors")
    assert "ebmtool.compute_rule" not in old.meta and checkpoint_compute_rule(old) == "1"
    groups = load_groups([("old", [runs / "old" / "ckpt.safetensors"]), ("a", [runs / "a" / "ckpt.safetensors"])])
    assert [g.runs[0].compute_rule for g in groups] == ["1", "2"]
    assert "counted under compute rule 1" in format_description(describe(runs / "old" / "ckpt.safetensors"))


def test_compare_refuses_runs_counted_under_different_rules(runner, runs):
    res = runner.invoke(cli, ["compare", "-n", "8", str(runs / "a"), str(runs / "old")])
    assert res.exit_code == 2, res.output
    msg = res.output.strip().splitlines()[-1]
    assert "compute rule 2" in msg and "rule 1" in msg and "a's compute" in msg and "old's" in msg, msg
    assert msg.count(". ") == 0  # one sentence
    out = runs / "cmp.json"
    ok = runner.invoke(cli, ["compare", "-n", "8", "--bootstrap", "100", "--permutations", "100", "--json-file",
                             str(out), str(runs / "a"), str(runs / "b")])
    assert ok.exit_code == 0, ok.output
    assert {r["compute_rule"] for r in json.loads(out.read_text())["runs"]} == {"2"}


def test_budget_of_refuses_a_run_counted_under_another_rule(runner, runs, tmp_path):
    res = runner.invoke(cli, ["train", *TINY_FLAGS, "--budget-of", str(runs / "old"), "-o", str(tmp_path / "n")])
    assert res.exit_code == 2, res.output
    msg = res.output.strip().splitlines()[-1]
    assert f"{runs / 'old' / 'ckpt.safetensors'}'s compute was counted under compute rule 1 and this run's under " \
           "rule 2" in msg, msg
    assert not (tmp_path / "n").exists()


def test_a_run_resumed_across_rules_says_so_and_matches_only_its_mixture(runner, runs, tmp_path):
    run = tmp_path / "resumed"
    run.mkdir()
    as_rule(runs / "a" / "ckpt.safetensors", run / "ckpt.safetensors", "1")
    (run / "metrics.h5").write_bytes((runs / "a" / "metrics.h5").read_bytes())
    train(None, run, resume=run / "ckpt.safetensors", overrides={"steps": 3}, **QUIET)
    ck = load_checkpoint(run / "ckpt.safetensors")
    assert ck.step == 3 and checkpoint_compute_rule(ck) == "1+2"
    res = runner.invoke(cli, ["train", *TINY_FLAGS, "--budget-of", str(run), "-o", str(tmp_path / "n")])
    assert res.exit_code == 2 and "compute rule 1+2 and this run's under rule 2" in res.output, res.output
    # a run started from it (--init) inherits its compute, and so its mixture
    train(tiny(**{**SMALL, "steps": 1, "seed": 0, "init": str(run / "ckpt.safetensors")}), tmp_path / "i", **QUIET)
    assert checkpoint_compute_rule(load_checkpoint(tmp_path / "i" / "ckpt.safetensors")) == "1+2"


def test_mining_and_scoring_record_their_rule_and_scoring_its_compute(runner, runs, tmp_path):
    negs, scores = tmp_path / "negs.h5", tmp_path / "scores.h5"
    res = runner.invoke(cli, ["mine-negatives", str(runs / "a"), "--k", "2", "--candidates", "2",
                              "--refine-steps", "1", "--limit", "16", "--batch-size", "16", "-o", str(negs)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["score", str(runs / "a"), str(negs), "-o", str(scores)])
    assert res.exit_code == 0, res.output
    with h5py.File(negs, "r") as f:
        assert f.attrs["compute_rule"] == "2" and f.attrs["compute_flops"] > 0
    ck = load_checkpoint(runs / "a" / "ckpt.safetensors")
    rule = flop_rule(build_model(ck.dims))
    with h5py.File(scores, "r") as f:
        assert f.attrs["compute_rule"] == "2"
        # 16 positives and their 32 negatives forward-only, their condition projected once
        assert f.attrs["compute_flops"] == counted_flops(rule, 16 + 32, 0, proj_rows=16)
