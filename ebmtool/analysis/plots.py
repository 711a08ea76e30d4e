"""Figures of a comparison (matplotlib, Agg backend: no display needed). Every figure has a title, axis labels
with units and a legend. Each function writes one figure (PNG, PDF or SVG) and, beside it, a CSV of the numbers
it plots (same stem, .csv), so that the figure can be redrawn; it returns the figure's path.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from ebmtool.io.artifacts import atomic_path, write_text
from ebmtool.runtime.errors import InputError

DPI = 120
FIGURE_FORMATS = ("png", "pdf", "svg")  # the first is the default


def _plt():
    """pyplot with the Agg backend (figures are files), imported when a figure is drawn: every ebmtool process
    (torchrun's workers too) imports the CLI, which imports this module for FIGURE_FORMATS."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors() -> list[str]:
    return _plt().rcParams["axes.prop_cycle"].by_key()["color"]


def _save(fig, path: Path, header: list[str], rows: list[list]) -> Path:
    """Write the figure (its type from the path's suffix) and the CSV of its data beside it."""
    path = Path(path)
    fmt = path.suffix.lstrip(".")
    if fmt not in FIGURE_FORMATS:
        raise ValueError(f"figure format {fmt!r} is not one of {', '.join(FIGURE_FORMATS)}")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, bbox_inches="tight", format=fmt)
    _plt().close(fig)
    write_csv(path.with_suffix(".csv"), header, rows)
    return path


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    """A figure's data: one header row, then one row per plotted point or bar; floats in full precision."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow([repr(float(v)) if isinstance(v, (float, np.floating)) else v for v in r])
    return write_text(path, buf.getvalue())


def check_plot_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse to replace the figures (or their CSVs) a directory already holds, unless overwrite."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir} is a file; --plot takes a directory")
    if out_dir.is_dir() and not overwrite and any(p.suffix.lstrip(".") in (*FIGURE_FORMATS, "csv")
                                                  for p in out_dir.iterdir()):
        raise InputError(f"{out_dir} already holds figures; pass --overwrite to replace them")


def _hist_rows(prefix: list, counts, edges) -> list[list]:
    return [[*prefix, float(lo), float(hi), float(c)] for lo, hi, c in zip(edges[:-1], edges[1:], counts)]


def _unit(metric: str) -> str:
    return "mean squared error per answer entry (dimensionless)" if metric.startswith("mse") else "fraction"


def _group_errors(report, errors, metric):
    """{group: per-problem error averaged over the group's seeds}."""
    out = {}
    for g in report["groups"]:
        out[g["name"]] = np.mean([errors[r][metric] for r in g["runs"]], axis=0)
    return out


def scatter_vs_baseline(report, errors, variant: str, path: Path) -> Path:
    """Per-problem error of a variant against the baseline (log-log), with the y = x line.
    CSV: problem, baseline, variant (the metric, seed-averaged), variant_better (1/0)."""
    plt, colors = _plt(), _colors()
    metric, base = report["metric"], report["baseline"]
    ge = _group_errors(report, errors, metric)
    x, y = ge[base], ge[variant]
    comp = next(c for c in report["comparisons"] if c["variant"] == variant)
    pr = comp["problems"]
    fig, ax = plt.subplots(figsize=(6, 5.5))
    below = y < x if report["direction"] == "lower" else y > x
    ax.scatter(x[below], y[below], s=8, alpha=0.6, color=colors[2],
               label=f"{variant} better ({pr['n_variant_better']} problems)")
    ax.scatter(x[~below], y[~below], s=8, alpha=0.6, color=colors[3],
               label=f"{variant} not better ({pr['n_variant_worse'] + pr['n_tied']} problems)")
    both = np.concatenate([x, y])
    log = report["direction"] == "lower" and bool((both > 0).all())
    lo, hi = float(both.min()), float(both.max())
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x (equal)")
    scale = ", log scale" if log else ""
    if log:
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel(f"{base} (baseline): {metric} per problem\n[{_unit(metric)}{scale}]")
    ax.set_ylabel(f"{variant}: {metric} per problem [{_unit(metric)}{scale}]")
    ax.set_title(f"Per-problem {metric}: {variant} vs {base}\nmean diff {pr['mean_diff']:.3g} "
                 f"[{pr['ci_low']:.3g}, {pr['ci_high']:.3g}], verdict: {comp['verdict']}", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(True, which="both", alpha=0.3)
    rows = [[i, float(a), float(b), int(w)] for i, (a, b, w) in enumerate(zip(x, y, below))]
    return _save(fig, path, ["problem", "baseline", "variant", "variant_better"], rows)


def error_distributions(report, errors, path: Path) -> Path:
    """Histogram (log-spaced bins) of per-problem error per run, one colour per group, dashed = group mean.
    CSV: run, group, group_mean (the dashed line), bin_low, bin_high, count."""
    plt, colors = _plt(), _colors()
    metric = report["metric"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    allv = np.concatenate([errors[r["name"]][metric] for r in report["runs"]])
    log = report["direction"] == "lower" and bool((allv > 0).all()) and allv.max() > allv.min()
    bins = np.geomspace(allv.min(), allv.max(), 50) if log else 50
    rows = []
    for i, g in enumerate(report["groups"]):
        color = colors[i % len(colors)]
        for j, r in enumerate(g["runs"]):
            label = f"{g['name']} ({g['n_seeds']} seed{'s' if g['n_seeds'] > 1 else ''})" if j == 0 else None
            counts, edges, _ = ax.hist(errors[r][metric], bins=bins, histtype="step", color=color, alpha=0.8,
                                       lw=1.2, label=label)
            rows += _hist_rows([r, g["name"], float(g["mean"])], counts, edges)
        ax.axvline(g["mean"], color=color, ls="--", lw=1.2, label=f"{g['name']} mean {g['mean']:.3g}")
    if log:
        ax.set_xscale("log")
    ax.set_xlabel(f"{metric} per problem [{_unit(metric)}{', log scale' if log else ''}]")
    ax.set_ylabel("number of problems")
    ax.set_title(f"Distribution of per-problem {metric} ({report['n_problems']} problems, one line per run)")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    return _save(fig, path, ["run", "group", "group_mean", "bin_low", "bin_high", "count"], rows)


def _log_axis(ax) -> None:
    """A log x axis labelled at 1, 2 and 5 times powers of ten as plain numbers, other ticks unlabelled: where the
    data span less than a decade matplotlib labels every minor tick (2x10^1, 3x10^1, ...), and they overlap."""
    plt = _plt()  # pyplot carries matplotlib.ticker's locators and formatters
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(plt.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(plt.NullFormatter())


def energy_histograms(report, energies, path: Path) -> Path:
    """E+ vs E- per run (same t and noise for every model), one panel per run.
    CSV: run, energy (positive or negative), bin_low, bin_high, count."""
    plt, colors = _plt(), _colors()
    names = [r["name"] for r in report["runs"] if r["name"] in energies]
    cols = min(3, len(names))
    rows_n = -(-len(names) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols, 3.4 * rows_n), squeeze=False, layout="constrained")
    rows = []
    for ax, name in zip(axes.flat, names):
        e = energies[name]
        both = np.concatenate([e["e_pos"], e["e_neg"]])
        pos = both[both > 0]
        bins = np.geomspace(pos.min(), pos.max(), 40) if pos.size == both.size and pos.size else 40
        for key, which, color, label in (("e_pos", "positive", colors[0], "positives E+"),
                                         ("e_neg", "negative", colors[3], "IRED negatives E-")):
            counts, edges, _ = ax.hist(e[key], bins=bins, alpha=0.55, color=color,
                                       label=f"{label} (mean {e[key].mean():.3g})")
            rows += _hist_rows([name, which], counts, edges)
        if isinstance(bins, np.ndarray):
            _log_axis(ax)
        p_hard = float((e["e_neg"] < e["e_pos"]).mean())
        ax.set_title(f"{name}: p_hard = P(E- < E+) = {p_hard:.2f}", fontsize=9)
        ax.set_xlabel("energy E(x, y, t) [model units, log scale]", fontsize=8)
        ax.set_ylabel("number of pairs", fontsize=8)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    n = energies[names[0]]["e_pos"].size if names else 0
    fig.suptitle(f"Energies of positives vs IRED negatives ({n} problems, random t, shared noise, fixed seed)",
                 fontsize=10)
    return _save(fig, path, ["run", "energy", "bin_low", "bin_high", "count"], rows)


TRAINING_PANELS = [("loss_total", "total loss"), ("loss_denoise", "denoising loss (MSE of noise)"),
                   ("loss_energy", "energy loss (softplus)"), ("p_hard", "p_hard = P(E- < E+)"),
                   ("margin", "margin E- - E+"), ("eval/mse_ema", "validation MSE (EMA weights)")]
NOT_PANELS = ("step", "eval/step", "energy_pos", "energy_neg", "compute_flops")
X_AXES = {"step": "training step", "compute_flops": "training compute [FLOPs, inherited included]"}


def _curve_x(c: dict, key: str, x: str) -> np.ndarray:
    """The x values of one curve: steps, or the cumulative compute at them (an eval row's compute is the training
    rows' at its step, interpolated)."""
    steps = c["eval/step"] if key.startswith("eval/") else c["step"]
    if x == "step":
        return steps
    return np.interp(steps, c["step"], c["compute_flops"]) if key.startswith("eval/") else c["compute_flops"]


def training_curves(report, curves, path: Path, x: str = "step") -> Path | None:
    """Loss parts, p_hard and margin from each run's metrics.h5 (the columns that exist) over training steps, or
    with x="compute_flops" over training compute: at matched compute the arms stop at different steps but at the
    same compute. CSV: panel (the metrics column), run, group, x (step or compute_flops), value: one row per
    plotted point."""
    have = {k: v for k, v in curves.items() if v and (x == "step" or x in v)}
    if not have:
        return None
    plt, colors = _plt(), _colors()
    panels = [(k, t) for k, t in TRAINING_PANELS if any(k in c for c in have.values())]
    extra = sorted({k for c in have.values() for k in c if k not in dict(panels) and k not in NOT_PANELS})
    panels += [(k, k) for k in extra]
    cols = 3
    rows_n = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.6 * cols, 3.3 * rows_n), squeeze=False)
    group_of = {r["name"]: r["group"] for r in report["runs"]}
    gcolor = {g["name"]: colors[i % len(colors)] for i, g in enumerate(report["groups"])}
    rows = []
    for ax, (key, title) in zip(axes.flat, panels):
        shown = set()
        for name, c in have.items():
            if key not in c or not np.isfinite(c[key]).any():
                continue
            xs, vals, g = _curve_x(c, key, x), c[key], group_of[name]
            ax.plot(xs, vals, color=gcolor[g], lw=1, alpha=0.8, label=g if g not in shown else None,
                    marker="o" if key.startswith("eval/") else None, ms=3)
            shown.add(g)
            rows += [[key, name, g, int(v0) if x == "step" else float(v0), float(v)] for v0, v in zip(xs, vals)]
        if key.startswith("loss") or key.startswith("eval/"):
            ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(X_AXES[x], fontsize=8)
        ax.set_ylabel(title.split(" (")[0] + (" [log]" if ax.get_yscale() == "log" else ""), fontsize=8)
        ax.grid(True, alpha=0.3)
        if shown:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    over = "" if x == "step" else " against training compute"
    fig.suptitle(f"Training curves{over} from each run's metrics.h5 (one line per seed, colour = arm)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path, ["panel", "run", "group", x, "value"], rows)


def seed_means(report, path: Path) -> Path:
    """Per-seed mean metric of each arm (dots) with the arm's mean across seeds (bar).
    CSV: arm, seed, value (the dot), arm_mean (the bar)."""
    plt, colors = _plt(), _colors()
    fig, ax = plt.subplots(figsize=(1.8 + 1.4 * len(report["groups"]), 4.5))
    rows = []
    for i, g in enumerate(report["groups"]):
        color = colors[i % len(colors)]
        jitter = np.linspace(-0.12, 0.12, len(g["per_seed"])) if len(g["per_seed"]) > 1 else [0.0]
        ax.scatter(i + np.asarray(jitter), g["per_seed"], color=color, zorder=3, label=f"{g['name']}: one dot per seed")
        ax.hlines(g["seed_mean"], i - 0.25, i + 0.25, color=color, lw=2)
        for s, v, dx in zip(g["seeds"], g["per_seed"], jitter):
            ax.annotate(f"s{s}", (i + dx, v), textcoords="offset points", xytext=(5, 0), fontsize=7)
            rows.append([g["name"], int(s), float(v), float(g["seed_mean"])])
    ax.set_xticks(range(len(report["groups"])), [g["name"] for g in report["groups"]])
    ax.set_ylabel(f"{report['metric']} (mean over {report['n_problems']} problems)")
    ax.set_xlabel("arm")
    ax.set_title(f"{report['metric']} per seed ({report['direction']} is better); bar = mean over seeds", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path, ["arm", "seed", "value", "arm_mean"], rows)


def write_all(report, extras, out_dir: Path, fmt: str = FIGURE_FORMATS[0]) -> list[Path]:
    """Every figure of a comparison into out_dir as `fmt` files, each with its CSV; returns the figures' paths."""
    if fmt not in FIGURE_FORMATS:
        raise InputError(f"figure format {fmt!r} is not one of {', '.join(FIGURE_FORMATS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for c in report["comparisons"]:
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in c["variant"])
        paths.append(scatter_vs_baseline(report, extras["errors"], c["variant"], out_dir / f"scatter-{safe}.{fmt}"))
    paths.append(error_distributions(report, extras["errors"], out_dir / f"error-distributions.{fmt}"))
    if extras.get("energies"):
        paths.append(energy_histograms(report, extras["energies"], out_dir / f"energy-histograms.{fmt}"))
    for x, stem in (("step", "training-curves"), ("compute_flops", "training-curves-compute")):
        p = training_curves(report, extras.get("curves", {}), out_dir / f"{stem}.{fmt}", x=x)
        if p is not None:
            paths.append(p)
    if any(g["n_seeds"] > 1 for g in report["groups"]):
        paths.append(seed_means(report, out_dir / f"seed-means.{fmt}"))
    return paths
