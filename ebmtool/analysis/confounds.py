"""What differs between the arms of a comparison besides the seed: the configuration diff (declared, derived and
undeclared differences), training compute against the baseline's, and environment differences.
"""

from __future__ import annotations

import fnmatch
import json

import numpy as np

from ebmtool.method.compute import check_same_rule
from ebmtool.config import CADENCE_FIELDS, TrainConfig, source_fields, steps_text
from ebmtool.runtime.errors import InputError
from ebmtool.analysis.arms import Group, Run
from ebmtool.negatives import NegativeSettings

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
COMPUTE_KEY = "compute"  # `--vary compute`: a difference in compute is what the comparison is about
COMPUTE_TOLERANCE = 0.10  # matched compute: every arm within 10 % of the baseline's mean FLOPs


def _fmt_value(v) -> str:
    return "null" if v is None else str(v)


def unset_defaults() -> dict:
    """The value each negative-mining field takes when its source or mode is used and the user left it unset.

    A run that does not use a source stores None for its fields; filling in these values makes "unused" equal to
    "used with the default", so only a value the user set differently shows up as a difference. The values come
    from the training code itself (NegativeSettings, and TrainConfig.validate for SANS and offline negatives).
    """
    neg = NegativeSettings()
    sans = TrainConfig(sans=True, k=2).validate()
    return {**{n: getattr(neg, n) for fields in source_fields().values() for n in fields},
            "alpha": sans.alpha, "alpha_schedule": sans.alpha_schedule, "sans_loss": sans.sans_loss,
            "alpha_floor": TrainConfig(sans=True, k=2, alpha_schedule="linear").validate().alpha_floor,
            "margin": TrainConfig(sans=True, k=2, sans_loss="logistic").validate().margin,
            "offline_fraction": TrainConfig(offline_negatives="-").validate().offline_fraction}


def normalised_config(run: Run, defaults: dict) -> dict:
    """The run's configuration with unset negative-mining fields at their defaults, plus 'trained_steps'."""
    cfg = {**run.ckpt.config, "trained_steps": run.ckpt.step}
    cfg.update(cfg.pop("source_settings", None) or {})  # a plugin source's settings compare as the built-ins' do
    cfg["steps"] = steps_text(cfg)  # a budgeted run without a step cap: its budget, not the cap
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


def same_rule(runs: list[Run]) -> None:
    """Refuse (exit 2) runs whose compute was counted under different rule versions (ebmtool.method.compute): their
    FLOPs measure different things, so neither matching nor ratios would mean anything."""
    counted = [r for r in runs if r.compute_rule is not None]
    for r in counted[1:]:
        check_same_rule((f"{counted[0].name}'s compute", counted[0].compute_rule),
                        (f"{r.name}'s", r.compute_rule))


def compute_summary(groups: list[Group], baseline: str) -> dict:
    """Training FLOPs per run and arm, and each arm's mean over the baseline's mean.

    Runs counted under different rule versions are refused (`same_rule`). An arm's mean (and so its ratio) is
    None unless every run of the arm has compute metadata. "matched" is True
    when every arm has a ratio within COMPUTE_TOLERANCE of 1.
    """
    same_rule([r for g in groups for r in g.runs])
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
