"""`report`: one Markdown page over a whole study, built only from the files the study left behind.

A study trains TASKS x ARMS x SEEDS and compares the arms of each task with `ebmtool compare --json-file`:
    STUDY/<task>/<arm>/s<seed>/ckpt.safetensors, metrics.h5
    STUDY/<task>/compare-<split>-<weights>.json, .md       split in SPLITS, weights in WEIGHTS
    STUDY/<task>/figures-<split>-<weights>/*.png
    STUDY/arms.txt (optional)                             lines "ARM: <train flags>"

Nothing is evaluated or trained again: means, intervals, p-values and verdicts are the compare JSONs'; training
diagnostics, steps, compute and wall time come from each run's checkpoint metadata and metrics.h5. Every sentence
of the report follows mechanically from those numbers, so the page can be regenerated at any time and diffed.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ebmtool.io.artifacts import atomic_path
from ebmtool.io.checkpoints import load_checkpoint
from ebmtool.analysis.reporting import arm_mean_table, fmt_number, fmt_p, md_table
from ebmtool.runtime.errors import InputError
from ebmtool.analysis.evaluate import DEFAULT_WEIGHTS
from ebmtool.analysis.evaluate import WEIGHTS as WEIGHT_SETS
from ebmtool.analysis.stats import scipy_stats
from ebmtool.training.metrics import (
    LEVEL_COLUMNS,
    TAIL_FRACTION,
    WHY_COLUMNS,
    read_metrics,
    source_columns,
    tail_means,
)

SPLITS = ("test", "harder")
VERDICT_WEIGHTS = DEFAULT_WEIGHTS  # the report's default verdict weights: raw, as every command's (weights_statement)
WEIGHTS = (VERDICT_WEIGHTS, *(w for w in WEIGHT_SETS if w != VERDICT_WEIGHTS))  # the report's order: raw, EMA
REPORT_NAME = "REPORT.md"
DIAGNOSTIC_COLUMNS = ("loss_denoise", "loss_energy", "p_hard", "margin", "norm_ratio", "grad_share_energy",
                      "dup_fraction")
MISSING = "–"  # a column no run of the arm logged
RUN_DIR = re.compile(r"s(\d+)")
WEIGHT_WORDS = {"model": "raw (model)", "ema": "EMA"}


def num(v) -> str:
    """Every number of the report: 4 significant digits; None and non-finite values read 'n/a'."""
    return fmt_number(float(v) if isinstance(v, (float, np.floating)) else v)


# ------------------------------------------------------------------------------------------------ reading

@dataclass
class RunInfo:
    """One training run: what its checkpoint and metrics.h5 say about cost and training health."""
    arm: str
    seed: int
    step: int
    compute_flops: float | None
    wall_time: float | None
    ckpt_mtime: float
    diagnostics: dict[str, float]  # column -> tail mean (nan when the column holds no finite value there)
    ema: tuple[float, int]


@dataclass
class TaskStudy:
    name: str
    path: Path
    runs: list[RunInfo]
    reports: dict[tuple[str, str], dict] = field(default_factory=dict)  # (split, weights) -> compare JSON

    @property
    def baseline(self) -> str:
        """The baseline every compare JSON of the task names (they must agree: one baseline per task)."""
        names = sorted({r["baseline"] for r in self.reports.values()})
        if len(names) > 1:
            raise InputError(f"{self.path}: the compare JSONs name different baselines ({', '.join(names)}); "
                             "compare every split and weight set against one baseline")
        return names[0]


def read_arms_file(study_dir: Path) -> dict[str, str]:
    """STUDY/arms.txt as {arm: train flags}, in file order (blank lines and # comments skipped); {} without one."""
    path = study_dir / "arms.txt"
    if not path.exists():
        return {}
    arms = {}
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, flags = line.partition(":")
        if not sep or not name.strip():
            raise InputError(f"{path} line {i}: expected 'ARM: <train flags>', got {line.strip()!r}")
        arms[name.strip()] = flags.strip()
    return arms


def run_tail_means(metrics_path: Path) -> tuple[dict[str, float], float | None]:
    """(column -> mean over the last TAIL_FRACTION of rows, last wall_time) of one metrics.h5.

    Columns: DIAGNOSTIC_COLUMNS, WHY_COLUMNS, LEVEL_COLUMNS and every source/<name>/accept_fraction the file has.
    A column of only NaN there gives nan (logged but undefined, e.g. no hard negative); an absent column is absent.
    """
    columns, _ = read_metrics(metrics_path)
    if "step" not in columns or columns["step"].shape[0] == 0:
        return {}, None
    sources = [f"source/{s}/accept_fraction" for s, g in source_columns(columns).items() if "accept_fraction" in g]
    out = tail_means(columns, (*DIAGNOSTIC_COLUMNS, *WHY_COLUMNS, *LEVEL_COLUMNS, *sorted(sources)), TAIL_FRACTION)
    wall = float(columns["wall_time"][-1]) if "wall_time" in columns else float("nan")
    return out, wall if math.isfinite(wall) else None


def read_run(run_dir: Path, arm: str, seed: int) -> RunInfo:
    ckpt_path = run_dir / "ckpt.safetensors"
    ck = load_checkpoint(ckpt_path)
    compute = None
    if "ebmtool.compute_flops" in ck.meta:
        try:
            compute = float(json.loads(ck.meta["ebmtool.compute_flops"]))
        except (ValueError, TypeError):
            raise InputError(f"{ckpt_path}: its ebmtool.compute_flops metadata is not a number") from None
    metrics = run_dir / "metrics.h5"
    diag, wall = run_tail_means(metrics) if metrics.exists() else ({}, None)
    cfg = ck.config
    return RunInfo(arm, seed, ck.step, compute, wall, ckpt_path.stat().st_mtime, diag,
                   (cfg.get("ema_beta"), cfg.get("ema_every")))


def find_runs(task_dir: Path) -> list[RunInfo]:
    """Every <arm>/s<seed>/ with a checkpoint, in (arm, seed) order."""
    runs = []
    for ckpt in task_dir.glob("*/s*/ckpt.safetensors"):
        m = RUN_DIR.fullmatch(ckpt.parent.name)
        if m:
            runs.append((ckpt.parent.parent.name, int(m.group(1)), ckpt.parent))
    return [read_run(d, arm, seed) for arm, seed, d in sorted(runs)]


def load_compare(path: Path, split: str, weights: str) -> dict:
    """A compare JSON, checked to be one and to hold the split and weights its file name says."""
    try:
        rep = json.loads(path.read_text())
    except ValueError as exc:
        raise InputError(f"{path} is not valid JSON ({exc})") from None
    keys = ("baseline", "groups", "comparisons", "trivial_baselines", "metric", "direction", "weights", "problems")
    if not isinstance(rep, dict) or any(k not in rep for k in keys):
        raise InputError(f"{path} is not an `ebmtool compare --json-file` report (missing {', '.join(keys)})")
    harder = bool(rep["problems"].get("harder"))
    if rep["weights"] != weights or harder != (split == "harder"):
        raise InputError(f"{path} holds a comparison of {rep['weights']} weights on the "
                         f"{'harder' if harder else 'test'} split, not what its name says")
    return rep


def read_study(study_dir: Path) -> list[TaskStudy]:
    """Every task directory of the study (sorted), with its runs and whatever compare JSONs exist."""
    study_dir = Path(study_dir)
    if not study_dir.exists():
        raise InputError(f"{study_dir}: no such study directory")
    if not study_dir.is_dir():
        raise InputError(f"{study_dir} is a file, not a study directory")
    tasks = []
    for d in sorted(p for p in study_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        t = TaskStudy(d.name, d, find_runs(d))
        for split in SPLITS:
            for w in WEIGHTS:
                p = d / f"compare-{split}-{w}.json"
                if p.exists():
                    t.reports[(split, w)] = load_compare(p, split, w)
        if t.runs or t.reports:
            tasks.append(t)
    if not tasks:
        raise InputError(f"{study_dir} holds no task directories (expected <task>/<arm>/s<seed>/ckpt.safetensors)")
    return tasks


# ------------------------------------------------------------------------------------------------ numbers

def arm_order(arms, baseline: str, listed) -> list[str]:
    """Baseline first, then the order of arms.txt, then any other arm alphabetically."""
    arms = set(arms)
    rest = [a for a in listed if a in arms and a != baseline]
    return [baseline] * (baseline in arms) + rest + sorted(arms - {baseline} - set(rest))


NONNEGATIVE_METRICS = ("mse", "accuracy", "error_rate")  # metrics that cannot be below 0: their intervals stop at 0


def seed_ci(per_seed, confidence: float) -> tuple[float | None, float | None]:
    """t interval of the mean across seeds (None with one seed: no spread to estimate)."""
    a = np.asarray(per_seed, dtype=np.float64)
    if a.size < 2:
        return None, None

    half = float(scipy_stats().t.ppf(0.5 + confidence / 2, a.size - 1) * a.std(ddof=1) / math.sqrt(a.size))
    return float(a.mean()) - half, float(a.mean()) + half


def seed_ci_text(per_seed, confidence: float, metric: str) -> str:
    """seed_ci as the report prints it: a metric that cannot be negative (an MSE) gets its lower end clipped at 0
    and marked, where few seeds make the t interval reach below it."""
    lo, hi = seed_ci(per_seed, confidence)
    if lo is not None and lo < 0 and metric in NONNEGATIVE_METRICS:
        return f"[0 (clipped; t interval {num(lo)}), {num(hi)}]"
    return _ci(lo, hi)


def _ci(lo, hi) -> str:
    return "n/a" if lo is None and hi is None else f"[{num(lo)}, {num(hi)}]"


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals and len(vals) == len(values) else None


def arm_costs(runs: list[RunInfo]) -> dict:
    """Means over an arm's runs; compute is n/a unless every run recorded it (a partial mean would mislead)."""
    per_step = [r.wall_time / r.step if r.wall_time is not None and r.step else None for r in runs]
    return {"runs": len(runs), "steps": float(np.mean([r.step for r in runs])),
            "compute": _mean([r.compute_flops for r in runs]), "wall": _mean([r.wall_time for r in runs]),
            "per_step": _mean(per_step)}


# ------------------------------------------------------------------------------------------------ sections

def _groups(rep: dict) -> dict[str, dict]:
    return {g["name"]: g for g in rep["groups"]}


def _comparisons(rep: dict) -> dict[str, dict]:
    return {c["variant"]: c for c in rep["comparisons"]}


def _beats(value: float, other: float, direction: str) -> bool:
    return value < other if direction == "lower" else value > other


def results_table(rep: dict, other: dict | None, order: list[str], other_weights: str) -> str:
    """Arms of one split: seeds, mean with its across-seed interval, difference to the baseline, p, verdict."""
    pct = f"{round(rep['confidence'] * 100)} %"
    metric = rep["metric"]
    groups, comps = _groups(rep), _comparisons(rep)
    other_groups = _groups(other) if other else {}
    rows = []
    for arm in (a for a in order if a in groups):
        g = groups[arm]
        c = comps.get(arm)
        o = other_groups.get(arm)
        row = [arm + (" (baseline)" if arm == rep["baseline"] else ""),
               f"{g['n_seeds']} ({', '.join(map(str, g['seeds']))})", num(g["mean"]),
               seed_ci_text(g["per_seed"], rep["confidence"], rep["metric"])]
        if c is None:
            row += [MISSING] * 5
        else:
            pm = c["primary"]
            row += [num(pm["mean_diff"]), _ci(pm["ci_low"], pm["ci_high"]), c["basis"], fmt_p(pm["p_holm"]),
                    c["verdict"]]
        row.append(num(o["mean"]) if o else "n/a")
        rows.append(row)
    header = ["arm", "seeds", f"{metric} mean", f"{pct} CI (seeds)", f"diff vs {rep['baseline']}", f"{pct} CI",
              "basis", "p (Holm)", "verdict", f"{metric} mean, {WEIGHT_WORDS[other_weights]} weights"]
    return md_table(rows, header)


def trivial_winners(rep: dict) -> list[str]:
    """The trivial predictors the baseline's mean does not beat, in the metric's direction."""
    base = _groups(rep)[rep["baseline"]]["mean"]
    return [k for k, v in sorted(rep["trivial_baselines"].items()) if not _beats(base, v, rep["direction"])]


def baseline_beats_trivial(rep: dict) -> bool:
    return not trivial_winners(rep)


def trivial_lines(task: str, split: str, reports: dict[str, dict], verdict_weights: str) -> list[str]:
    """Does the baseline beat every trivial predictor? If not (verdict weights), the comparison says nothing."""
    rep = reports[verdict_weights]
    trivial = rep["trivial_baselines"]
    out = [f"Trivial predictors ({rep['direction']} {rep['metric']} is better): "
           + ", ".join(f"{k} {num(v)}" for k, v in sorted(trivial.items())) + "."]
    for w in (verdict_weights, *(x for x in WEIGHTS if x != verdict_weights)):
        if w not in reports:
            continue
        r = reports[w]
        base = _groups(r)[r["baseline"]]["mean"]
        losers = trivial_winners(r)
        verb = "beats every trivial predictor" if not losers else f"does not beat {', '.join(losers)}"
        out.append(f"Baseline {r['baseline']} with {WEIGHT_WORDS[w]} weights: {rep['metric']} {num(base)} {verb}.")
    if not baseline_beats_trivial(rep):
        out.append(f"**The comparison on {task} ({split}) is uninformative: the baseline does not beat every "
                   "trivial predictor.**")
    return out


def diagnostics_table(runs: list[RunInfo], order: list[str], cols) -> str:
    """One row per arm: the mean over its seeds of each run's tail mean of `cols` (sources' columns appended
    when `cols` is DIAGNOSTIC_COLUMNS)."""
    if cols == DIAGNOSTIC_COLUMNS:
        cols = [*cols, *sorted({c for r in runs for c in r.diagnostics if c.startswith("source/")})]
    return arm_mean_table({arm: [r.diagnostics for r in runs if r.arm == arm] for arm in order}, cols)


def cost_table(costs: dict[str, dict], baseline: str, order: list[str]) -> str:
    rows = []
    for arm in order:
        c = costs[arm]
        rows.append([arm, str(c["runs"]), num(c["steps"]), num(c["compute"]),
                     num(compute_ratio(costs, arm, baseline)), num(c["wall"]),
                     num(c["per_step"])])
    return md_table(rows, ["arm", "runs", "steps (mean)", "compute FLOPs (mean)", f"compute / {baseline}",
                            "wall s per run (mean)", "s per step (mean)"])


def compute_ratio(costs: dict[str, dict], arm: str, baseline: str) -> float | None:
    a, b = costs.get(arm, {}).get("compute"), costs.get(baseline, {}).get("compute")
    return a / b if a is not None and b else None


def answer_lines(t: TaskStudy, order: list[str], costs: dict[str, dict], verdict_weights: str) -> list[str]:
    """One line per variant: the verdict-weights difference on each split with its interval, seeds, compute."""
    baseline = t.baseline
    out = []
    for arm in order:
        if arm == baseline:
            continue
        parts, verdicts, seeds = [], [], set()
        for split in SPLITS:
            rep = t.reports.get((split, verdict_weights))
            c = _comparisons(rep).get(arm) if rep else None
            if c is None:
                parts.append(f"n/a on {split}")
                verdicts.append("n/a")
                continue
            pm = c["primary"]
            parts.append(f"{num(pm['mean_diff'])} {_ci(pm['ci_low'], pm['ci_high'])} on {split}")
            verdicts.append(c["verdict"])
            g = _groups(rep)
            seeds.add(f"{g[arm]['n_seeds']} vs {g[baseline]['n_seeds']} seeds, basis {c['basis']}")
        c = costs.get(arm)
        steps = f"steps {num(c['steps'])} vs {num(costs[baseline]['steps'])}" if c and baseline in costs else \
            "steps n/a"
        out.append(f"- {arm}: mean diff {', '.join(parts)}; verdict {' / '.join(SPLITS)}: {' / '.join(verdicts)} "
                   f"({'; '.join(sorted(seeds)) or 'no seeds'}; compute ratio "
                   f"{num(compute_ratio(costs, arm, baseline))}; {steps})")
    weak = [s for s in SPLITS if (s, verdict_weights) in t.reports
            and not baseline_beats_trivial(t.reports[(s, verdict_weights)])]
    if weak:
        out.append(f"- uninformative on {' and '.join(weak)}: the baseline does not beat every trivial predictor")
    return out


def link_lines(t: TaskStudy, study_dir: Path) -> list[str]:
    out = []
    for split in SPLITS:
        for w in WEIGHTS:
            md = t.path / f"compare-{split}-{w}.md"
            figs = sorted((t.path / f"figures-{split}-{w}").glob("*.png"))
            if not md.exists() and not figs:
                continue
            links = [f"[{md.name}]({md.relative_to(study_dir).as_posix()})"] if md.exists() else []
            links += [f"[{p.name}]({p.relative_to(study_dir).as_posix()})" for p in figs]
            out.append(f"- {split}, {WEIGHT_WORDS[w]} weights: " + ", ".join(links))
    return out


def weights_statement(tasks: list[TaskStudy], verdict_weights: str) -> str:
    ema = sorted({r.ema for t in tasks for r in t.runs}, key=str)
    setting = ", ".join(f"beta {num(b)} every {num(e)} steps" for b, e in ema) or "as configured"
    other = WEIGHTS[1 - WEIGHTS.index(verdict_weights)]
    return (f"Verdicts, intervals and p-values use the **{WEIGHT_WORDS[verdict_weights]} weights**; the mean with "
            f"the {WEIGHT_WORDS[other]} weights is the last column of each table. Why raw weights by default: the "
            f"EMA ({setting} in these runs) lags the raw weights at CPU step budgets, and an arm that takes fewer "
            "steps at matched compute has a younger EMA, so EMA verdicts would mix the arm with its step count.")


def wall_lines(tasks: list[TaskStudy]) -> list[str]:
    runs = [r for t in tasks for r in t.runs]
    timed = [r for r in runs if r.wall_time is not None]
    out = [f"- Sum of run wall times: {num(sum(r.wall_time for r in timed))} s over {len(timed)} of {len(runs)} "
           "runs (last `wall_time` row of each metrics.h5)."]
    if timed:
        start = min(r.ckpt_mtime - r.wall_time for r in timed)
        end = max(r.ckpt_mtime for r in runs)
        out.append(f"- Elapsed span, derived from file times (earliest checkpoint mtime minus its run's wall time "
                   f"to the latest checkpoint mtime): {num(end - start)} s. Copying or touching the files changes it.")
    return out


# ------------------------------------------------------------------------------------------------ the report

def task_section(t: TaskStudy, study_dir: Path, listed: dict[str, str], verdict_weights: str) -> list[str]:
    """Lines of one compared task: a table per split, trivial predictors, diagnostics, cost, files, answer."""
    baseline = t.baseline
    arms = {r.arm for r in t.runs} | {g["name"] for rep in t.reports.values() for g in rep["groups"]}
    order = arm_order(arms, baseline, listed)
    run_arms = [a for a in order if any(r.arm == a for r in t.runs)]
    costs = {a: arm_costs([r for r in t.runs if r.arm == a]) for a in run_arms}
    any_rep = next(iter(t.reports.values()))
    other_w = WEIGHTS[1 - WEIGHTS.index(verdict_weights)]
    out = [f"## {t.name}", "", f"Task {any_rep['task']}; baseline **{baseline}**; primary metric "
           f"{any_rep['metric']} ({any_rep['direction']} is better).", ""]
    for split in SPLITS:
        reps = {w: t.reports[(split, w)] for w in WEIGHTS if (split, w) in t.reports}
        out += [f"### {split} split", ""]
        if verdict_weights not in reps:
            out += [f"No verdicts: compare-{split}-{verdict_weights}.json is missing.", ""]
            continue
        rep = reps[verdict_weights]
        out += [f"{rep['n_problems']} problems, {WEIGHT_WORDS[verdict_weights]} weights; differences are "
                f"arm − {baseline}.", "", results_table(rep, reps.get(other_w), order, other_w), ""]
        out += trivial_lines(t.name, split, reps, verdict_weights) + [""]
    if run_arms:
        out += ["### Training diagnostics", "",
                f"Mean over the last {round(TAIL_FRACTION * 100)} % of each run's logged rows, then over its "
                "seeds (seeds without a finite value left out).", "",
                diagnostics_table(t.runs, run_arms, DIAGNOSTIC_COLUMNS), "", "Why: false negatives (kappa < 1: negatives more "
                "probable than their positive; docs/negatives.md, \"False negatives\") and the cosine between the denoising and energy terms' gradients:", "",
                diagnostics_table(t.runs, run_arms, WHY_COLUMNS), "", "Denoising loss per noise level:", "",
                diagnostics_table(t.runs, run_arms, LEVEL_COLUMNS), "",
                "### Compute and cost", "", "Steps and compute from checkpoint metadata (`ebmtool.step`, "
                "`ebmtool.compute_flops`), wall time from the last metrics row.", "",
                cost_table(costs, baseline, run_arms), ""]
    links = link_lines(t, study_dir)
    if links:
        out += ["### Files", ""] + links + [""]
    out += ["### Answer", "", f"Differences arm − {baseline} in {any_rep['metric']}, "
            f"{WEIGHT_WORDS[verdict_weights]} weights, with their intervals:", ""]
    return out + answer_lines(t, order, costs, verdict_weights) + [""]


def check_runs(t: TaskStudy) -> None:
    """Every run a task's compare results name must be in the study: the report's diagnostics and compute come
    from them, so without them it would print n/a where a committed report has numbers (as in a fresh clone,
    where the run directories are not committed)."""
    have = {(r.arm, r.seed) for r in t.runs}
    named = sorted({(g["name"], s) for rep in t.reports.values() for g in rep["groups"] for s in g["seeds"]})
    missing = [f"{arm}/s{seed}" for arm, seed in named if (arm, seed) not in have]
    if missing:
        raise InputError(f"{t.path}: {len(missing)} of the {len(named)} runs its compare results name are missing "
                         f"(first {missing[0]}/ckpt.safetensors), and the report's diagnostics and compute come from "
                         "them; train them (run directories are not committed: `make study` trains and resumes "
                         "them) before writing the report")


def format_report(study_dir: Path, *, weights_for_verdicts: str = "model") -> str:
    """The whole report as Markdown; deterministic for the same files."""
    if weights_for_verdicts not in WEIGHTS:
        raise InputError(f"weights for verdicts must be one of {', '.join(WEIGHTS)}, not {weights_for_verdicts!r}")
    study_dir = Path(study_dir)
    tasks = read_study(study_dir)
    listed = read_arms_file(study_dir)
    done = [t for t in tasks if t.reports]
    for t in done:
        check_runs(t)
    out = [f"# Study report: {study_dir.name}", "",
           f"{len(done)} of {len(tasks)} tasks compared. Every number below is read from the compare JSONs, the "
           "checkpoints and the metrics files of this directory; numbers have 4 significant digits, `n/a` means "
           f"undefined or not recorded and `{MISSING}` a column no run logged.", "",
           weights_statement(tasks, weights_for_verdicts), ""]
    if listed:
        out += ["## Arms", "", md_table([[a, f"`{flags}`" if flags else ""] for a, flags in listed.items()],
                                         ["arm", "train flags"]), ""]
    unfinished = [t for t in tasks if not t.reports]
    if unfinished:
        out += ["## Not finished", ""]
        for t in unfinished:
            runs = "1 run exists" if len(t.runs) == 1 else f"{len(t.runs)} runs exist"
            out.append(f"- {t.name}: not finished (no compare JSON; {runs})")
        out.append("")
    for t in done:
        out += task_section(t, study_dir, listed, weights_for_verdicts)
    out += ["## Study wall time", ""] + wall_lines(tasks)
    return "\n".join(out) + "\n"


def write_report(study_dir: Path, *, weights_for_verdicts: str = "model", overwrite: bool = True) -> Path:
    """Write STUDY/REPORT.md atomically (a reader never sees half a report) and return its path; an existing
    report is replaced only with `overwrite` (it may hold edits, or be a committed report)."""
    text = format_report(study_dir, weights_for_verdicts=weights_for_verdicts)  # first: missing runs say so
    target = Path(study_dir) / REPORT_NAME
    if target.exists() and not overwrite:
        raise InputError(f"{target} already exists; pass --overwrite to replace it")
    with atomic_path(target) as tmp:
        tmp.write_text(text)
    return target
