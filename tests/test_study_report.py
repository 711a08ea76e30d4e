"""`ebmtool report` over a tiny real study: 2 arms (ired, gaussian negatives) x 2 seeds, real compare JSONs."""

import json
import shutil

import numpy as np
import pytest

from ebmtool.io.artifacts import provenance, write_h5
from ebmtool.cli import cli
from ebmtool.analysis.study import arm_order, num, run_tail_means, seed_ci, write_report
from ebmtool.training.loop import train
from ebmtool.training.state import checkpoint_compute
from helpers import tiny


def _compute(study, arm, seed) -> float:
    from ebmtool.io.checkpoints import load_checkpoint

    return checkpoint_compute(load_checkpoint(study / "inverse" / arm / f"s{seed}" / "ckpt.safetensors"))


def _compute_ratio(study) -> float:
    """gaussian's mean compute over ired's, from the checkpoints (the report's own reading is under test)."""
    return float(np.mean([_compute(study, "gaussian", s) for s in (0, 1)]) /
                 np.mean([_compute(study, "ired", s) for s in (0, 1)]))

RUN = dict(steps=20, val_size=32)  # tiny() runs of 20 steps, validated on 32 problems
ARMS = {"ired": {}, "gaussian": {"negatives": "gaussian"}}
SEEDS = (0, 1)
COMPARE_FAST = ["-n", "64", "--bootstrap", "200", "--permutations", "200", "--batch-size", "64", "--device", "cpu"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """STUDY/inverse: every run and all four compares (the CLI's own --json-file/--markdown-file); STUDY/pending:
    one run, no compare yet; arms.txt naming the arms."""
    from click.testing import CliRunner

    root = tmp_path_factory.mktemp("study")
    task = root / "inverse"
    for arm, over in ARMS.items():
        for s in SEEDS:
            train(tiny(**RUN, seed=s, **over), task / arm / f"s{s}", log=lambda m: None)
    runner = CliRunner()
    for split in ("test", "harder"):
        for w in ("model", "ema"):
            args = ["compare", *COMPARE_FAST, "--weights", w, "--json-file", str(task / f"compare-{split}-{w}.json"),
                    "--markdown-file", str(task / f"compare-{split}-{w}.md"), "--baseline", "ired"]
            args += ["--harder"] * (split == "harder")
            for arm in ARMS:
                args += ["--group", f"{arm}=" + ",".join(str(task / arm / f"s{s}") for s in SEEDS)]
            res = runner.invoke(cli, args, catch_exceptions=False)
            assert res.exit_code == 0, res.output
    figs = task / "figures-test-model"
    figs.mkdir()
    (figs / "training-curves.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # only its name is linked; plotting is slow
    shutil.copytree(task / "ired" / "s0", root / "pending" / "ired" / "s0")
    (root / "arms.txt").write_text("gaussian: --negatives-from gaussian\nired: \n")
    return root


def compare_json(study, split, weights):
    return json.loads((study / "inverse" / f"compare-{split}-{weights}.json").read_text())


def test_rows_hold_the_compare_json_numbers(study):
    text = write_report(study).read_text()
    lines = text.splitlines()
    for split in ("test", "harder"):
        rep, ema = compare_json(study, split, "model"), compare_json(study, split, "ema")
        ema_means = {g["name"]: g["mean"] for g in ema["groups"]}
        comps = {c["variant"]: c for c in rep["comparisons"]}
        for g in rep["groups"]:
            label = g["name"] + (" (baseline)" if g["name"] == rep["baseline"] else "")
            lo, hi = seed_ci(g["per_seed"], rep["confidence"])
            ci = f"[0 (clipped; t interval {num(lo)}), {num(hi)}]" if lo < 0 else f"[{num(lo)}, {num(hi)}]"
            head = f"| {label} | 2 (0, 1) | {num(g['mean'])} | {ci} |"
            row = [ln for ln in lines if ln.startswith(head)]
            assert len(row) == 1, (head, text)
            assert row[0].endswith(f"| {num(ema_means[g['name']])} |")
            if g["name"] in comps:
                pm = comps[g["name"]]["primary"]
                assert f"| {num(pm['mean_diff'])} | [{num(pm['ci_low'])}, {num(pm['ci_high'])}] |" in row[0]
                assert row[0].count(comps[g["name"]]["verdict"]) == 1
    # the answer line: differences of both splits, each with its interval, seeds and the compute ratio
    pm = {s: compare_json(study, s, "model")["comparisons"][0]["primary"] for s in ("test", "harder")}
    (answer,) = [ln for ln in lines if ln.startswith("- gaussian: mean diff")]
    t, h = pm["test"], pm["harder"]
    assert (f"{num(t['mean_diff'])} [{num(t['ci_low'])}, {num(t['ci_high'])}] on test, "
            f"{num(h['mean_diff'])} [{num(h['ci_low'])}, {num(h['ci_high'])}] on harder") in answer
    assert "2 vs 2 seeds" in answer and f"compute ratio {num(_compute_ratio(study))}" in answer
    assert "Verdicts, intervals and p-values use the **raw (model) weights**" in text
    assert "beta 0.995 every 10 steps" in text
    assert text == write_report(study).read_text()  # deterministic


def test_trivial_predictors_sentence(study):
    text = write_report(study).read_text()
    for split in ("test", "harder"):
        rep = compare_json(study, split, "model")
        base = next(g["mean"] for g in rep["groups"] if g["name"] == "ired")
        losers = sorted(k for k, v in rep["trivial_baselines"].items() if not base < v)
        verb = "beats every trivial predictor" if not losers else f"does not beat {', '.join(losers)}"
        assert f"Baseline ired with raw (model) weights: mse {num(base)} {verb}." in text
        bold = f"**The comparison on inverse ({split}) is uninformative: the baseline does not beat every trivial " \
               "predictor.**"
        assert (bold in text) == bool(losers)


def test_diagnostics_costs_links_and_unfinished(study):
    text = write_report(study).read_text()
    assert ("| arm | runs | loss_denoise | loss_energy | p_hard | margin | norm_ratio | grad_share_energy | "
            "dup_fraction |") in text
    assert "| arm | runs | steps (mean) | compute FLOPs (mean) | compute / ired | wall s per run (mean) |" in text
    mean = np.mean([_compute(study, "gaussian", s) for s in (0, 1)])
    assert f"| gaussian | 2 | 20 | {num(mean)} | {num(_compute_ratio(study))} |" in text
    assert "- pending: not finished (no compare JSON; 1 run exists)" in text
    assert "[compare-harder-ema.md](inverse/compare-harder-ema.md)" in text
    assert "[training-curves.png](inverse/figures-test-model/training-curves.png)" in text
    assert "| gaussian | `--negatives-from gaussian` |" in text
    assert "derived from file times" in text
    # baseline first, then arms.txt order
    assert text.index("| ired (baseline) |") < text.index("| gaussian | 2 (0, 1) |")


def test_tail_means_reads_source_columns(tmp_path):
    rows = 20
    data = {"step": np.arange(rows, dtype=np.int64), "p_hard": np.linspace(0, 1, rows),
            "margin": np.full(rows, np.nan), "wall_time": np.arange(rows, dtype=np.float64),
            "source/anm/accept_fraction": np.r_[np.zeros(rows - 2), 0.5, 1.0],
            "source/anm/p_hard": np.ones(rows)}
    path = tmp_path / "metrics.h5"
    write_h5(path, "metrics", data, {}, provenance("train"))
    diag, wall = run_tail_means(path)
    assert diag["p_hard"] == pytest.approx(np.linspace(0, 1, rows)[-2:].mean())
    assert diag["source/anm/accept_fraction"] == 0.75 and np.isnan(diag["margin"])
    assert "loss_energy" not in diag and "source/anm/p_hard" not in diag and wall == rows - 1


def test_arm_order():
    assert arm_order({"b", "ired", "a", "c"}, "ired", ["c", "x", "a"]) == ["ired", "c", "a", "b"]
    assert arm_order({"b", "ired", "a"}, "ired", []) == ["ired", "a", "b"]


def test_cli(runner, study, tmp_path):
    res = runner.invoke(cli, ["report", str(study), "--overwrite"])
    assert res.exit_code == 0 and res.stdout == f"wrote {study / 'REPORT.md'}\n"
    res = runner.invoke(cli, ["report", str(study), "--verdict-weights", "ema", "--overwrite"])
    assert res.exit_code == 0 and "use the **EMA weights**" in (study / "REPORT.md").read_text()
    res = runner.invoke(cli, ["report", str(tmp_path / "nope")])
    assert res.exit_code == 2
    assert res.output.strip() == f"Error: {tmp_path / 'nope'}: no such study directory"


def test_report_never_replaces_an_existing_one_without_overwrite(runner, study):
    before = (study / "REPORT.md").read_text() if (study / "REPORT.md").exists() else None
    if before is None:
        assert runner.invoke(cli, ["report", str(study)]).exit_code == 0
        before = (study / "REPORT.md").read_text()
    (study / "REPORT.md").write_text(before + "a hand-written note\n")
    res = runner.invoke(cli, ["report", str(study)])
    assert res.exit_code == 2 and "--overwrite" in res.output
    assert (study / "REPORT.md").read_text() == before + "a hand-written note\n"
    res = runner.invoke(cli, ["report", str(study), "--overwrite"])
    assert res.exit_code == 0 and (study / "REPORT.md").read_text() == write_report(study).read_text()


def test_a_study_whose_runs_are_missing_says_so(runner, study, tmp_path):
    """As in a fresh clone: the compare results are committed, the run directories are not."""
    clone = tmp_path / "clone"
    shutil.copytree(study / "inverse", clone / "inverse", ignore=shutil.ignore_patterns("s[0-9]*"))
    (clone / "REPORT.md").write_text("the committed report\n")
    for args in (["report", str(clone)], ["report", str(clone), "--overwrite"]):
        res = runner.invoke(cli, args)
        assert res.exit_code == 2, res.output
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and "4 of the 4 runs" in lines[0] and "missing" in lines[0]
        assert "/s0/ckpt.safetensors" in lines[0]
        assert (clone / "REPORT.md").read_text() == "the committed report\n"


def test_the_committed_cpu_study_report_is_left_intact(runner, tmp_path):
    from pathlib import Path

    committed = Path(__file__).parent.parent / "studies" / "cpu"
    copy = tmp_path / "cpu"
    shutil.copytree(committed, copy)
    res = runner.invoke(cli, ["report", str(copy), "--overwrite"])
    assert res.exit_code == 2 and "missing" in res.output
    assert (copy / "REPORT.md").read_bytes() == (committed / "REPORT.md").read_bytes()


def test_an_mse_interval_from_two_seeds_stops_at_zero():
    from ebmtool.analysis.study import seed_ci_text
    text = seed_ci_text([0.01, 0.05], 0.95, "mse")  # the t interval with 1 degree of freedom reaches far below 0
    assert text.startswith("[0 (clipped; t interval -") and text.endswith("]")
    assert not seed_ci_text([0.01, 0.011, 0.012], 0.95, "mse").startswith("[0 (clipped")
