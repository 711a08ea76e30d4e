"""The training configuration: every field, its validation (the only place it happens), the recipes, and the
declared field groups that resume and compare both read.

A resolved `TrainConfig` is stored in every checkpoint; its checksum (over the fields that change what is
computed) guards a resume against an altered or different configuration.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass

from ebmtool.method.compute import format_flops
from ebmtool.runtime.errors import InputError
from ebmtool.negatives import DUP_THRESHOLD, NegativeSettings, registry
from ebmtool.negatives import curriculum as curriculum_mod
from ebmtool.negatives import sans as sans_mod
from ebmtool.negatives.ired import CLAMP, NOISE, STEPS
from ebmtool.tasks.registry import DEFAULT_TASK, builtin_task

ON_NAN = ("stop", "skip")  # --on-nan: stop with the last good checkpoint kept, or drop the batch and go on

RECIPES = {
    # A CPU budget that converges in about 80 s on 2 cores (8x8 inverse beats both trivial baselines).
    "cpu": {"size": 8, "steps": 1500, "batch_size": 256, "lr": 1e-3},
    # The published recipe: a GPU job.
    "paper": {"size": 20, "steps": 100_000, "batch_size": 2048, "lr": 1e-4},
}

# Fields that do not change what is computed, only when things are saved or shown; a resume may change them.
# (budget_of names the run a budget was read from; the budget itself, budget_flops, is part of the computation.)
CADENCE_FIELDS = ("steps", "log_every", "eval_every", "ckpt_every", "keep", "device", "val_size", "budget_of")
# Fields that follow from others (set by prepare), never compared as a user's choice.
DERIVED_FIELDS = ("curriculum_total", "init_sha256", "init_steps", "offline_negatives_sha256",
                  "offline_weights_sha256", "offline_mismatch")
NO_STEP_CAP = 10**9  # --steps of a budgeted run when none is given: the budget alone ends it


@dataclass(frozen=True)
class LaterField:
    """A TrainConfig field added after checkpoints existed, which a checkpoint written before it lacks."""

    implied: object  # the value such a checkpoint was trained with: filled in on load, and left out of the
    # checksum at this value (so the checksum it was written with still verifies)
    added: str  # the change that added the field


# The one table of fields an older checkpoint may lack. A new TrainConfig field goes here too, with the value
# that reproduces what ebmtool computed before it existed; a checkpoint lacking a field that is not here is
# refused by name (TrainConfig.from_dict), never read as altered. tests/test_compat.py checks that every field
# the oldest fixture (ebmtool 0.1) lacks is listed.
LATER_FIELDS = {
    "blocks": LaterField(None, "--blocks for the discrete networks, 2026-11-22"),
    "precision": LaterField("fp32", "--precision bf16, 2026-11-28"),
    "budget_flops": LaterField(None, "--budget/--budget-of, 2026-12-01"),
    "budget_of": LaterField(None, "--budget/--budget-of, 2026-12-01"),
    "init_steps": LaterField(None, "compute counted across --init, 2026-12-01"),
    "connectivity_negative": LaterField(None, "--connectivity-negative, 2026-12-01"),
    "compile": LaterField(False, "--compile, 2026-12-02 (after ebmtool 0.1.0)"),
    "kappa_floor": LaterField(0.0, "--kappa-floor, 2026-12-06 (after ebmtool 0.1.0)"),
    "source_settings": LaterField(None, "settings of negative sources registered by plugins, 2026-12-06"),
}


def steps_text(config: dict) -> str:
    """A configuration's `steps` as shown to a reader: a budgeted run without a step cap trains until its budget,
    and NO_STEP_CAP is only how the configuration says so."""
    steps, budget = config.get("steps"), config.get("budget_flops")
    if budget is not None and isinstance(steps, int) and steps >= NO_STEP_CAP:
        return f"until the budget ({format_flops(budget)} FLOPs)"
    return str(steps)



@dataclass
class TrainConfig:
    """Every field is read by the loop; the resolved config is stored in every checkpoint."""

    task: str = DEFAULT_TASK
    size: int = 8
    recipe: str = "cpu"
    steps: int = 1500
    batch_size: int = 256
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    seed: int | None = None
    train_size: int = 12800  # fixed training problems generated from the seed; 0 = fresh draws every step
    supervise_energy: bool = True  # the energy-landscape term (full IRED); off only for ablations
    energy_weight: float | None = None  # None = the task's reference λ
    # The reference source's settings (ebmtool.negatives.ired), stored resolved whether it is used or not.
    neg_steps: int = STEPS.default
    neg_noise_scale: float = NOISE.default
    clamp_mode: str = CLAMP.default
    # Negatives. Source-specific fields are None unless their source is used; validate() fills in the
    # defaults of used sources (so the stored config is fully resolved) and rejects fields of unused ones.
    negatives: str = registry.reference().name  # --negatives-from: SOURCE or SOURCE:FRACTION,... (one-stage curriculum)
    curriculum: str | None = None  # inline spec or preset; excludes a non-default --negatives-from
    curriculum_total: int | None = None  # run length the curriculum is laid out for (set at start; kept on resume)
    budget_flops: float | None = None  # train until the run's cumulative compute reaches this (--budget/--budget-of)
    budget_of: str | None = None  # the run whose compute became budget_flops (recorded, not recomputed)
    k: int = 1  # negatives per positive
    dup_threshold: float = DUP_THRESHOLD  # clean-space RMS(y_neg - y) at or below which a negative is a near-duplicate
    kappa_floor: float = 0.0  # every negative kept at kappa >= this (ebmtool.negatives.floor_kappa); 0 = off
    anm_steps: int | None = None
    anm_step_size: float | None = None
    anm_radius: float | None = None
    anm_noise: float | None = None
    hnm_candidates: int | None = None
    hnm_steps: int | None = None
    hnm_lambda: float | None = None
    gaussian_scale: float | None = None
    # Settings of sources registered from outside the package (ebmtool.plugins), {setting: value}, filled in for
    # used sources as the fields above are; the built-in sources' settings are the fields above.
    source_settings: dict | None = None
    sans: bool = False
    alpha: float | None = None
    alpha_schedule: str | None = None
    alpha_floor: float | None = None
    sans_loss: str | None = None
    margin: float | None = None
    width: int | None = None  # None = the task's reference width (512 for the MLP)
    blocks: int | None = None  # discrete tasks: Sudoku residual blocks / connectivity layers (None = reference)
    time_dim: int = 128
    ema_beta: float = 0.995
    ema_every: int = 10
    ema_start: int = 100
    on_nan: str = "stop"
    log_every: int = 10
    eval_every: int = 500
    ckpt_every: int = 500
    keep: int = 0  # step-numbered snapshots kept beside ckpt.safetensors (the newest N; 0 = only the latest)
    val_size: int = 256
    device: str = "auto"
    precision: str = "fp32"  # bf16: autocast on CUDA (ebmtool.runtime.devices)
    compile: bool = False  # torch.compile the MLP's explicit input gradient (ebmtool.method.models.compile_explicit)
    init: str | None = None
    init_sha256: str | None = None
    init_steps: int | None = None  # optimiser steps the --init checkpoint had trained (its own inherited ones too)
    connectivity_negative: str | None = None  # connectivity's reference negative form (set for that task only)
    # Offline negatives: a mined file used for a fraction of each batch, optional SANS weights from a file.
    offline_negatives: str | None = None
    offline_negatives_sha256: str | None = None
    offline_weights: str | None = None
    offline_weights_sha256: str | None = None
    offline_fraction: float | None = None  # default 0.5 with --offline-negatives
    offline_mismatch: list | None = None  # provenance mismatches accepted with --force (recorded, never silent)

    def validate(self):
        for name in ("steps", "batch_size", "log_every", "ema_every"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("eval_every", "ckpt_every", "keep", "train_size", "neg_steps", "ema_start", "val_size"):
            if getattr(self, name) < 0:
                raise InputError(f"--{name.replace('_', '-')} must be non-negative, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise InputError(f"--lr must be a positive number, got {self.lr}")
        CLAMP.check(self.clamp_mode)
        if self.on_nan not in ON_NAN:
            raise InputError(f"--on-nan must be {' or '.join(repr(v) for v in ON_NAN)}")
        if self.blocks is not None and self.blocks < 1:
            raise InputError(f"--blocks must be at least 1, got {self.blocks}")
        if self.energy_weight is not None and self.energy_weight < 0:
            raise InputError(f"--energy-weight must be non-negative, got {self.energy_weight}")
        if self.train_size and 0 < self.train_size < self.batch_size:
            raise InputError(f"--train-size ({self.train_size}) must be at least the batch size ({self.batch_size})")
        if self.budget_flops is not None and not (self.budget_flops > 0 and math.isfinite(self.budget_flops)):
            raise InputError(f"--budget must be a positive number of FLOPs, got {self.budget_flops}")
        self._validate_discrete()
        self._validate_negatives()
        self._validate_offline()
        return self

    def _validate_offline(self):
        if self.offline_negatives is None:
            for name in ("offline_weights", "offline_fraction"):
                if getattr(self, name) is not None:
                    raise InputError(f"--{flag_name(name)} needs --offline-negatives FILE")
            return
        if not self.supervise_energy:
            raise InputError("--offline-negatives has no effect without energy supervision (--no-supervise-energy)")
        self.offline_fraction = 0.5 if self.offline_fraction is None else self.offline_fraction
        if not 0 < self.offline_fraction <= 1:
            raise InputError(f"--offline-fraction must be in (0, 1], got {self.offline_fraction}")
        if self.offline_weights is not None and self.sans:
            raise InputError("--offline-weights gives the offline negatives' weights; --sans weights online negatives "
                             "only and cannot be combined with it")

    def _validate_discrete(self):
        """The discrete tasks' ired source is the task's own negative, which takes no descent steps, noise scale or
        clamp: those flags are refused there instead of being accepted and ignored."""
        task = builtin_task(self.task)  # a data file is plain data: its ired source descends the energy
        if task is None or not task.reference_negative_source:
            if self.connectivity_negative is not None:
                raise InputError("--connectivity-negative applies to the connectivity task only")
            return
        changed = [n for n in reference_fields() if getattr(self, n) != mining_fields()[n]]
        if changed:
            raise InputError(f"--{flag_name(changed[0])} has no effect on {self.task}: its ired negative is the "
                             "task's own corruption of the answer, not an energy descent")
        if task.negative_forms:
            self.connectivity_negative = self.connectivity_negative or task.negative_forms[0]
            if self.connectivity_negative not in task.negative_forms:
                raise InputError(f"--connectivity-negative must be one of {', '.join(task.negative_forms)}")
        elif self.connectivity_negative is not None:
            raise InputError("--connectivity-negative applies to the connectivity task only")

    def _validate_negatives(self):
        """Every negative-mining field is used or rejected: fields of unused sources, SANS
        fields without --sans and any mining field without energy supervision are errors; used ones get defaults."""
        if not self.supervise_energy:
            changed = [n for n, d in mining_fields().items() if self.setting(n) != d]
            if changed:
                raise InputError(f"--{flag_name(changed[0])} has no effect without energy supervision "
                                 "(--no-supervise-energy): negatives are only used by the energy term")
            return
        if self.energy_weight == 0:
            raise InputError("--energy-weight 0 switches the energy term off while negatives are configured; "
                             "use --no-supervise-energy for that ablation")
        if self.curriculum and self.negatives != registry.reference().name:
            raise InputError("--curriculum and --negatives-from exclude each other: give the mix in the curriculum")
        stages = curriculum_mod.resolve(self.negatives, self.curriculum)
        used = curriculum_mod.sources_of(stages)
        if self.k < 1:
            raise InputError(f"--k must be at least 1, got {self.k}")
        if not (self.dup_threshold >= 0 and math.isfinite(self.dup_threshold)):
            raise InputError(f"--dup-threshold must be a non-negative number, got {self.dup_threshold}")
        if not (self.kappa_floor == 0 or (self.kappa_floor >= 1 and math.isfinite(self.kappa_floor))):
            raise InputError(f"--kappa-floor must be 0 (off) or at least 1 (a negative at least as far from the "
                             f"noisy answer as its positive), got {self.kappa_floor}")
        self._resolve_sources(used)
        if not self.sans:
            given = [n for n in SANS_FIELDS if getattr(self, n) is not None]
            if given:
                raise InputError(f"--{flag_name(given[0])} is a SANS setting and needs --sans")
            return
        if self.k == 1:
            raise InputError("--sans with --k 1 weights one negative by a softmax over one value, which is always 1: "
                             "the run would equal the unweighted one; give --k 2 or more")
        self.alpha = sans_mod.DEFAULT_ALPHA if self.alpha is None else self.alpha
        self.alpha_schedule = self.alpha_schedule or sans_mod.ALPHA_SCHEDULES[0]
        self.sans_loss = self.sans_loss or sans_mod.DEFAULT_LOSS
        if self.sans_loss not in sans_mod.LOSS_FORMS:
            raise InputError(f"--sans-loss must be one of {', '.join(sans_mod.LOSS_FORMS)}")
        if self.alpha_schedule not in sans_mod.ALPHA_SCHEDULES:
            raise InputError(f"--alpha-schedule must be one of {', '.join(sans_mod.ALPHA_SCHEDULES)}")
        if self.sans_loss == "logistic":
            self.margin = sans_mod.DEFAULT_MARGIN if self.margin is None else self.margin
        elif self.margin is not None:
            raise InputError("--margin is only used by --sans-loss logistic")
        if self.alpha_schedule == "linear":
            self.alpha_floor = sans_mod.DEFAULT_ALPHA_FLOOR if self.alpha_floor is None else self.alpha_floor
        elif self.alpha_floor is not None:
            raise InputError("--alpha-floor is only used by --alpha-schedule linear")
        if self.alpha < 0 or (self.alpha_floor or 0) < 0:
            raise InputError("--alpha and --alpha-floor must be non-negative (alpha is an inverse temperature)")

    def _resolve_sources(self, used: list[str]):
        """Settings of used sources get their defaults and are checked against their ranges; a setting of an
        unused source is an error naming it (the reference source's are stored resolved and refused when given)."""
        for src in registry.sources():
            for st in src.settings:
                if not st.training or src.reference:
                    continue
                if src.name in used:
                    if self.setting(st.name) is None:
                        self.set_setting(st.name, st.default)
                elif self.setting(st.name) != mining_fields().get(st.name):
                    raise InputError(f"--{flag_name(st.name)} is set but no negative source {src.name!r} is used "
                                     f"(sources: {', '.join(used)})")
        for src in registry.sources():
            for st in src.settings:
                if st.training and not src.reference and self.setting(st.name) is not None:
                    st.check(self.setting(st.name))
        for src in registry.sources():
            if src.check is not None and src.name in used:
                src.check(self.negative_settings())
        if registry.reference().name not in used:
            changed = [n for n in reference_fields() if getattr(self, n) != mining_fields()[n]]
            if changed:
                raise InputError(f"--{flag_name(changed[0])} is a setting of the "
                                 f"{registry.reference().name} source, which is not used "
                                 f"(sources: {', '.join(used)})")

    def setting(self, name: str):
        """A source setting's value: its field for the built-in sources, source_settings' entry for others."""
        if name in _FIELD_NAMES:
            return getattr(self, name)
        return (self.source_settings or {}).get(name)

    def set_setting(self, name: str, value) -> None:
        if name in _FIELD_NAMES:
            setattr(self, name, value)
        else:
            self.source_settings = {**(self.source_settings or {}), name: value}

    def stages(self):
        return curriculum_mod.resolve(self.negatives, self.curriculum)

    def negative_settings(self, clean_box: float | None = None) -> NegativeSettings:
        """The sources' settings; `clean_box` is the task's (Task.clean_box: discrete answers keep their negatives
        in +-1), None for the default clean-space clamp. An unset setting takes its declared default."""
        values = {st.name: self.setting(st.name) for src in registry.sources() for st in src.settings
                  if st.training and self.setting(st.name) is not None}
        return NegativeSettings(**values, dup_threshold=self.dup_threshold, kappa_floor=self.kappa_floor,
                                **({"clean_clamp": clean_box} if clean_box is not None else {}))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def checksum(self) -> str:
        """sha256 of the fields that determine the computation (PyKEEN-style resume guard)."""
        d = {k: v for k, v in self.to_dict().items()
             if k not in CADENCE_FIELDS and not (k in LATER_FIELDS and v == LATER_FIELDS[k].implied)}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()

    @classmethod
    def from_dict(cls, d: dict, where: str | None = None) -> "TrainConfig":
        """A stored configuration; fields it lacks take the value LATER_FIELDS says a checkpoint written before
        them implies. A lacking field without an entry there is refused by name (`where`: the file, for the
        message)."""
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = set(d) - set(known)
        if unknown:
            raise InputError(f"checkpoint configuration has fields this ebmtool does not know: {sorted(unknown)}")
        missing = [name for name in known if name not in d]
        unfilled = [name for name in missing if name not in LATER_FIELDS]
        if unfilled:
            raise InputError(f"{where + ': ' if where else ''}the checkpoint's configuration lacks "
                             f"{', '.join(unfilled)}, which this ebmtool has no value for in a checkpoint written "
                             "before the field existed (no entry in config.LATER_FIELDS)")
        return cls(**d, **{name: LATER_FIELDS[name].implied for name in missing})




_FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(TrainConfig))


def source_fields() -> dict[str, tuple[str, ...]]:
    """The settings of each registered source, unset (None) unless the source is used: every source but the
    reference (whose settings are always stored, `reference_fields`)."""
    return {src.name: tuple(st.name for st in src.settings if st.training)
            for src in registry.sources() if not src.reference}


def reference_fields() -> tuple[str, ...]:
    """The reference source's settings (ired's neg_steps, neg_noise_scale, clamp_mode): stored resolved."""
    return tuple(st.name for st in registry.reference().settings if st.training)


def mining_fields() -> dict:
    """Every negative-mining field with its default: any other value without energy supervision is an error."""
    return {"negatives": registry.reference().name, "curriculum": None, "k": 1, "dup_threshold": DUP_THRESHOLD,
            "kappa_floor": 0.0, **{n: getattr(TrainConfig, n) for n in reference_fields()},
            "sans": False, "alpha": None, "alpha_schedule": None, "alpha_floor": None, "sans_loss": None,
            "margin": None, **{n: None for fs in source_fields().values() for n in fs}}


def plugin_settings(given: dict) -> dict:
    """`given` (flags of the command line) with the settings of sources registered from outside the package
    gathered into source_settings (the built-in sources' settings are TrainConfig fields)."""
    out = {k: v for k, v in given.items() if k in _FIELD_NAMES}
    extra = {k: v for k, v in given.items() if k not in _FIELD_NAMES}
    unknown = [k for k in extra if registry.setting(k) is None]
    if unknown:
        raise InputError(f"--{flag_name(unknown[0])} is not a setting of ebmtool or of a registered negative source")
    if extra:
        out["source_settings"] = {**(out.get("source_settings") or {}), **extra}
    return out


SANS_FIELDS = ("alpha", "alpha_schedule", "alpha_floor", "sans_loss", "margin")


def flag_name(name: str) -> str:
    """The command-line flag of a config field (without the leading dashes)."""
    return {"negatives": "negatives-from"}.get(name, name.replace("_", "-"))


def check_given(given: dict) -> None:
    """Flags given on the command line that the run would ignore are refused even at their default value:
    a mining flag (--k 1 included) with --no-supervise-energy."""
    names = set(given) | set(given.get("source_settings") or {})
    mining = sorted(names & set(mining_fields()))
    if given.get("supervise_energy") is False and mining:
        raise InputError(f"--{flag_name(mining[0])} has no effect without energy supervision (--no-supervise-energy): "
                         "negatives are only used by the energy term")


def beside_defaults(config: dict) -> tuple[dict, dict]:
    """A stored configuration as people read it: (the fields that differ from TrainConfig's defaults, i.e. what was
    set or what the run resolved, such as its seed and a used source's settings; the fields at their defaults).
    Empty (None) fields are in neither: they belong to unused sources or mean "the task's own value"."""
    defaults = TrainConfig().to_dict()
    changed = {k: v for k, v in config.items() if v is not None and (k not in defaults or v != defaults[k])}
    kept = {k: v for k, v in config.items() if v is not None and k not in changed}
    return changed, kept


def format_settings(settings: dict, config: dict | None = None) -> str:
    """key=value pairs in key order (JSON values, so strings are quoted and lists readable); with the whole
    `config`, steps as steps_text shows them (a budgeted run's step cap is not a number of steps)."""
    def shown(k, v):
        text = steps_text(config) if k == "steps" and config is not None else str(v)
        return json.dumps(v) if text == str(v) else json.dumps(text)
    return " ".join(f"{k}={shown(k, v)}" for k, v in sorted(settings.items()))


def first_difference(stored: TrainConfig, new: TrainConfig) -> str | None:
    """The first field (in declaration order) in which two resolved configurations compute differently: cadence
    and derived fields do not count. None when they are the same run."""
    a, b = stored.to_dict(), new.to_dict()
    for name in a:
        if name in CADENCE_FIELDS or name in DERIVED_FIELDS:
            continue
        if a[name] != b[name]:
            return name
    return None



def resume_overrides(stored: TrainConfig, given: dict) -> dict:
    """The cadence fields of `given` (flags repeated on --resume) that change; a non-cadence flag is accepted when
    it equals the run's own value and refused, by name, when it differs."""
    out = {}
    for name, value in given.items():
        if getattr(stored, name) == value:
            continue
        if name not in CADENCE_FIELDS:
            raise InputError(f"--{flag_name(name)} cannot change on --resume (the run has {getattr(stored, name)}, "
                             f"given {value}): a resumed run keeps its configuration (start a new run with --init "
                             "to change it)")
        out[name] = value
    return out

