"""The conventions of docs/cli.md, as a script sees them: `--json` puts JSON alone on stdout (notes on stderr),
files go to `-o` or a `--*-file` option, compare's figures come in every `--plot-format` with a CSV of the numbers
they plot, progress bars only on a terminal, help defaults and choices from the library, and the torchrun entry
point keeps exit codes and messages."""

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import pytest

from ebmtool.io.artifacts import json_text
from ebmtool.cli import cli
from ebmtool.training import train

from helpers import tiny

ROOT = Path(__file__).resolve().parents[1]
FAST = ["-n", "32", "--bootstrap", "200", "--permutations", "200", "--batch-size", "32", "--device", "cpu"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two arms of two seeds, 2 steps each (metrics.h5 beside every checkpoint, for the training curves)."""
    root = tmp_path_factory.mktemp("conv")
    for arm, over in (("base", {}), ("var", {"supervise_energy": False})):
        for s in (0, 1):
            train(tiny(steps=2, seed=s, train_size=64, **over), root / arm / f"seed-{s}", log=lambda m: None)
    return root


def invoke(args):
    from click.testing import CliRunner

    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def groups(root):
    return ["--group", f"base={root}/base/seed-*", "--group", f"var={root}/var/seed-*"]


# ------------------------------------------------------------------------------------------------ --json

def test_eval_json_is_the_whole_of_stdout(runs, tmp_path):
    out = tmp_path / "ev.h5"
    r = invoke(["eval", runs / "base" / "seed-0", "-n", "8", "--device", "cpu", "--weights", "both", "--json", "-o",
                out])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)  # parses: nothing else is on stdout
    assert r.stdout == json_text(rep) + "\n"
    assert set(rep["results"]) == {"ema", "model"} and rep["step"] == 2 and out.exists()


def test_info_json_is_the_whole_of_stdout(runs):
    r = invoke(["info", runs / "base" / "seed-0" / "metrics.h5", "--json"])
    assert r.exit_code == 0
    d = json.loads(r.stdout)
    assert r.stdout == json_text(d) + "\n" and d["kind"] == "metrics"


def test_compare_json_prints_what_json_file_writes_and_notes_go_to_stderr(runs, tmp_path):
    files = {"json": tmp_path / "c.json", "md": tmp_path / "c.md", "figs": tmp_path / "figs"}
    r = invoke(["compare", *FAST, *groups(runs), "--json", "--json-file", files["json"], "--markdown-file",
                files["md"], "--plot", files["figs"], "--plot-format", "svg"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert r.stdout == files["json"].read_text()  # the printed report is the file's, byte for byte
    assert rep["groups"][0]["name"] == "base" and rep["comparisons"][0]["variant"] == "var"
    assert "wrote" not in r.stdout
    wrote = [ln for ln in r.stderr.splitlines() if ln.startswith("wrote ")]
    assert f"wrote {files['json']}" in wrote and f"wrote {files['md']}" in wrote
    assert {Path(ln[6:]).suffix for ln in wrote} == {".json", ".md", ".svg"}
    assert files["md"].read_text().startswith("# Comparison: ")


def test_compare_text_keeps_its_tables_and_notes_on_stdout(runs, tmp_path):
    r = invoke(["compare", *FAST, *groups(runs), "--json-file", tmp_path / "c.json"])
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("task        ") and f"wrote {tmp_path / 'c.json'}" in r.stdout.splitlines()
    assert json.loads((tmp_path / "c.json").read_text())["metric"] == "mse"


def test_compare_json_no_longer_takes_a_file_name(runs, tmp_path):
    """The old form `--json FILE`: FILE is now read as a checkpoint to compare, which does not exist (exit 2)."""
    r = invoke(["compare", *FAST, runs / "base" / "seed-0", "--json", tmp_path / "c.json"])
    assert r.exit_code == 2 and "no such file" in r.output and not (tmp_path / "c.json").exists()


def test_offline_commands_json(runs, tmp_path):
    ckpt = runs / "base" / "seed-0"
    r = invoke(["mine-negatives", ckpt, "-o", tmp_path / "negs.h5", "--k", "2", "--candidates", "2",
                "--refine-steps", "1", "--limit", "8", "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout)
    assert m["rows"] == 8 and m["k"] == 2 and set(m["energies"]) == {"E+", "E- (valid)", "E- - E+"}
    assert 0 <= m["p_hard"] <= 1 and "candidates" in m["counts"]
    r = invoke(["score", ckpt, tmp_path / "negs.h5", "-o", tmp_path / "scores.h5", "--levels", "all",
                "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    sc = json.loads(r.stdout)
    assert sc["rows"] == 8 and sc["step"] == 2 and len(sc["levels"]) > 1
    r = invoke(["weights", tmp_path / "scores.h5", "-o", tmp_path / "w.h5", "--json"])
    assert r.exit_code == 0, r.output
    w = json.loads(r.stdout)
    assert w["k"] == 2 and w["per_row_mean"]["effective sample size"]["uniform"] == 2.0


# ------------------------------------------------------------------------------------------------ figures

@pytest.fixture(scope="module")
def comparison(runs):
    from ebmtool.analysis.compare import compare
    from ebmtool.analysis.arms import expand_paths

    arms = [("base", expand_paths(f"{runs}/base/seed-*")), ("var", expand_paths(f"{runs}/var/seed-*"))]
    return compare(arms, n=32, n_boot=200, n_perm=200, batch_size=32, device="cpu")


MAGIC = {"png": lambda b: b.startswith(b"\x89PNG\r\n\x1a\n"), "pdf": lambda b: b.startswith(b"%PDF-"),
         "svg": lambda b: b"<svg" in b[:2000]}


@pytest.mark.parametrize("fmt", ["png", "pdf", "svg"])
def test_each_plot_format_writes_files_of_that_type_with_a_csv_each(comparison, tmp_path, fmt):
    from ebmtool.analysis.plots import FIGURE_FORMATS, write_all

    assert fmt in FIGURE_FORMATS
    report, extras = comparison
    paths = write_all(report, extras, tmp_path, fmt=fmt)
    assert sorted(p.name for p in paths) == sorted(f"{stem}.{fmt}" for stem in (
        "scatter-var", "error-distributions", "energy-histograms", "training-curves", "training-curves-compute",
        "seed-means"))
    for p in paths:
        assert MAGIC[fmt](p.read_bytes()), p
        assert p.with_suffix(".csv").exists()
    assert sorted(q.name for q in tmp_path.iterdir()) == sorted([p.name for p in paths] +
                                                                [p.with_suffix(".csv").name for p in paths])


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_csvs_hold_the_plotted_numbers(comparison, tmp_path, monkeypatch):
    from ebmtool.analysis import plots

    figures = {}
    save = plots._save

    def keep(fig, path, header, rows):
        figures[Path(path).stem] = fig
        return save(fig, path, header, rows)

    monkeypatch.setattr(plots, "_save", keep)
    report, extras = comparison
    plots.write_all(report, extras, tmp_path)
    metric = report["metric"]
    base = np.mean([extras["errors"][r][metric] for r in report["groups"][0]["runs"]], axis=0)
    var = np.mean([extras["errors"][r][metric] for r in report["groups"][1]["runs"]], axis=0)

    # scatter: one row per problem, the seed-averaged errors, split into the two plotted point sets
    rows = read_csv(tmp_path / "scatter-var.csv")
    assert [int(r["problem"]) for r in rows] == list(range(len(base)))
    np.testing.assert_array_equal([float(r["baseline"]) for r in rows], base)
    np.testing.assert_array_equal([float(r["variant"]) for r in rows], var)
    ax = figures["scatter-var"].axes[0]
    better = [r for r in rows if r["variant_better"] == "1"]
    worse = [r for r in rows if r["variant_better"] == "0"]
    for coll, part in zip(ax.collections[:2], (better, worse)):
        np.testing.assert_allclose(coll.get_offsets(), [[float(r["baseline"]), float(r["variant"])] for r in part])

    # error distributions: each run's histogram over the CSV's bins, and the group means drawn as lines
    rows = read_csv(tmp_path / "error-distributions.csv")
    for run in (r["name"] for r in report["runs"]):
        mine = [r for r in rows if r["run"] == run]
        edges = [float(r["bin_low"]) for r in mine] + [float(mine[-1]["bin_high"])]
        counts, _ = np.histogram(extras["errors"][run][metric], bins=edges)
        np.testing.assert_array_equal([float(r["count"]) for r in mine], counts)
        assert sum(counts) == report["n_problems"]
    drawn = sorted(ln.get_xdata()[0] for ln in figures["error-distributions"].axes[0].lines)
    assert drawn == pytest.approx(sorted({float(r["group_mean"]) for r in rows}))

    # energy histograms: the bar heights of each panel, positives then negatives
    rows = read_csv(tmp_path / "energy-histograms.csv")
    for ax, run in zip(figures["energy-histograms"].axes, [r["name"] for r in report["runs"]]):
        heights = [p.get_height() for p in ax.patches]
        assert heights == [float(r["count"]) for r in rows if r["run"] == run]

    # training curves: every plotted point, panel by panel and run by run
    rows = read_csv(tmp_path / "training-curves.csv")
    ys = np.concatenate([ln.get_ydata() for ax in figures["training-curves"].axes for ln in ax.lines])
    np.testing.assert_allclose(ys, [float(r["value"]) for r in rows])
    xs = np.concatenate([ln.get_xdata() for ax in figures["training-curves"].axes for ln in ax.lines])
    np.testing.assert_array_equal(xs, [int(r["step"]) for r in rows])

    # seed means: the dots (per seed) and the bars (per arm)
    rows = read_csv(tmp_path / "seed-means.csv")
    from matplotlib.collections import PathCollection

    dots = [c for c in figures["seed-means"].axes[0].collections if isinstance(c, PathCollection)]
    np.testing.assert_allclose(np.concatenate([c.get_offsets()[:, 1] for c in dots]),
                               [float(r["value"]) for r in rows])
    by_arm = {g["name"]: g for g in report["groups"]}
    for r in rows:
        assert float(r["arm_mean"]) == pytest.approx(by_arm[r["arm"]]["seed_mean"])
        assert any(float(r["value"]) == pytest.approx(v) for v in by_arm[r["arm"]]["per_seed"])


def test_plot_dir_with_figures_needs_overwrite(comparison, tmp_path):
    from ebmtool.runtime.errors import InputError
    from ebmtool.analysis.plots import check_plot_dir

    check_plot_dir(tmp_path / "new", overwrite=False)
    (tmp_path / "old.csv").write_text("x\n")
    with pytest.raises(InputError, match="already holds figures"):
        check_plot_dir(tmp_path, overwrite=False)
    check_plot_dir(tmp_path, overwrite=True)


# ------------------------------------------------------------------------------------------------ progress

def test_progress_bars_only_on_a_terminal(monkeypatch):
    from ebmtool.runtime.progress import progress_bar

    class Terminal:
        def isatty(self):
            return True

        def write(self, s):
            return len(s)

        def flush(self):
            pass

    with progress_bar(3, desc="x") as bar:  # pytest captures stderr: not a terminal
        assert bar.disable
    monkeypatch.setattr(sys, "stderr", Terminal())
    with progress_bar(3, desc="x") as bar:
        assert not bar.disable


def test_no_bar_in_captured_output(runs):
    r = invoke(["eval", runs / "base" / "seed-0", "-n", "8", "--device", "cpu"])
    assert r.exit_code == 0 and "\r" not in r.output and "it/s" not in r.output and "problem/s" not in r.output


# ------------------------------------------------------------------------------------------------ help

def options():
    for name, cmd in sorted(cli.commands.items()):
        for p in cmd.params:
            if isinstance(p, click.Option):
                yield name, p


def test_no_hand_written_default_in_help():
    """A default in help text is click's `show_default`, never a bracket written into the sentence."""
    bad = [f"{name} {p.opts[-1]}: {p.help}" for name, p in options()
           if p.help and re.search(r"\s\[[^\]:][^\]]*\]\.?$", p.help)]
    assert not bad, "\n".join(bad)


def test_choices_and_shown_defaults_come_from_the_library():
    from ebmtool.analysis.compare import DEFAULT_SEED
    from ebmtool.analysis.confounds import unset_defaults
    from ebmtool.runtime.devices import PRECISIONS
    from ebmtool.analysis.evaluate import EVAL_SPLITS, WEIGHT_CHOICES, WEIGHTS
    from ebmtool.offline.mining import SELECT
    from ebmtool.negatives import CLAMP_MODES, NegativeSettings
    from ebmtool.analysis.plots import FIGURE_FORMATS
    from ebmtool.negatives.sans import ALPHA_SCHEDULES, LOSS_FORMS
    from ebmtool.config import RECIPES, TrainConfig

    opt = {(name, p.name): p for name, p in options()}
    assert tuple(opt["compare", "plot_format"].type.choices) == FIGURE_FORMATS
    assert tuple(opt["compare", "weights"].type.choices) == WEIGHTS
    assert opt["compare", "seed"].default == DEFAULT_SEED
    assert tuple(opt["eval", "weights"].type.choices) == WEIGHT_CHOICES
    assert tuple(opt["eval", "split"].type.choices) == EVAL_SPLITS
    assert tuple(opt["eval", "precision"].type.choices) == PRECISIONS
    assert tuple(opt["mine-negatives", "select"].type.choices) == SELECT
    assert tuple(opt["train", "recipe"].type.choices) == tuple(RECIPES)
    assert tuple(opt["train", "clamp_mode"].type.choices) == CLAMP_MODES
    assert tuple(opt["train", "alpha_schedule"].type.choices) == ALPHA_SCHEDULES
    assert tuple(opt["weights", "alpha_schedule"].type.choices) == ALPHA_SCHEDULES
    assert tuple(opt["train", "sans_loss"].type.choices) == LOSS_FORMS
    assert opt["train", "anm_steps"].show_default == str(NegativeSettings().anm_steps)
    assert opt["train", "margin"].show_default == str(unset_defaults()["margin"])
    assert opt["train", "val_size"].show_default == str(TrainConfig().val_size)
    assert opt["train", "anm_steps"].default is None  # unset unless given: a resumed run tells them apart


# ------------------------------------------------------------------------------------------------ torchrun

def run_module(args, tmp_path, torchrun: bool):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for k in ("TORCHELASTIC_RUN_ID", "TORCHELASTIC_ERROR_FILE"):
        env.pop(k, None)
    if torchrun:
        env.update(TORCHELASTIC_RUN_ID="test", TORCHELASTIC_ERROR_FILE=str(tmp_path / "error.json"))
    return subprocess.run([sys.executable, "-m", "ebmtool", *args], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)


@pytest.mark.parametrize("args", [["eval", "missing.safetensors"], ["eval", "--bogus"], ["--version"]],
                         ids=["bad-file", "bad-option", "version"])
def test_torchrun_entry_point_keeps_exit_codes_and_messages(tmp_path, args):
    plain = run_module(args, tmp_path, torchrun=False)
    under = run_module(args, tmp_path, torchrun=True)
    assert (under.returncode, under.stdout, under.stderr) == (plain.returncode, plain.stdout, plain.stderr)
    assert plain.returncode == (0 if args == ["--version"] else 2)
    if args[1:] == ["missing.safetensors"]:
        assert plain.stderr == "Error: missing.safetensors: no such file\n"
        err = json.loads((tmp_path / "error.json").read_text())  # what torchrun's summary shows
        assert err["message"] == "ebmtool.runtime.errors.InputError: missing.safetensors: no such file"
    else:
        assert not (tmp_path / "error.json").exists()


def test_training_curves_are_also_drawn_against_compute(comparison, tmp_path, monkeypatch):
    """At matched compute the arms stop at different steps: a second figure puts training compute on the x axis."""
    from ebmtool.analysis import plots
    from ebmtool.training.metrics import read_metrics

    figures = {}
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path, header, rows: (figures.__setitem__(Path(path).stem, fig),
                                                                      save(fig, path, header, rows))[1])
    report, extras = comparison
    plots.write_all(report, extras, tmp_path)
    fig = figures["training-curves-compute"]
    assert all(ax.get_xlabel().startswith("training compute [FLOPs") for ax in fig.axes if ax.lines)
    rows = read_csv(tmp_path / "training-curves-compute.csv")
    for run in report["runs"]:
        columns, _ = read_metrics(Path(run["path"]).parent / "metrics.h5")
        mine = [r for r in rows if r["run"] == run["name"] and r["panel"] == "loss_total"]
        np.testing.assert_allclose([float(r["compute_flops"]) for r in mine], columns["compute_flops"])
    xs = np.concatenate([ln.get_xdata() for ax in fig.axes for ln in ax.lines])
    np.testing.assert_allclose(xs, [float(r["compute_flops"]) for r in rows])


def test_energy_histogram_tick_labels_do_not_overlap(tmp_path, monkeypatch):
    """Energies within less than a decade (as in a trained ired run) on the log axis: no two x tick labels of a
    panel overlap once drawn."""
    from ebmtool.analysis import plots

    figures = []
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, *a: (figures.append(fig), save(fig, *a))[1])
    rng = np.random.default_rng(0)
    spans = {"narrow": (25, 70), "across-10": (3, 30), "across-1": (0.3, 2), "wide": (0.8, 120)}
    energies = {name: {"e_pos": rng.uniform(lo, hi, 256), "e_neg": rng.uniform(lo, hi, 256)}
                for name, (lo, hi) in spans.items()}
    report = {"runs": [{"name": n} for n in energies]}
    plots.energy_histograms(report, energies, tmp_path / "e.png")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = figures[0]
    canvas = FigureCanvasAgg(fig)  # the saved figure was closed: draw it again on a canvas of its own
    canvas.draw()
    renderer = canvas.get_renderer()
    overlaps = []
    for ax in fig.axes:
        lo, hi = ax.get_xlim()
        labels = [t for t in ax.get_xticklabels() + ax.get_xticklabels(minor=True)
                  if t.get_visible() and t.get_text() and lo <= t.get_position()[0] <= hi]
        boxes = sorted(((t.get_window_extent(renderer), t.get_text()) for t in labels), key=lambda b: b[0].x0)
        overlaps += [(a[1], b[1]) for a, b in zip(boxes, boxes[1:]) if b[0].x0 < a[0].x1]
        assert len(labels) >= 2, f"every panel keeps labelled ticks: {[t.get_text() for t in labels]}"
    assert not overlaps, overlaps
