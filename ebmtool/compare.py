"""`compare`: does a variant beat the baseline? Pure functions of frozen checkpoints, then statistics.

Every checkpoint is evaluated on the identical held-out problems (the task's fixed, seeded test split, or a user
data set) with the sampler's shared initial noise; nothing is trained and no optimiser is built.
Runs come in groups: a group is one arm, its members are seeds (replicates). A positional checkpoint is a group of
one. The first group is the baseline unless one is named.

Statistics (see ebmtool/stats.py):
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

import fnmatch
import glob
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ebmtool import stats as S
from ebmtool.artifacts import Checkpoint, load_checkpoint, open_h5, resolve_checkpoint_path, sha256_file
from ebmtool.errors import InputError, RunError
from ebmtool.config import CADENCE_FIELDS, SOURCE_FIELDS, TrainConfig

# The training code's cadence fields, less `steps`: a resume may extend the steps of one run, but between runs the
# number of steps changes what is computed (unless compute is matched, see config_diff).
CADENCE_KEYS = tuple(k for k in CADENCE_FIELDS if k != "steps")
# Keys whose value follows from other keys or from the run itself: shown in the diff, never a confound.
DERIVED_KEYS = {
    "curriculum_total": "set to steps when a run starts (kept on resume)",
    "trained_steps": "the checkpoint's step: follows from steps",
    "budget_flops": "the compute budget steps were derived from; compute is checked from the runs' FLOPs",
    "budget_of": "names the run whose compute the budget copies: provenance of budget_flops",
    "init_sha256": "checksum of the --init file, which `init` names",
    "init_steps": "the steps the --init checkpoint had trained: shown so the diff gives total training",
    "offline_negatives_sha256": "checksum of the offline negatives file, which `offline_negatives` names",
    "offline_weights_sha256": "checksum of the offline weights file, which `offline_weights` names",
    "compute": "training compute, if a config stores it: checked on its own against COMPUTE_TOLERANCE",
}
REPLICATE_KEY = "seed"
DEFAULT_SEED = 20240614  # seed of `ebmtool compare`'s bootstrap and permutation draws when none is given
COMPUTE_META = "ebmtool.compute_flops"  # cumulative training FLOPs of the run (JSON number); older checkpoints lack it
COMPUTE_KEY = "compute"  # `--vary compute`: a difference in compute is what the comparison is about
COMPUTE_TOLERANCE = 0.10  # matched compute: every arm within 10 % of the baseline's mean FLOPs
ENERGY_SAMPLE_SEED = 0  # t, noise and negatives of the energy histograms: the same for every model
CURVE_COLUMNS = ("loss_total", "loss_denoise", "loss_energy", "p_hard", "margin", "energy_pos", "energy_neg")


@dataclass
class Run:
    name: str
    group: str
    path: Path
    ckpt: Checkpoint
    sha256: str

    @property
    def seed(self) -> int:
        return self.ckpt.seed

    @property
    def compute_flops(self) -> float | None:
        """Training FLOPs from the checkpoint's metadata; None for checkpoints written before it was recorded."""
        raw = self.ckpt.meta.get(COMPUTE_META)
        if raw is None:
            return None
        try:
            v = json.loads(raw)
        except ValueError:
            v = None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise InputError(f"{self.path}: metadata {COMPUTE_META} is {raw!r}, not a number of FLOPs")
        return float(v)


@dataclass
class Group:
    name: str
    runs: list[Run] = field(default_factory=list)

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]


# ------------------------------------------------------------------------------------------------ inputs

def expand_paths(spec) -> list[Path]:
    """Paths of one group: a list, or a comma-separated string of files, run directories and glob patterns."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[Path] = []
    for item in items:
        item = str(item).strip()
        if not item:
            continue
        if any(c in item for c in "*?["):
            matches = sorted(glob.glob(item))
            if not matches:
                raise InputError(f"{item}: the pattern matches no file or run directory")
            out.extend(Path(m) for m in matches)
        else:
            out.append(Path(item))
    return [resolve_checkpoint_path(p) for p in out]


def run_label(path: Path) -> str:
    """A short name for a checkpoint: its run directory (with its parent for `seed-N` directories), or its stem."""
    path = Path(path).absolute()
    if path.name != "ckpt.safetensors" or not path.parent.name:
        return path.stem
    run = path.parent
    if re.fullmatch(r"seed-\d+", run.name) and run.parent.name:
        return f"{run.parent.name}/{run.name}"
    return run.name


def named_arms(checkpoints, groups) -> list[tuple[str, list[Path]]]:
    """The arms of `ebmtool compare`: each positional checkpoint (or run directory) an arm of one, named by
    run_label (a repeated name gets '#2', '#3'), then the (NAME, PATHS-spec) groups, expanded."""
    arms: list[tuple[str, list[Path]]] = []
    for p in checkpoints:
        p = resolve_checkpoint_path(p)
        arms.append((run_label(p), [p]))
    arms += [(name, expand_paths(spec)) for name, spec in groups]
    names = [a for a, _ in arms]
    for i, name in enumerate(names):  # two positional checkpoints of the same run-directory name
        if names.count(name) > 1 and i != names.index(name):
            names[i] = f"{name}#{names[:i].count(name) + 1}"
    return [(nm, paths) for nm, (_, paths) in zip(names, arms)]


def load_groups(groups: list[tuple[str, list[Path]]]) -> list[Group]:
    """Load every checkpoint (validated) into named groups; names must be unique."""
    if not groups:
        raise InputError("nothing to compare: give checkpoints or --group NAME=PATHS")
    names = [g for g, _ in groups]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InputError(f"group name {dup[0]!r} is used twice; give each arm its own name")
    out = []
    for name, paths in groups:
        if not paths:
            raise InputError(f"group {name!r} has no checkpoints")
        g = Group(name)
        for p in paths:
            ckpt = load_checkpoint(p)
            g.runs.append(Run("", name, Path(p), ckpt, sha256_file(p)))
        seen: dict[str, int] = {}
        for r in g.runs:
            base = name if len(g.runs) == 1 else f"{name}/seed-{r.seed}"
            seen[base] = seen.get(base, 0) + 1
            r.name = base if seen[base] == 1 else f"{base}#{seen[base]}"
        out.append(g)
    if sum(len(g.runs) for g in out) < 2:
        raise InputError("compare needs at least two checkpoints")
    return out


def _task_identity(ckpt: Checkpoint) -> tuple:
    cfg = ckpt.config
    size = json.loads(ckpt.meta.get("ebmtool.task_size", "null"))  # the resolved size (None = a data file)
    return (ckpt.task, cfg.get("size") if size is None else size)


def check_compatible(groups: list[Group]) -> None:
    """Refuse checkpoints of different tasks or different model input/output sizes (exit 2)."""
    runs = [r for g in groups for r in g.runs]
    first = runs[0]
    for r in runs[1:]:
        if _task_identity(r.ckpt) != _task_identity(first.ckpt):
            a, b = _task_identity(first.ckpt), _task_identity(r.ckpt)
            raise InputError(f"{r.path} was trained on task {b[0]} (size {b[1]}) but {first.path} on {a[0]} "
                             f"(size {a[1]}); compare only checkpoints of one task")
        for k in ("x_dim", "y_dim"):
            if r.ckpt.dims.get(k) != first.ckpt.dims.get(k):
                raise InputError(f"{r.path}: model {k} {r.ckpt.dims.get(k)} differs from {first.path}'s "
                                 f"{first.ckpt.dims.get(k)}; the models do not answer the same problems")


# ------------------------------------------------------------------------------------------------ config diff

def _fmt_value(v) -> str:
    return "null" if v is None else str(v)


def unset_defaults() -> dict:
    """The value each negative-mining field takes when its source or mode is used and the user left it unset.

    A run that does not use a source stores None for its fields; filling in these values makes "unused" equal to
    "used with the default", so only a value the user set differently shows up as a difference. The values come
    from the training code itself (NegativeSettings, and TrainConfig.validate for SANS and offline negatives).
    """
    from ebmtool.negatives import NegativeSettings

    neg = NegativeSettings()
    sans = TrainConfig(sans=True, k=2).validate()
    return {**{n: getattr(neg, n) for fields in SOURCE_FIELDS.values() for n in fields},
            "alpha": sans.alpha, "alpha_schedule": sans.alpha_schedule, "sans_loss": sans.sans_loss,
            "alpha_floor": TrainConfig(sans=True, k=2, alpha_schedule="linear").validate().alpha_floor,
            "margin": TrainConfig(sans=True, k=2, sans_loss="logistic").validate().margin,
            "offline_fraction": TrainConfig(offline_negatives="-").validate().offline_fraction}


def normalised_config(run: Run, defaults: dict) -> dict:
    """The run's configuration with unset negative-mining fields at their defaults, plus 'trained_steps'."""
    cfg = {**run.ckpt.config, "trained_steps": run.ckpt.step}
    for key, value in defaults.items():
        if cfg.get(key) is None:
            cfg[key] = value
    return cfg


def environment_warnings(groups: list[Group]) -> list[str]:
    """Runs trained with other torch versions or on other devices: their differences are not only the method's
    (float results differ across releases and devices). Checkpoints without a recorded environment are skipped."""
    found: dict[str, dict[str, list[str]]] = {"torch version": {}, "device": {}}
    for g in groups:
        for r in g.runs:
            env = json.loads(r.ckpt.meta.get("ebmtool.environment", "null"))
            if env:
                found["torch version"].setdefault(env["versions"]["torch"], []).append(r.name)
                found["device"].setdefault(f"{env['device']} ({env['device_name']})", []).append(r.name)
    return [f"the runs were trained with different {what}s: " + "; ".join(f"{v} ({', '.join(names)})"
                                                                         for v, names in sorted(seen.items()))
            for what, seen in found.items() if len(seen) > 1]


def compute_summary(groups: list[Group], baseline: str) -> dict:
    """Training FLOPs per run and arm, and each arm's mean over the baseline's mean.

    An arm's mean (and so its ratio) is None unless every run of the arm has compute metadata. "matched" is True
    when every arm has a ratio within COMPUTE_TOLERANCE of 1.
    """
    per_run = {r.name: r.compute_flops for g in groups for r in g.runs}
    means = {g.name: (None if any(per_run[r.name] is None for r in g.runs)
                      else float(np.mean([per_run[r.name] for r in g.runs]))) for g in groups}
    base = means[baseline]
    out = {}
    for g in groups:
        m = means[g.name]
        ratio = m / base if m is not None and base else None
        out[g.name] = {"compute_flops": [per_run[r.name] for r in g.runs], "compute_flops_mean": m,
                       "compute_ratio": ratio}
    matched = all(v["compute_ratio"] is not None and abs(v["compute_ratio"] - 1) <= COMPUTE_TOLERANCE
                  for v in out.values())
    unknown = [n for n, v in per_run.items() if v is None]
    return {"groups": out, "matched": matched, "unknown_runs": unknown}


def config_diff(groups: list[Group], baseline: str, declared: tuple[str, ...] = ()) -> dict:
    """What differs between the runs' resolved configurations (checkpoint metadata), by group.

    Returns {"keys": {key: {group: value-or-'varies: ...'}}, "derived": [...], "compute_matched": bool,
    "cadence": {...}, "replicate_key": "seed", "warnings": [...]}. 'trained_steps' (the checkpoint's step) joins
    the configuration keys, so a run that stopped early is visible in the table.

    Only a value the user set differently is a confound: unset negative-mining fields are compared at their
    defaults (unset_defaults), and DERIVED_KEYS are shown but never warned about. When compute is matched (every
    arm within COMPUTE_TOLERANCE of the baseline's FLOPs), arms take different numbers of steps by design, so
    `steps` is not a confound between arms either. An arm whose compute is not matched is warned about unless
    `compute` is declared (--vary compute).
    """
    runs = [r for g in groups for r in g.runs]
    defaults = unset_defaults()
    cfgs = {r.name: normalised_config(r, defaults) for r in runs}
    keys = sorted(set().union(*cfgs.values()))
    compute = compute_summary(groups, baseline)

    def per_group(key):
        out = {}
        for g in groups:
            vals = sorted({_fmt_value(cfgs[r.name].get(key)) for r in g.runs})
            out[g.name] = vals[0] if len(vals) == 1 else "varies: " + ", ".join(vals)
        return out

    differing, cadence = {}, {}
    for key in keys:
        values = {_fmt_value(cfgs[n].get(key)) for n in cfgs}
        if len(values) < 2:
            continue
        if key in CADENCE_KEYS:
            cadence[key] = per_group(key)
        elif key != REPLICATE_KEY:
            differing[key] = per_group(key)
    warnings = []
    known = keys + [COMPUTE_KEY]
    unknown = [k for k in declared if not fnmatch.filter(known, k)]
    if unknown:
        raise InputError(f"--vary {unknown[0]}: no such configuration key (keys: {', '.join(known)})")

    def is_declared(key):
        return any(fnmatch.fnmatchcase(key, pattern) for pattern in declared)

    derived = [k for k in differing if k in DERIVED_KEYS]
    between = [k for k in differing if k not in DERIVED_KEYS and not (k == "steps" and compute["matched"])]
    for g in groups:
        # replicates must differ in their seed only
        within = [k for k in differing if k not in DERIVED_KEYS and differing[k][g.name].startswith("varies: ")]
        if within:
            warnings.append(f"the replicates of {g.name!r} differ in more than the seed: {', '.join(within)}")
        dup = sorted({s for s in g.seeds if g.seeds.count(s) > 1})
        if dup:
            warnings.append(f"group {g.name!r} holds seed {dup[0]} more than once; replicates need distinct seeds")
        if g.name == baseline:
            continue
        ratio = compute["groups"][g.name]["compute_ratio"]
        if ratio is not None and abs(ratio - 1) > COMPUTE_TOLERANCE and not is_declared(COMPUTE_KEY):
            warnings.append(f"arm {g.name} used {ratio:.2f}x the baseline's compute (matched-compute comparisons "
                            f"need a ratio within {COMPUTE_TOLERANCE * 100:g} %; declare an intended difference with "
                            "--vary compute)")
        vs = [k for k in between if differing[k][g.name] != differing[k][baseline]]
        extra = [k for k in vs if not is_declared(k)] if declared else (vs if len(vs) > 1 else [])
        if extra:
            what = f"settings beyond the declared {', '.join(declared)}" if declared else "more than one setting"
            warnings.append(f"{g.name!r} differs from the baseline {baseline!r} in {what}: {', '.join(extra)}; "
                            "the comparison confounds them")
        if not vs:
            warnings.append(f"{g.name!r} and the baseline {baseline!r} have the same configuration apart from "
                            "seeds, cadence and derived keys: any difference is between seeds only")
    seeds = {g.name: g.seeds for g in groups}
    return {"keys": differing, "derived": derived, "compute_matched": compute["matched"],
            "steps_follow_compute": "steps" in differing and compute["matched"], "cadence": cadence,
            "replicate_key": REPLICATE_KEY, "seeds": seeds, "declared": list(declared), "warnings": warnings}


# ------------------------------------------------------------------------------------------------ evaluation

def energy_samples(model, ckpt: Checkpoint, task, problems, *, n: int = 256, seed: int = ENERGY_SAMPLE_SEED,
                   device="cpu") -> dict[str, np.ndarray]:
    """E+ and E- of one model on the first n problems: random t, shared noise, the IRED negative.

    t, the noise and everything random come from `seed`, so every model sees the same t and noise.
    """
    from ebmtool.diffusion import cosine_schedule, energy, noised
    from ebmtool.negatives import ired_negative

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

    Besides CURVE_COLUMNS, any per-row column whose name holds 'p_hard' or 'margin' (per-source diagnostics) is
    read too; eval/step and eval/mse_ema give the validation curve.
    """
    path = Path(ckpt_path).parent / "metrics.h5"
    if not path.exists():
        return None
    out: dict[str, np.ndarray] = {}
    with open_h5(path, "metrics") as f:
        if "step" not in f:
            return None
        steps = np.asarray(f["step"][()])
        out["step"] = steps

        def visit(name, obj):
            if not hasattr(obj, "shape") or name == "step" or name.startswith("eval/"):
                return
            base = name.rsplit("/", 1)[-1]
            wanted = name in CURVE_COLUMNS or "p_hard" in base or "margin" in base
            if wanted and obj.ndim == 1 and obj.shape[0] == steps.shape[0]:
                out[name] = np.asarray(obj[()], dtype=np.float64)

        f.visititems(visit)
        if "eval/step" in f and "eval/mse_ema" in f:
            out["eval/step"] = np.asarray(f["eval/step"][()])
            out["eval/mse_ema"] = np.asarray(f["eval/mse_ema"][()], dtype=np.float64)
    return out


def evaluate_groups(groups: list[Group], *, n: int = 1024, harder: bool = False, data=None, weights: str = "ema",
                    batch_size: int = 256, device="cpu", energy_n: int = 256, log=None):
    """Evaluate every run on the baseline's held-out problems. Returns (task, problems, desc, errors, energies).

    errors[run.name] is the per-problem dict of `evaluate_model` ({"mse", "mse_ref_scaled"}).
    """
    from ebmtool.evaluate import evaluate_model, evaluation_problems, load_model
    from ebmtool.progress import bar_log, progress_bar

    runs = [r for g in groups for r in g.runs]
    task, problems, desc = evaluation_problems(runs[0].ckpt, data=data, split="test", harder=harder, n=n)
    if getattr(task, "discrete", False):
        energy_n = 0  # the energy probe uses the continuous IRED negative; discrete tasks have their own
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
                             "step": r.ckpt.step, "seed": r.seed, "compute_flops": r.compute_flops, "mean": mean,
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
            harder: bool = False, data=None, weights: str = "ema", confidence: float = 0.95, n_boot: int = 2000,
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
    from ebmtool.artifacts import code_version

    report.update(code=code_version(),
                  settings={"n": n, "harder": harder, "data": None if data is None else str(data), "weights": weights,
                            "confidence": confidence, "bootstrap": n_boot, "permutations": n_perm, "seed": seed,
                            "baseline": base, "vary": list(declared), "energy_samples": energy_n,
                            "energy_sample_seed": ENERGY_SAMPLE_SEED},
                  task=task.label, problems=desc, n_problems=len(problems), weights=weights,
                  config_diff=diff, identical_replicates=identical, energies=energy_summary,
                  trivial_baselines=trivial, eval_seconds=eval_seconds,
                  warnings=list(diff["warnings"]) + environment_warnings(gs) + reused + identical)
    curves = {r.name: read_curves(r.path) for g in gs for r in g.runs}
    extras = {"groups": gs, "errors": errors, "energies": energies, "curves": curves, "problems": problems}
    return report, extras


# ------------------------------------------------------------------------------------------------ formatting

def fmt_number(v, digits=4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def _ci(lo, hi) -> str:
    return f"[{fmt_number(lo)}, {fmt_number(hi)}]"


def fmt_p(p) -> str:
    if p is None or not math.isfinite(p):
        return "n/a"
    return f"{p:.2g}" if p >= 1e-4 else "<1e-4"


def _flops(v) -> str:
    """FLOPs in three significant digits, compactly: 31000000000000.0 -> '3.10e13'."""
    if v is None:
        return "n/a"
    mantissa, exponent = f"{v:.2e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _ratio(v) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def summary_lines(report: dict) -> dict[str, list[list[str]]]:
    """Rows of the three tables (config diff, per group, per comparison), shared by text and markdown."""
    pct = f"{round(report['confidence'] * 100)}%"
    cd = report["config_diff"]
    names = [g["name"] for g in report["groups"]]

    def label(k):
        if k in cd["derived"]:
            return f"{k} (derived)"
        return f"{k} (follows matched compute)" if k == "steps" and cd["steps_follow_compute"] else k

    diff_rows = [[label(k)] + [v[n] for n in names] for k, v in cd["keys"].items()]
    diff_rows += [[f"{k} (cadence only)"] + [v[n] for n in names] for k, v in cd["cadence"].items()]
    diff_rows.append(["seed (replicates)"] + [", ".join(map(str, cd["seeds"][n])) for n in names])
    group_rows = []
    for g in report["groups"]:
        spread = f"{fmt_number(g['seed_mean'])} ± {fmt_number(g['seed_sd'], 2)}" if g["n_seeds"] > 1 else "-"
        group_rows.append([g["name"] + (" (baseline)" if g["name"] == report["baseline"] else ""),
                           str(g["n_seeds"]), _flops(g["compute_flops_mean"]), _ratio(g["compute_ratio"]),
                           fmt_number(g["mean"]), _ci(g["ci_low"], g["ci_high"]), spread])
    comp_rows, verdict_rows = [], []
    for c in report["comparisons"]:
        pr, pm = c["problems"], c["primary"]
        label = f"{c['variant']} - {c['baseline']}"
        comp_rows.append([label, fmt_number(pr["mean_diff"]), _ci(pr["ci_low"], pr["ci_high"]), fmt_number(pr["relative_diff"], 3),
                          fmt_p(pr["p"]), fmt_p(pr["p_wilcoxon"]), fmt_number(pr["d_z"], 3),
                          f"{pr['n_variant_better']}/{pr['n_variant_worse']}/{pr['n_tied']}"])
        basis = "seeds (paired t)" if pm["test"] == S.SEED_TEST_PAIRED else \
            "seeds (Welch t)" if pm["test"] == S.SEED_TEST_WELCH else "problems (sign-flip)"
        verdict_rows.append([label, basis, fmt_number(pm["mean_diff"]), _ci(pm["ci_low"], pm["ci_high"]), fmt_p(pm["p"]),
                             fmt_p(pm["p_holm"]), c["verdict"].upper()])
    return {"diff": diff_rows, "diff_header": ["config key"] + names,
            "groups": group_rows,
            "groups_header": ["arm", "seeds", "compute", "x base", f"{report['metric']} (mean)",
                              f"{pct} CI (problems)", "per-seed mean ± SD"],
            "comps": comp_rows,
            "comps_header": ["paired over problems", "mean diff", f"{pct} CI", "relative", "p sign-flip",
                             "p Wilcoxon", "d_z", "better/worse/tied"],
            "verdicts": verdict_rows,
            "verdicts_header": ["variant - baseline", "basis", "mean diff", f"{pct} CI", "p", "p Holm", "verdict"]}


def md_table(rows, header) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def format_markdown(report: dict) -> str:
    rows = summary_lines(report)
    desc = report["problems"]
    where = desc.get("task", desc.get("data"))
    out = [f"# Comparison: {report['task']}", "",
           f"Primary metric **{report['metric']}** ({report['direction']} is better), declared by the task. "
           f"{report['n_problems']} held-out problems ({where}, {desc.get('split', '')}"
           f"{', harder' if desc.get('harder') else ''}; fingerprint `{desc.get('fingerprint', '')[:12]}`), "
           f"{report['weights']} weights. Baseline: **{report['baseline']}**.", "",
           "## Configuration differences", "", md_table(rows["diff"], rows["diff_header"]), "",
           "## Results", "", md_table(rows["groups"], rows["groups_header"]), ""]
    if rows["comps"]:
        out += [md_table(rows["comps"], rows["comps_header"]), "", md_table(rows["verdicts"], rows["verdicts_header"]),
                ""]
    out += [f"Differences are variant − baseline. Problem-level test: {report['tests']['problems']} (Wilcoxon "
            f"signed-rank shown as a check). Across seeds: {report['tests']['seeds_paired']}, or "
            f"{report['tests']['seeds_unpaired']}. {report['tests']['correction']}. Bootstrap: "
            f"{report['bootstrap']} resamples, seed {report['seed']}; alpha {report['alpha']:.3g}. Compute is "
            "training FLOPs (mean over the arm's runs); x base is its ratio to the baseline arm's.", "",
            "Trivial predictors: " + ", ".join(f"{k} {fmt_number(v)}" for k, v in report["trivial_baselines"].items()),
            "", "## Runs", "",
            md_table([[r["name"], r["path"], str(r["step"]), str(r["seed"]), _flops(r["compute_flops"]),
                        fmt_number(r["mean"]), _ci(r["ci_low"], r["ci_high"]), r["sha256"][:12]] for r in report["runs"]],
                      ["run", "checkpoint", "step", "seed", "compute", report["metric"], "CI", "sha256"])]
    if report["energies"]:
        out += ["", "Energies of positives and IRED negatives (same t and noise for every model):", "",
                md_table([[k, fmt_number(v["mean_e_pos"]), fmt_number(v["mean_e_neg"]), fmt_number(v["p_hard"], 3)]
                           for k, v in report["energies"].items()], ["run", "mean E+", "mean E-", "p_hard"])]
    if report["notes"] or report["warnings"]:
        out += [""] + [f"- note: {n}" for n in report["notes"]] + [f"- **WARNING:** {w}" for w in report["warnings"]]
    return "\n".join(out) + "\n"
