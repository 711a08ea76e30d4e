"""`compare`: does a variant beat the baseline? Pure functions of frozen checkpoints, then statistics.

Every checkpoint is evaluated on the identical held-out problems (the task's fixed, seeded test split, or a user
data set) with the sampler's shared initial noise; nothing is trained and no optimiser is built.
Runs come in groups: a group is one arm, its members are seeds (replicates). A positional checkpoint is a group of
one. The first group is the baseline unless one is named.

Statistics (see ebmtool/analysis/stats.py):
- per run and per group: the task's declared primary metric with a seeded bootstrap interval over problems;
- per variant against the baseline, over problems (seed-averaged errors when a group has several seeds): mean
  paired difference with a bootstrap interval, the sign-flip permutation test (primary) and Wilcoxon (secondary),
  paired d_z;
- with >= 2 seeds in both groups: the across-seed test (paired t by seed when the seed sets match, else Welch);
  then the verdict rests on it, because seeds, not problems, are the replicates of a training run;
- Holm's correction over the variants' primary p-values, once; verdict from the signed interval and corrected p.
  Only a verdict that rests on the seeds speaks about the training method ("better", "worse"); one over problems
  (an arm of one seed) speaks about these checkpoints ("checkpoints differ", "no difference shown").

Also: the configuration diff of the runs (what differs, besides the seed, that the declared settings do not
explain), each arm's training compute (checkpoint metadata `ebmtool.compute_flops`) against the baseline's, energy
samples of positives and IRED negatives per run, and the training curves from each run's metrics.h5.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from ebmtool.analysis import stats as S
from ebmtool.io.checkpoints import Checkpoint
from ebmtool.io.artifacts import code_version, sha256_file
from ebmtool.runtime.errors import InputError, RunError
from ebmtool.analysis.arms import COMPUTE_META, Group, Run, check_compatible, load_groups
from ebmtool.analysis.confounds import compute_summary, config_diff, environment_warnings
from ebmtool.method.diffusion import cosine_schedule, energy, noised
from ebmtool.analysis.evaluate import DEFAULT_WEIGHTS, evaluate_model, evaluation_problems, load_model
from ebmtool.negatives import ired_negative
from ebmtool.runtime.progress import bar_log, progress_bar
from ebmtool.training.metrics import WHY_COLUMNS, read_metrics, tail_means
from ebmtool.training.state import ema_first_average

DIAGNOSTICS = ("loss_denoise", "p_hard", *WHY_COLUMNS)  # compare's training-diagnostics table: why an arm differs

DEFAULT_SEED = 20240614  # seed of `ebmtool compare`'s bootstrap and permutation draws when none is given
ENERGY_SAMPLE_SEED = 0  # t, noise and negatives of the energy histograms: the same for every model
CURVE_COLUMNS = ("loss_total", "loss_denoise", "loss_energy", "p_hard", "margin", "energy_pos", "energy_neg")


# ------------------------------------------------------------------------------------------------ evaluation

def energy_samples(model, ckpt: Checkpoint, task, problems, *, n: int = 256, seed: int = ENERGY_SAMPLE_SEED,
                   device="cpu") -> dict[str, np.ndarray]:
    """E+ and E- of one model on the first n problems: random t, shared noise, the IRED negative.

    t, the noise and everything random come from `seed`, so every model sees the same t and noise.
    """

    cfg = ckpt.config
    sched = cosine_schedule().to(device)
    m = min(n, len(problems))
    x = torch.from_numpy(problems.x[:m]).to(device)
    y = torch.from_numpy(problems.y[:m]).to(device)
    gen = torch.Generator().manual_seed(seed)
    t = torch.randint(0, sched.levels, (m,), generator=gen).to(device)
    eps = torch.randn(y.shape, generator=gen).to(device)
    def setting(key, default):  # a run without IRED negatives (e.g. ANM) stores None: probe with IRED's defaults
        v = cfg.get(key)
        return default if v is None else v

    y_neg = ired_negative(model, x, y, t, eps, sched, steps=int(setting("neg_steps", 2)),
                          noise_scale=float(setting("neg_noise_scale", 3.0)),
                          clamp_mode=setting("clamp_mode", "per-example"))
    e_pos = energy(model, x, noised(sched, y, t, eps), t)
    e_neg = energy(model, x, noised(sched, y_neg, t, eps), t)
    return {"t": t.cpu().numpy(), "e_pos": e_pos.cpu().numpy().astype(np.float64),
            "e_neg": e_neg.cpu().numpy().astype(np.float64)}


def read_curves(ckpt_path: Path) -> dict[str, np.ndarray] | None:
    """Training curves from the metrics.h5 beside a checkpoint: the columns that exist (None without a file).

    Besides CURVE_COLUMNS (and compute_flops, the cumulative compute at each row), any per-row column whose name holds 'p_hard' or 'margin' (per-source diagnostics) is
    read too; eval/step and eval/mse_ema give the validation curve.
    """
    path = Path(ckpt_path).parent / "metrics.h5"
    if not path.exists():
        return None
    columns, eval_columns = read_metrics(path)
    if "step" not in columns:
        return None
    steps = np.asarray(columns["step"])
    out: dict[str, np.ndarray] = {"step": steps}
    if "compute_flops" in columns and np.shape(columns["compute_flops"]) == steps.shape:
        out["compute_flops"] = np.asarray(columns["compute_flops"], dtype=np.float64)  # x of the compute figure
    for name, a in columns.items():
        base = name.rsplit("/", 1)[-1]
        wanted = name in CURVE_COLUMNS or "p_hard" in base or "margin" in base
        if name != "step" and wanted and a.ndim == 1 and a.shape[0] == steps.shape[0]:
            out[name] = np.asarray(a, dtype=np.float64)
    if "step" in eval_columns and "mse_ema" in eval_columns:
        out["eval/step"] = np.asarray(eval_columns["step"])
        out["eval/mse_ema"] = np.asarray(eval_columns["mse_ema"], dtype=np.float64)
    return out


def group_diagnostics(gs: list[Group]) -> dict[str, dict[str, float]]:
    """Per arm, the mean over its runs of each run's tail mean (last 10 % of logged rows) of DIAGNOSTICS, read
    from the metrics.h5 beside each checkpoint (runs without one left out; an arm without any: {})."""
    out = {}
    for g in gs:
        per_run = []
        for r in g.runs:
            path = Path(r.path).parent / "metrics.h5"
            if path.exists():
                per_run.append(tail_means(read_metrics(path)[0], DIAGNOSTICS))
        out[g.name] = {}
        for c in DIAGNOSTICS:
            v = np.array([d[c] for d in per_run if c in d], dtype=np.float64)
            if v.size:
                out[g.name][c] = float(v[np.isfinite(v)].mean()) if np.isfinite(v).any() else math.nan
    return out


def evaluate_groups(groups: list[Group], *, n: int = 1024, harder: bool = False, data=None,
                    weights: str = DEFAULT_WEIGHTS, batch_size: int = 256, device="cpu", energy_n: int = 256, log=None):
    """Evaluate every run on the baseline's held-out problems. Returns (task, problems, desc, errors, energies).

    errors[run.name] is the per-problem dict of `evaluate_model` ({"mse", "mse_ref_scaled"}).
    """

    runs = [r for g in groups for r in g.runs]
    task, problems, desc = evaluation_problems(runs[0].ckpt, data=data, harder=harder, n=n)
    if task.reference_negative_source:
        energy_n = 0  # the energy probe uses the continuous IRED negative; these tasks have their own
    errors, energies = {}, {}
    with progress_bar(len(runs), desc="compare", unit="checkpoint") as bar:
        say = bar_log(bar, log)
        for i, r in enumerate(runs):
            t0 = time.perf_counter()
            bar.set_postfix_str(r.name)
            model = load_model(r.ckpt, weights, device)
            errors[r.name] = evaluate_model(model, task, problems, batch_size=batch_size, device=device)
            if energy_n:
                energies[r.name] = energy_samples(model, r.ckpt, task, problems, n=energy_n, device=device)
            if say:
                say(f"[{i + 1}/{len(runs)}] {r.name}: {task.metric} {errors[r.name][task.metric].mean():.4g} "
                    f"({time.perf_counter() - t0:.1f} s)")
            bar.update()
    return task, problems, desc, errors, energies


# ------------------------------------------------------------------------------------------------ analysis

def metric_direction(task) -> str:
    """'lower' or 'higher': which way the task's declared primary metric improves (`Task.higher_is_better`)."""
    return "higher" if task.higher_is_better else "lower"


def identical_replicates(groups: list[Group], errors: dict[str, dict], metric: str) -> list[str]:
    """Messages for replicates that give identical per-problem results (inert seed, or a reused checkpoint)."""
    msgs = []
    for g in groups:
        for i, a in enumerate(g.runs):
            for b in g.runs[i + 1:]:
                if a.sha256 == b.sha256:
                    msgs.append(f"{a.name} and {b.name} are the same checkpoint file contents (sha256 "
                                f"{a.sha256[:12]}): a reused checkpoint is not a replicate")
                elif np.array_equal(errors[a.name][metric], errors[b.name][metric]):
                    msgs.append(f"{a.name} and {b.name} give identical {metric} on every problem: the seed "
                                "changed nothing (inert code?)")
    return msgs


STEP_RATIO_WARN = 2.0  # with EMA weights, arms whose step counts differ this much are warned about


def ema_warnings(groups: list[Group], weights: str) -> list[str]:
    """With EMA weights: runs whose EMA never averaged (their "EMA" is a copy of early raw weights), and step
    counts that differ STEP_RATIO_WARN-fold or more (the EMA lags each arm by a different share of its run). At
    matched compute an arm that costs more per step trains fewer steps; the raw weights have neither problem."""
    if weights != "ema":
        return []
    out = []
    for g in groups:
        never = []
        for r in g.runs:
            cfg, updates = r.ckpt.config, r.ckpt.meta.get("ebmtool.ema_updates")
            if updates is not None and "ema_every" in cfg and "ema_start" in cfg:
                first = ema_first_average(cfg["ema_every"], cfg["ema_start"])
                if int(updates) <= first:
                    never.append(r)
        if never:
            out.append(f"{g.name}: the EMA of {len(never)} of its {len(g.runs)} run(s) never averaged (they stopped "
                       f"at step {max(r.ckpt.step for r in never)} or before, the first average comes after step "
                       f"{first}): their EMA weights are a copy of early raw weights; compare raw weights "
                       "(--weights model, the default)")
    steps = {r.name: r.ckpt.step for g in groups for r in g.runs}
    low, high = min(steps.values()), max(steps.values())
    if low > 0 and high / low >= STEP_RATIO_WARN or low == 0 < high:
        out.append(f"the runs trained from {low} to {high} steps: the EMA lags each by a different share of its "
                   "run, which the comparison then measures too; raw weights (--weights model, the default) do "
                   "not lag")
    return out


def _finite(v):
    return v if isinstance(v, (int, float)) and math.isfinite(v) else None


CHECKPOINTS_DIFFER, NO_DIFFERENCE_SHOWN = "checkpoints differ", "no difference shown"
ONE_SEED_NOTE = ("one seed per arm: the verdict compares these checkpoints, not the training methods; train >= 2 "
                 "seeds per arm")


def comparison_verdict(primary: dict, basis: str, *, direction: str, alpha: float) -> str:
    """S.verdict, worded for what was tested: a method verdict only when it rests on the seeds (the replicates of
    a training run); over problems alone it can only say whether these checkpoints differ."""
    v = S.verdict(primary["ci_low"], primary["ci_high"], primary["p_holm"], direction=direction, alpha=alpha)
    if basis == "seeds":
        return v
    return NO_DIFFERENCE_SHOWN if v == S.NO_DIFFERENCE else CHECKPOINTS_DIFFER


def analyse(groups: list[Group], errors: dict[str, dict], metric: str, direction: str, *, baseline: str | None = None,
            confidence: float = 0.95, n_boot: int = 2000, n_perm: int = 10000, seed: int = 0,
            alpha: float | None = None) -> dict:
    """The statistics of a comparison from per-problem errors. No I/O; deterministic given `seed`."""
    alpha = 1 - confidence if alpha is None else alpha
    names = [g.name for g in groups]
    baseline = names[0] if baseline is None else baseline
    if baseline not in names:
        raise InputError(f"--baseline {baseline!r} is not one of the compared names: {', '.join(names)}")
    by_name = {g.name: g for g in groups}
    compute = compute_summary(groups, baseline)

    runs_out = []
    for g in groups:
        for r in g.runs:
            mean, lo, hi = S.bootstrap_mean_ci(errors[r.name][metric], confidence=confidence, n_boot=n_boot,
                                               seed=seed)
            runs_out.append({"name": r.name, "group": g.name, "path": str(r.path), "sha256": r.sha256,
                             "step": r.ckpt.step, "seed": r.seed, "compute_flops": r.compute_flops,
                             "compute_rule": r.compute_rule, "mean": mean,
                             "ci_low": lo, "ci_high": hi})

    group_err = {g.name: np.mean([errors[r.name][metric] for r in g.runs], axis=0) for g in groups}
    seed_means = {g.name: {r.seed: float(errors[r.name][metric].mean()) for r in g.runs} for g in groups}
    groups_out = []
    for g in groups:
        mean, lo, hi = S.bootstrap_mean_ci(group_err[g.name], confidence=confidence, n_boot=n_boot, seed=seed)
        per_seed = [float(errors[r.name][metric].mean()) for r in g.runs]
        sm, ssd = S.mean_sd(per_seed)
        groups_out.append({"name": g.name, "runs": [r.name for r in g.runs], "seeds": g.seeds,
                           "n_seeds": len(g.runs), "per_seed": per_seed, "seed_mean": sm, "seed_sd": ssd,
                           "mean": mean, "ci_low": lo, "ci_high": hi, **compute["groups"][g.name]})

    comps = []
    for g in groups:
        if g.name == baseline:
            continue
        pr = S.paired_comparison(group_err[baseline], group_err[g.name], direction=direction,
                                 confidence=confidence, n_boot=n_boot, n_perm=n_perm, seed=seed)
        c = {"variant": g.name, "baseline": baseline, "problems": pr.to_dict()}
        seed_dup = len(set(g.seeds)) < len(g.seeds) or len(set(by_name[baseline].seeds)) < len(by_name[baseline].seeds)
        across = {"test": None, "reason": "replicate seeds repeat"} if seed_dup else \
            S.across_seed_test(seed_means[baseline], seed_means[g.name], confidence=confidence)
        c["seeds"] = across
        if across.get("test"):
            c["basis"] = "seeds"
            c["primary"] = {"test": across["test"], "mean_diff": across["mean_diff"], "ci_low": across["ci_low"],
                            "ci_high": across["ci_high"], "p": across["p"]}
        else:
            c["basis"] = "problems"
            c["primary"] = {"test": S.PRIMARY_TEST + f" ({pr.p_method})", "mean_diff": pr.mean_diff,
                            "ci_low": pr.ci_low, "ci_high": pr.ci_high, "p": pr.p}
        comps.append(c)
    adjusted = S.holm([c["primary"]["p"] for c in comps])
    for c, p_adj in zip(comps, adjusted):
        c["primary"]["p_holm"] = p_adj
        c["verdict"] = comparison_verdict(c["primary"], c["basis"], direction=direction, alpha=alpha)
    notes = []
    if any(len(by_name[c["variant"]].runs) == 1 or len(by_name[baseline].runs) == 1 for c in comps):
        notes.append(ONE_SEED_NOTE)
    small = [g.name for g in groups if 1 < len(g.runs) < 5]
    if small:
        notes.append(f"fewer than 5 seeds in {', '.join(small)}: the across-seed test has little power")
    unknown = compute["unknown_runs"]
    if unknown:
        which = "every run" if len(unknown) == len(runs_out) else ", ".join(unknown)
        notes.append(f"compute is unknown for {which}: no {COMPUTE_META} in the checkpoint (written before "
                     "ebmtool recorded training FLOPs), so matched compute cannot be checked")
    return {"metric": metric, "direction": direction, "baseline": baseline, "confidence": confidence,
            "alpha": alpha, "bootstrap": n_boot, "permutations": n_perm, "seed": seed,
            "tests": {"problems": S.PRIMARY_TEST, "problems_secondary": S.SECONDARY_TEST,
                      "seeds_paired": S.SEED_TEST_PAIRED, "seeds_unpaired": S.SEED_TEST_WELCH,
                      "correction": "Holm over the variants' primary p-values (applied once)",
                      "effect_size": "paired d_z = mean(d) / sd(d) over problems"},
            "runs": runs_out, "groups": groups_out, "comparisons": comps, "notes": notes}


def compare(groups: list[tuple[str, list[Path]]], *, baseline: str | None = None, n: int = 1024,
            harder: bool = False, data=None, weights: str = DEFAULT_WEIGHTS, confidence: float = 0.95, n_boot: int = 2000,
            n_perm: int = 10000, seed: int = 0, batch_size: int = 256, device="cpu", declared=(),
            energy_n: int = 256, log=None) -> tuple[dict, dict]:
    """Load, check, evaluate and analyse. Returns (report, extras) where extras holds the arrays for plots."""
    gs = load_groups(groups)
    check_compatible(gs)
    if baseline is not None and baseline not in [g.name for g in gs]:
        raise InputError(f"--baseline {baseline!r} is not one of the compared names: "
                         f"{', '.join(g.name for g in gs)}")
    base = baseline or gs[0].name
    diff = config_diff(gs, base, tuple(declared))
    t0 = time.perf_counter()
    task, problems, desc, errors, energies = evaluate_groups(
        gs, n=n, harder=harder, data=data, weights=weights, batch_size=batch_size, device=device,
        energy_n=energy_n, log=log)
    eval_seconds = time.perf_counter() - t0
    for r in (r for g in gs for r in g.runs):
        if sha256_file(r.path) != r.sha256:
            raise RunError(f"{r.path} changed while it was being evaluated")
    metric = task.metric  # declared by the task, with its direction: no flag can choose another after the fact
    report = analyse(gs, errors, metric, metric_direction(task), baseline=base, confidence=confidence,
                     n_boot=n_boot, n_perm=n_perm, seed=seed)
    identical = identical_replicates(gs, errors, metric)
    shas: dict[str, Run] = {}
    reused = []
    for g in gs:
        for r in g.runs:
            first = shas.setdefault(r.sha256, r)
            if first.group != g.name:
                reused.append(f"{r.name} is the same checkpoint as {first.name} (sha256 {r.sha256[:12]}): "
                              "the two arms compare a model with itself")
    energy_summary = {}
    for name, e in energies.items():
        energy_summary[name] = {"mean_e_pos": float(e["e_pos"].mean()), "mean_e_neg": float(e["e_neg"].mean()),
                                "p_hard": float((e["e_neg"] < e["e_pos"]).mean()), "n": int(e["e_pos"].size)}
    trivial = {k: float(v.mean()) for k, v in task.baselines(problems).items()}
    report.update(code=code_version(),
                  settings={"n": n, "harder": harder, "data": None if data is None else str(data), "weights": weights,
                            "confidence": confidence, "bootstrap": n_boot, "permutations": n_perm, "seed": seed,
                            "baseline": base, "vary": list(declared), "energy_samples": energy_n,
                            "energy_sample_seed": ENERGY_SAMPLE_SEED},
                  task=task.label, problems=desc, n_problems=len(problems), weights=weights,
                  config_diff=diff, identical_replicates=identical, energies=energy_summary,
                  trivial_baselines=trivial, eval_seconds=eval_seconds,
                  warnings=list(diff["warnings"]) + environment_warnings(gs) + ema_warnings(gs, weights) + reused
                  + identical)
    report["diagnostics"] = group_diagnostics(gs)
    curves = {r.name: read_curves(r.path) for g in gs for r in g.runs}
    extras = {"groups": gs, "errors": errors, "energies": energies, "curves": curves, "problems": problems}
    return report, extras
