"""The training loop, readable top to bottom: config -> data -> model -> loop (loss, step, EMA, log, eval,
checkpoint) -> final checkpoint.

Randomness is a pure function of (seed, step): each step draws its batch, levels and noises from a generator
seeded by (seed, step). A resumed run therefore replays exactly what an uninterrupted run would have done,
and evaluation or diagnostics can never shift the training stream.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import random
import re
import secrets
import shutil
import fcntl
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ebmtool import __version__
from ebmtool.artifacts import (
    Checkpoint, atomic_path, code_version, environment, load_checkpoint, open_h5, provenance, save_checkpoint,
    sha256_file, write_h5,
)
from ebmtool.diffusion import cosine_schedule, energy_and_grad, impose_mask, noised
from ebmtool.devices import autocast, check_precision, resolve_device  # noqa: F401 (re-exported)
from ebmtool.errors import InputError, Interrupted, RunError
from ebmtool.evaluate import evaluate_model
from ebmtool.models import EnergyMLP, build_model
from ebmtool import curriculum as curriculum_mod
from ebmtool import sans as sans_mod
from ebmtool import distributed as dist
from ebmtool.negatives import (
    CLAMP_MODES, DISCRETE_CLAMP, NegativeBatch, NegativeSettings, _rep, draw_noise, generate, hnm_levels, renoise,
)
from ebmtool.compute import ComputeMeter
from ebmtool.discrete.negatives import CONNECTIVITY_NEGATIVES
from ebmtool.tasks import DISCRETE_TASK_NAMES, Task, resolve_task, split_user_data

RECIPES = {
    # A CPU budget that converges in a few minutes on 2 cores (8x8 inverse beats both trivial baselines).
    "cpu": {"size": 8, "steps": 1500, "batch_size": 256, "lr": 1e-3},
    # The published recipe: a GPU job.
    "paper": {"size": 20, "steps": 100_000, "batch_size": 2048, "lr": 1e-4},
}

# Fields that do not change what is computed, only when things are saved or shown; a resume may change them.
# (budget_of names the run a budget was read from; the budget itself, budget_flops, is part of the computation.)
CADENCE_FIELDS = ("steps", "log_every", "eval_every", "ckpt_every", "keep", "device", "val_size", "budget_of")
# Fields added after checkpoints existed: left out of the checksum at their default, so older checkpoints verify.
LATER_FIELDS = {"blocks": None, "precision": "fp32", "budget_flops": None, "budget_of": None, "init_steps": None,
                "connectivity_negative": None}
# Fields that follow from others (set by prepare), never compared as a user's choice.
DERIVED_FIELDS = ("curriculum_total", "init_sha256", "init_steps", "offline_negatives_sha256",
                  "offline_weights_sha256", "offline_mismatch")
NO_STEP_CAP = 10**9  # --steps of a budgeted run when none is given: the budget alone ends it


@dataclass
class TrainConfig:
    """Every field is read by the loop; the resolved config is stored in every checkpoint."""

    task: str = "inverse"
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
    neg_steps: int = 2
    neg_noise_scale: float = 3.0
    clamp_mode: str = "per-example"
    # Negatives. Source-specific fields are None unless their source is used; validate() fills in the
    # defaults of used sources (so the stored config is fully resolved) and rejects fields of unused ones.
    negatives: str = "ired"  # --negatives-from: SOURCE or SOURCE:FRACTION,... (one-stage curriculum)
    curriculum: str | None = None  # inline spec or preset; excludes a non-default --negatives-from
    curriculum_total: int | None = None  # run length the curriculum is laid out for (set at start; kept on resume)
    budget_flops: float | None = None  # train until the run's cumulative compute reaches this (--budget/--budget-of)
    budget_of: str | None = None  # the run whose compute became budget_flops (recorded, not recomputed)
    k: int = 1  # negatives per positive
    dup_threshold: float = 1e-3  # clean-space RMS(y_neg - y) at or below which a negative is a near-duplicate
    anm_steps: int | None = None
    anm_step_size: float | None = None
    anm_radius: float | None = None
    anm_noise: float | None = None
    hnm_candidates: int | None = None
    hnm_steps: int | None = None
    hnm_lambda: float | None = None
    gaussian_scale: float | None = None
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
    precision: str = "fp32"  # bf16: autocast on CUDA (ebmtool.devices)
    init: str | None = None
    init_sha256: str | None = None
    init_steps: int | None = None  # optimiser steps the --init checkpoint had trained (its own inherited ones too)
    connectivity_negative: str | None = None  # connectivity's reference negative form (set for that task only)
    # Offline negatives: a mined file used for a fraction of each batch, optional SANS weights from a file.
    offline_negatives: str | None = None
    offline_negatives_sha256: str | None = None
    offline_weights: str | None = None
    offline_weights_sha256: str | None = None
    offline_fraction: float | None = None  # default 0.5 with --negatives
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
        if self.clamp_mode not in CLAMP_MODES:
            raise InputError(f"--clamp-mode must be one of {', '.join(CLAMP_MODES)}")
        if self.on_nan not in ("stop", "skip"):
            raise InputError("--on-nan must be 'stop' or 'skip'")
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
                    raise InputError(f"--{'weights' if name == 'offline_weights' else 'negatives-fraction'} needs "
                                     "--negatives FILE")
            return
        if not self.supervise_energy:
            raise InputError("--negatives has no effect without energy supervision (--no-supervise-energy)")
        self.offline_fraction = 0.5 if self.offline_fraction is None else self.offline_fraction
        if not 0 < self.offline_fraction <= 1:
            raise InputError(f"--negatives-fraction must be in (0, 1], got {self.offline_fraction}")
        if self.offline_weights is not None and self.sans:
            raise InputError("--weights gives the offline negatives' weights; --sans weights online negatives "
                             "only and cannot be combined with it")

    def _validate_discrete(self):
        """The discrete tasks' ired source is the task's own negative, which takes no descent steps, noise scale or
        clamp: those flags are refused there instead of being accepted and ignored."""
        if self.task not in DISCRETE_TASK_NAMES:
            if self.connectivity_negative is not None:
                raise InputError("--connectivity-negative applies to the connectivity task only")
            return
        changed = [n for n in IRED_FIELDS if getattr(self, n) != MINING_FIELDS[n]]
        if changed:
            raise InputError(f"--{_flag(changed[0])} has no effect on {self.task}: its ired negative is the "
                             "task's own corruption of the answer, not an energy descent")
        if self.task == "connectivity":
            self.connectivity_negative = self.connectivity_negative or CONNECTIVITY_NEGATIVES[0]
            if self.connectivity_negative not in CONNECTIVITY_NEGATIVES:
                raise InputError(f"--connectivity-negative must be one of {', '.join(CONNECTIVITY_NEGATIVES)}")
        elif self.connectivity_negative is not None:
            raise InputError("--connectivity-negative applies to the connectivity task only")

    def _validate_negatives(self):
        """Every negative-mining field is used or rejected: fields of unused sources, SANS
        fields without --sans and any mining field without energy supervision are errors; used ones get defaults."""
        defaults = NegativeSettings()
        if not self.supervise_energy:
            changed = [n for n, d in MINING_FIELDS.items() if getattr(self, n) != d]
            if changed:
                raise InputError(f"--{_flag(changed[0])} has no effect without energy supervision "
                                 "(--no-supervise-energy): negatives are only used by the energy term")
            return
        if self.energy_weight == 0:
            raise InputError("--energy-weight 0 switches the energy term off while negatives are configured; "
                             "use --no-supervise-energy for that ablation")
        if self.curriculum and self.negatives != "ired":
            raise InputError("--curriculum and --negatives-from exclude each other: give the mix in the curriculum")
        stages = curriculum_mod.resolve(self.negatives, self.curriculum)
        used = curriculum_mod.sources_of(stages)
        if self.k < 1:
            raise InputError(f"--k must be at least 1, got {self.k}")
        if not (self.dup_threshold >= 0 and math.isfinite(self.dup_threshold)):
            raise InputError(f"--dup-threshold must be a non-negative number, got {self.dup_threshold}")
        for src, fields in SOURCE_FIELDS.items():
            for name in fields:
                if src in used:
                    if getattr(self, name) is None:
                        setattr(self, name, getattr(defaults, name))
                elif getattr(self, name) != MINING_FIELDS.get(name):
                    raise InputError(f"--{_flag(name)} is set but no negative source {src!r} is used "
                                     f"(sources: {', '.join(used)})")
        for name in ("anm_steps", "hnm_steps"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise InputError(f"--{_flag(name)} must be non-negative")
        if self.anm_steps == 0:
            raise InputError("--anm-steps 0 leaves ANM negatives where they start (a noisier ired source): give at "
                             "least 1 descent step")
        for name in ("anm_step_size", "anm_radius", "hnm_candidates", "gaussian_scale"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise InputError(f"--{_flag(name)} must be positive, got {getattr(self, name)}")
        if "ired" not in used:
            changed = [n for n in IRED_FIELDS if getattr(self, n) != MINING_FIELDS[n]]
            if changed:
                raise InputError(f"--{_flag(changed[0])} is a setting of the ired source, which is not used "
                                 f"(sources: {', '.join(used)})")
        if not self.sans:
            given = [n for n in SANS_FIELDS if getattr(self, n) is not None]
            if given:
                raise InputError(f"--{_flag(given[0])} is a SANS setting and needs --sans")
            return
        if self.k == 1:
            raise InputError("--sans with --k 1 weights one negative by a softmax over one value, which is always 1: "
                             "the run would equal the unweighted one; give --k 2 or more")
        self.alpha = sans_mod.DEFAULT_ALPHA if self.alpha is None else self.alpha
        self.alpha_schedule = self.alpha_schedule or "constant"
        self.sans_loss = self.sans_loss or "pairwise"
        if self.sans_loss not in sans_mod.LOSS_FORMS:
            raise InputError(f"--sans-loss must be one of {', '.join(sans_mod.LOSS_FORMS)}")
        if self.alpha_schedule not in sans_mod.ALPHA_SCHEDULES:
            raise InputError(f"--alpha-schedule must be one of {', '.join(sans_mod.ALPHA_SCHEDULES)}")
        if self.sans_loss == "logistic":
            self.margin = 9.0 if self.margin is None else self.margin  # PyKEEN's NSSALoss default
        elif self.margin is not None:
            raise InputError("--margin is only used by --sans-loss logistic")
        if self.alpha_schedule == "linear":
            self.alpha_floor = 0.1 if self.alpha_floor is None else self.alpha_floor
        elif self.alpha_floor is not None:
            raise InputError("--alpha-floor is only used by --alpha-schedule linear")
        if self.alpha < 0 or (self.alpha_floor or 0) < 0:
            raise InputError("--alpha and --alpha-floor must be non-negative (alpha is an inverse temperature)")

    def stages(self):
        return curriculum_mod.resolve(self.negatives, self.curriculum)

    def negative_settings(self, discrete: bool = False) -> NegativeSettings:
        """The sources' settings; discrete tasks keep negatives in +-1 and descend with multiplier 1."""
        d = NegativeSettings()
        return NegativeSettings(
            ired_steps=self.neg_steps, ired_noise=self.neg_noise_scale, clamp_mode=self.clamp_mode,
            **{n: getattr(self, n) if getattr(self, n) is not None else getattr(d, n)
               for fields in SOURCE_FIELDS.values() for n in fields},
            dup_threshold=self.dup_threshold, **({"clean_clamp": DISCRETE_CLAMP} if discrete else {}))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def checksum(self) -> str:
        """sha256 of the fields that determine the computation (PyKEEN-style resume guard)."""
        d = {k: v for k, v in self.to_dict().items()
             if k not in CADENCE_FIELDS and not (k in LATER_FIELDS and v == LATER_FIELDS[k])}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise InputError(f"checkpoint configuration has fields this ebmtool does not know: {sorted(unknown)}")
        return cls(**d)


# Fields of each source (besides ired's existing neg_steps, neg_noise_scale, clamp_mode).
SOURCE_FIELDS = {"anm": ("anm_steps", "anm_step_size", "anm_radius", "anm_noise"),
                 "hnm": ("hnm_candidates", "hnm_steps", "hnm_lambda"),
                 "gaussian": ("gaussian_scale",)}
# Every negative-mining field with its default: any other value without energy supervision is an error.
MINING_FIELDS = {"negatives": "ired", "curriculum": None, "k": 1, "dup_threshold": 1e-3, "neg_steps": 2,
                 "neg_noise_scale": 3.0, "clamp_mode": "per-example", "sans": False, "alpha": None,
                 "alpha_schedule": None, "alpha_floor": None, "sans_loss": None, "margin": None,
                 **{n: None for fs in SOURCE_FIELDS.values() for n in fs}}
IRED_FIELDS = ("neg_steps", "neg_noise_scale", "clamp_mode")
REFINING_SOURCES = ("anm", "hnm")  # sources whose negatives are refined by accepted/rejected descent steps
SANS_FIELDS = ("alpha", "alpha_schedule", "alpha_floor", "sans_loss", "margin")


def _flag(name: str) -> str:
    return {"negatives": "negatives-from"}.get(name, name.replace("_", "-"))


def step_generator(seed: int, step: int, purpose: int = 0) -> torch.Generator:
    """The generator of one training step: a pure function of (seed, step)."""
    state = np.random.SeedSequence(entropy=seed, spawn_key=(7, purpose, step)).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


# ------------------------------------------------------------------------------------------------ data

class TrainingData:
    """The training problems (a fixed, seeded set, or fresh draws per step) and the validation set."""

    def __init__(self, cfg: TrainConfig):
        task, user = resolve_task(cfg.task, cfg.size)
        self.task: Task = task
        if user is not None:
            self.train, self.val = split_user_data(user)
            self.val = self.val.subset(cfg.val_size) if cfg.val_size else self.val
        else:
            self.train = task.generate(cfg.train_size, "train", seed=cfg.seed) if cfg.train_size else None
            self.val = task.generate(cfg.val_size, "val") if cfg.val_size else None
        self.cfg = cfg
        if getattr(task, "discrete", False) and self.train is None:
            raise InputError(f"{task.name} needs a fixed training set (--train-size > 0): its puzzles are "
                             "generated once, not per step")
        if self.train is not None:
            self.fingerprint = self.train.fingerprint
        else:
            spec = json.dumps({"task": task.name, "size": task.size, "seed": cfg.seed, "online": True}, sort_keys=True)
            self.fingerprint = "online:" + hashlib.sha256(spec.encode()).hexdigest()

    def batch(self, step: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """The (x, y) batch of `step` (see batch_with_mask)."""
        return self.batch_with_mask(step, device)[:2]

    def batch_with_mask(self, step: int, device):
        """(x, y, mask or None) of `step`: a slice of the epoch's permutation (epoch order seeded by (seed, epoch))."""
        b, seed = self.cfg.batch_size, self.cfg.seed
        if self.train is not None:
            idx = self.batch_indices(step)
            mask = None if self.train.mask is None else torch.from_numpy(self.train.mask[idx]).to(device)
            return (torch.from_numpy(self.train.x[idx]).to(device), torch.from_numpy(self.train.y[idx]).to(device),
                    mask)
        else:
            rng = np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(1, 1, step)))
            from ebmtool.tasks import GENERATORS
            x, y = GENERATORS[self.task.name](rng, b, self.task.size, False)
            return (torch.from_numpy(x.astype(np.float32)).to(device),
                    torch.from_numpy(y.astype(np.float32)).to(device), None)

    def batch_indices(self, step: int) -> np.ndarray:
        """Rows of the fixed training set in the batch of `step`."""
        b, seed = self.cfg.batch_size, self.cfg.seed
        n = len(self.train)
        idx = []
        pos = step * b
        while len(idx) < b:
            epoch, off = divmod(pos, n)
            perm = torch.randperm(n, generator=step_generator(seed, epoch, purpose=1)).numpy()
            take = min(b - len(idx), n - off)
            idx.extend(perm[off:off + take])
            pos += take
        return np.asarray(idx)


# ------------------------------------------------------------------------------------------------ EMA

class EMA:
    """ema_pytorch's schedule with beta 0.995, update_every 10.

    Update call s (0-based): nothing unless s % every == 0; a plain copy while s <= start (100);
    then decay = min(beta, 1 - (1 + s - start - 1)^(-2/3)) and ema <- decay * ema + (1 - decay) * theta.
    """

    def __init__(self, model, beta=0.995, every=10, start=100):
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.beta, self.every, self.start = beta, every, start
        self.updates = 0

    @torch.no_grad()
    def update(self, model):
        s = self.updates
        self.updates += 1
        if s % self.every:
            return
        if s <= self.start:
            decay = 0.0
        else:
            decay = min(self.beta, 1 - (1 + s - self.start - 1) ** (-2 / 3))
        for e, p in zip(self.model.parameters(), model.parameters()):
            e.mul_(decay).add_(p.detach(), alpha=1 - decay)


# ------------------------------------------------------------------------------------------------ the loss

def ired_losses(model, x, y, t, gen, sched, cfg: TrainConfig, energy_weight: float, *, step: int = 0,
                neg_gen: torch.Generator | None = None, mask=None, task=None, offline=None,
                shard: Shard | None = None, progress: float | None = None) -> dict:
    """One IRED training objective. Every part is reduced to shape (B,) before use.

    Denoising: eps_hat = dE/dy at x_t (double backprop), per-example mean squared error against eps.
    Energy landscape: a fresh eps' shared by the positive and its K negatives; with the default configuration
    (ired, K = 1, no SANS) the loss is exactly the reference softplus(E+ - E-) (golden-tested).
    `neg_gen` supplies the negatives' extra randomness (source assignment, fresh starts) so that it never shifts
    the training stream `gen`; `step` selects the curriculum stage, or `progress` (the fraction of a compute
    budget spent) in a budgeted run. parts["diagnostics"] holds logged floats.

    shard (distributed training): x, y, t, mask are this process's rows of the global batch; eps and eps' are drawn
    for the whole batch and sliced. The parts are this process's rows, and loss_total is scaled so that the mean
    of the processes' loss_total (and of their gradients) is the one-process loss of the whole batch.
    """
    b = x.shape[0]
    eps = _standard_normal(y, gen, shard)
    x_t = impose_mask(sched, noised(sched, y, t, eps), t, x, mask)  # given entries <- sqrt(ab_t) x
    _, eps_hat = energy_and_grad(model, x, x_t, t, create_graph=True)
    if mask is not None:
        eps_hat = eps_hat * (1 - mask) + eps * mask  # given entries contribute zero loss
    sq = (eps_hat - eps) ** 2
    if task is not None and task.name == "shortest-path":
        sq = sq * torch.where(y > 0, 10.0, 0.5)  # element weights of the path task (the reference's)
    parts = {"loss_denoise": sq.mean(dim=1)}
    diag: dict[str, float] = {}
    included = None
    if cfg.supervise_energy:
        eps_shared = _standard_normal(y, gen, shard)
        if neg_gen is None:
            neg_gen = torch.Generator().manual_seed(gen.initial_seed() ^ 0x9E3779B97F4A7C15)
        energy_parts, diag, included = energy_term(model, x, y, t, eps_shared, sched, cfg, step, neg_gen,
                                                   mask=mask, task=task, offline=offline, shard=shard,
                                                   progress=progress)
        parts.update(energy_parts)
    for k, v in parts.items():
        assert v.shape == (b,), f"{k} has shape {tuple(v.shape)}, expected ({b},)"  # no (B,B,D) broadcasts (F10)
    total = parts["loss_denoise"].mean()
    if cfg.supervise_energy:
        le = parts["loss_energy"]
        # Examples whose K negatives were all near-duplicates are excluded from the energy term (counted).
        if shard is None or not dist.active():
            mean_e = le.mean() if bool(included.all()) else (le * included).sum() / included.sum().clamp_min(1)
        else:  # the global mean over included examples, times N: the processes' mean is the one-process term
            n_inc = dist.all_reduce_sum(included.sum().double().reshape(1).cpu())[0].item()
            mean_e = le.mean() if n_inc == shard.total else \
                (le * included).sum() * (dist.world_size() / max(n_inc, 1.0))
        parts["energy_term"] = energy_weight * mean_e
        total = total + parts["energy_term"]
    parts["loss_total"] = total
    parts["diagnostics"] = diag
    return parts


def _standard_normal(y, gen, shard: "Shard | None") -> torch.Tensor:
    """N(0, 1) noise of y's shape, drawn on the CPU from `gen` and moved to y's device. Under a shard it is drawn
    for the whole batch, as one process draws it, and this process keeps its rows."""
    if shard is None:
        return torch.randn(y.shape, generator=gen).to(y.device)
    return shard.rows(torch.randn((shard.total, y.shape[1]), generator=gen)).to(y.device)


def discrete_reference(task, y, mask, k, gen, connectivity_form: str | None = None) -> NegativeBatch:
    """The discrete tasks' reference negative (re-drawn cells, flipped entries, a re-drawn first step), which the
    `ired` source means for them; K independent draws per positive. Negatives identical to the positive are
    re-drawn by the task and counted as near-duplicates, so every negative is valid."""
    b, d = y.shape
    y_neg, redrawn = task.reference_negative(_rep(y, k), None if mask is None else _rep(mask, k), gen,
                                             connectivity_form or CONNECTIVITY_NEGATIVES[0])
    return NegativeBatch(y_neg.view(b, k, d), torch.ones(b, k, dtype=torch.bool, device=y.device), b * k,
                         int(redrawn))


@dataclass(frozen=True)
class Shard:
    """This process's rows [start, stop) of a global batch of `total` rows (distributed training).

    Every random draw of a step is made for the whole batch, exactly as one process makes it, and each process
    keeps its rows; `y` and `mask` are the global batch's, for the draws that depend on every row's data (the
    discrete tasks' reference negatives, which re-draw duplicates: cheap, no network call)."""

    start: int
    stop: int
    total: int
    y: torch.Tensor | None = None
    mask: torch.Tensor | None = None

    def rows(self, v: torch.Tensor) -> torch.Tensor:
        return v[self.start:self.stop]


def energy_term(model, x, y, t, eps, sched, cfg: TrainConfig, step: int, neg_gen: torch.Generator, *,
                mask=None, task=None, offline=None, shard: Shard | None = None, progress: float | None = None):
    """Negatives from the stage's sources (each example assigned one source; a loop over sources, never over
    examples), re-noised with the positive's eps, scored with the positives in ONE network call of B(1+K) rows,
    weighted (uniform, or SANS) and turned into a per-example loss. Returns (parts, diagnostics, included).

    offline = (OfflineNegatives, batch training indices): the first round(F * B) examples of the (already
    shuffled) batch that the file has take their clean negatives (and weights, if given) from the file; they are
    re-noised at this step's t with the positive's eps like every other negative.

    shard: x, y, t, eps, mask are this process's rows of the global batch; source assignment, offline rows and
    every negative draw are made for the global batch (as one process makes them) and sliced, and the logged
    diagnostics are computed on the rows gathered from all processes, so they equal a one-process run's."""
    b, d, k = y.shape[0], y.shape[1], cfg.k
    start, total = (0, b) if shard is None else (shard.start, shard.total)
    dev = x.device
    stages = cfg.stages()
    si = curriculum_mod.stage_at(stages, step, cfg.curriculum_total or cfg.steps) if progress is None else \
        curriculum_mod.stage_at_fraction(stages, progress)
    stage = stages[si]
    names = [n for n, _ in stage.mix]
    assign = curriculum_mod.assign(stage, total, neg_gen)  # global, on the CPU
    discrete = bool(getattr(task, "discrete", False))
    settings = cfg.negative_settings(discrete)
    y_neg = torch.empty(b, k, d, device=dev)
    valid = torch.empty(b, k, dtype=torch.bool, device=dev)
    level = torch.full((b, k), math.nan, device=dev) if "hnm" in names else None  # hnm's selected start level
    diag: dict[str, float] = {"stage": float(si), "k": float(k)}
    source_rows, seconds = {}, {}
    counts = torch.zeros(len(names), 4, dtype=torch.float64)  # candidates, duplicates, accepted, attempted steps
    off_pos = off_file = None
    online = torch.ones(total, dtype=torch.bool)
    if offline is not None:
        store, idx = offline
        pos_g, file_g = store.rows_for(idx, cfg.offline_fraction)
        online[pos_g] = False
        here = (pos_g >= start) & (pos_g < start + b)
        off_pos, off_file = (pos_g[here] - start).to(dev), file_g[here].to(dev)
        y_neg[off_pos] = store.y_neg[off_file].to(dev)
        valid[off_pos] = store.valid[off_file].to(dev)
        diag["offline_fraction"] = pos_g.numel() / total
    for j, name in enumerate(names):
        if len(names) == 1 and offline is None:
            rows_g = None  # every row of the batch
        else:
            rows_g = torch.nonzero((assign == j) & online).squeeze(1)
            if rows_g.numel() == 0:
                continue
        # pos: this process's rows among the source's (global) rows; loc: the same rows in this process's slice
        if rows_g is None:
            pos, loc = (None, None) if shard is None else (torch.arange(start, start + b), None)
        else:
            here = (rows_g >= start) & (rows_g < start + b)
            pos, loc = torch.nonzero(here).squeeze(1), (rows_g[here] - start).to(dev)
        source_rows[name] = rows_g
        t0 = time.perf_counter()
        if discrete and name == "ired":
            # no network call: drawn for all of the source's rows (duplicates are re-drawn, a data-dependent
            # number of draws), then sliced; the counts are global, so only the main process adds them
            yy, mm = (y, mask) if shard is None else (shard.y, shard.mask)
            if rows_g is not None:
                rg = rows_g.to(dev)
                yy, mm = yy[rg], None if mm is None else mm[rg]
            nb = discrete_reference(task, yy, mm, k, neg_gen, cfg.connectivity_negative)
            if dist.is_main():
                counts[j, :2] += torch.tensor([nb.candidates, nb.duplicates], dtype=torch.float64)
            if pos is not None:
                p = pos.to(dev)
                nb = NegativeBatch(nb.y_neg[p], nb.valid[p], 0, 0, nb.info)
        else:
            noise = draw_noise(name, total if rows_g is None else rows_g.numel(), k, d, settings, neg_gen)
            if pos is not None:
                noise = {key: v[pos] for key, v in noise.items()}
            if loc is not None and loc.numel() == 0:
                seconds[name] = time.perf_counter() - t0
                continue  # none of the source's rows is this process's (the draws were still made)
            sx, sy, st_, se, sm = (x, y, t, eps, mask) if loc is None else \
                (x[loc], y[loc], t[loc], eps[loc], None if mask is None else mask[loc])
            nb = generate(name, model, sx, sy, st_, se, sched, k, settings, neg_gen, mask=sm, noise=noise)
            counts[j] += torch.tensor([nb.candidates, nb.duplicates, float(nb.info.get("accepted", 0)),
                                       nb.info.get("attempted", 0)], dtype=torch.float64)
        seconds[name] = time.perf_counter() - t0
        if loc is None:
            y_neg, valid = nb.y_neg, nb.valid
        else:
            y_neg[loc], valid[loc] = nb.y_neg, nb.valid
        if level is not None and "level" in nb.info:
            if loc is None:
                level = nb.info["level"].float()
            else:
                level[loc] = nb.info["level"].float()
    x_pos = impose_mask(sched, noised(sched, y, t, eps), t, x, mask)
    x_neg = renoise(sched, y_neg, t, eps)  # the positive's own noise: they differ only in y
    if mask is not None:
        x_neg = impose_mask(sched, x_neg.reshape(b * k, d), _rep(t, k), _rep(x, k), _rep(mask, k)).view(b, k, d)
    xs = x if k == 1 else x.repeat_interleave(k, dim=0)
    ts = t if k == 1 else t.repeat_interleave(k, dim=0)
    e = model(torch.cat([x, xs]), torch.cat([x_pos, x_neg.reshape(b * k, d)]), torch.cat([t, ts]))
    e_pos, e_neg = e[:b], e[b:].view(b, k)
    included = valid.any(dim=1)
    if cfg.sans:
        alpha = sans_mod.alpha_at(t, cfg.alpha, cfg.alpha_schedule, cfg.alpha_floor or 0.0, sched.levels)
        w = sans_mod.weights(e_neg, alpha, valid)
        form = cfg.sans_loss
        diag["sans_alpha"] = float(alpha.mean()) if shard is None or not dist.active() else \
            float(dist.all_reduce_sum(alpha.double().sum().reshape(1).cpu())[0]) / total
    else:
        w = sans_mod.uniform_weights(valid)
        form = "pairwise"
    if off_pos is not None and store.weights is not None:
        w = w.clone()
        w[off_pos] = store.weights[off_file].to(dev)  # the file's weights replace uniform ones
    loss_e = sans_mod.loss(form, e_pos, e_neg, w, cfg.margin or 0.0)
    norm_ratio = (x_neg.norm(dim=2) / x_pos.norm(dim=1)[:, None].clamp_min(1e-12)).detach()
    e_neg_d = e_neg.detach()
    parts = {"loss_energy": loss_e, "energy_pos": e_pos.detach(), "energy_neg": (w * e_neg_d).sum(dim=1),
             "norm_ratio": (w * norm_ratio).sum(dim=1)}
    # diagnostics over the whole (global) batch: this process's rows, or every process's rows gathered
    g_pos, g_neg, g_ratio, g_valid, g_w, g_level = e_pos.detach(), e_neg_d, norm_ratio, valid, w.detach(), level
    if shard is not None and dist.active():
        cols = [g_pos[:, None], g_neg, g_ratio, g_valid, g_w] + ([g_level] if g_level is not None else [])
        packed = dist.all_gather_rows(torch.cat([c.double() for c in cols], dim=1))
        g_pos = packed[:, 0].float()
        g_neg, g_ratio, g_valid, g_w = (packed[:, 1 + i * k:1 + (i + 1) * k] for i in range(4))
        g_neg, g_ratio, g_valid, g_w = g_neg.float(), g_ratio.float(), g_valid > 0.5, g_w.float()
        g_level = packed[:, 1 + 4 * k:] if g_level is not None else None
        counts = dist.all_reduce_sum(counts)
    g_included = g_valid.any(dim=1)
    diag.update(_pair_stats(g_pos, g_neg, g_ratio, g_valid))
    diag.update(sans_mod.weight_stats(g_w, g_included))
    cand, dups = counts[:, 0].sum().item(), counts[:, 1].sum().item()
    diag.update(dup_fraction=dups / max(cand, 1), excluded_fraction=float((~g_included).float().mean()))
    for j, name in enumerate(names):
        if name not in source_rows:
            diag[f"source/{name}/fraction"] = 0.0
            continue
        rows = source_rows[name]
        diag[f"source/{name}/fraction"] = 1.0 if rows is None else rows.numel() / total
        diag[f"source/{name}/seconds"] = seconds[name]
        diag[f"source/{name}/dup_fraction"] = counts[j, 1].item() / max(counts[j, 0].item(), 1)
        if name in REFINING_SOURCES:
            diag[f"source/{name}/accept_fraction"] = counts[j, 2].item() / counts[j, 3].item() \
                if counts[j, 3] > 0 else math.nan
        sel = slice(None) if rows is None else rows.to(g_pos.device)
        for key, v in _pair_stats(g_pos[sel], g_neg[sel], g_ratio[sel], g_valid[sel]).items():
            diag[f"source/{name}/{key}"] = v
        if name == "hnm" and g_level is not None:
            lv = g_level[sel][g_valid[sel]]
            diag[f"source/{name}/selected_level"] = float(lv.mean()) if lv.numel() else math.nan
            for level in hnm_levels(cfg.hnm_candidates, sched.levels).unique().tolist():
                diag[f"source/hnm/selected_level_{level}"] = float((lv == level).float().mean()) \
                    if lv.numel() else math.nan
    for name in curriculum_mod.sources_of(stages):  # sources of other stages: configured and realised 0 here
        diag.setdefault(f"source/{name}/fraction", 0.0)
        diag[f"source/{name}/configured"] = stage.fractions().get(name, 0.0)
    return parts, diag, included


def _pair_stats(e_pos, e_neg, norm_ratio, valid) -> dict[str, float]:
    """Means over the valid (positive, negative) pairs: E+, E-, margin E- - E+, p_hard = P(E- < E+), the
    fraction with an active gradient (softplus slope sigmoid(E+ - E-) > 0.01), and |x-|/|x+|."""
    if not bool(valid.any()):
        return {k: math.nan for k in ("energy_pos", "energy_neg", "margin", "p_hard", "active_fraction",
                                      "norm_ratio")}
    ep = e_pos[:, None].expand_as(e_neg)[valid]
    en = e_neg[valid]
    return {"energy_pos": float(e_pos.mean()), "energy_neg": float(en.mean()), "margin": float((en - ep).mean()),
            "p_hard": float((en < ep).float().mean()),
            "active_fraction": float((torch.sigmoid(ep - en) > 0.01).float().mean()),
            "norm_ratio": float(norm_ratio[valid].mean())}


# ------------------------------------------------------------------------------------------------ state I/O

def _rng_meta() -> dict[str, str]:
    py = random.getstate()
    np_state = np.random.get_state()
    return {
        "ebmtool.rng_python": json.dumps([py[0], list(py[1]), py[2]]),
        "ebmtool.rng_numpy": json.dumps([np_state[0], np_state[1].tolist(), *[float(v) if isinstance(v, float)
                                                                              else int(v) for v in np_state[2:]]]),
    }


def _restore_rng(ckpt: Checkpoint):
    if "rng/torch_cpu" in ckpt.tensors:
        torch.set_rng_state(ckpt.tensors["rng/torch_cpu"])
    if "ebmtool.rng_python" in ckpt.meta:
        v, state, gauss = json.loads(ckpt.meta["ebmtool.rng_python"])
        random.setstate((v, tuple(state), gauss))
    if "ebmtool.rng_numpy" in ckpt.meta:
        name, keys, pos, has_gauss, cached = json.loads(ckpt.meta["ebmtool.rng_numpy"])
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def checkpoint_compute(ckpt: Checkpoint) -> float | None:
    """The cumulative training FLOPs a checkpoint records (None for checkpoints written before compute was
    counted)."""
    v = ckpt.meta.get("ebmtool.compute_flops")
    return None if v is None else float(json.loads(v))


def run_is_complete(ckpt: Checkpoint, cfg: TrainConfig) -> bool:
    """Whether a run's checkpoint has reached its end: its steps, or its compute budget."""
    if ckpt.step >= cfg.steps:
        return True
    return cfg.budget_flops is not None and (checkpoint_compute(ckpt) or 0.0) >= cfg.budget_flops


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


class RunLock:
    """An exclusive lock on a run directory while a process trains in it (flock: released if the process dies).

    A second process that tries to train in the same directory exits with one sentence naming the first's pid."""

    def __init__(self, out_dir: Path):
        self.path = Path(out_dir) / ".lock"
        self.fd: int | None = None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise InputError(f"{self.path.parent} is in use: process {holder} is training in it") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)  # closing releases the lock; the file stays (removing it would race a new holder)
            self.fd = None


class RunState:
    """Model, EMA, optimiser, step and metric rows: everything a checkpoint holds."""

    def __init__(self, cfg: TrainConfig, data: TrainingData, device):
        self.cfg, self.data, self.device = cfg, data, device
        torch.manual_seed(cfg.seed)  # initial weights come from the seed too
        if getattr(data.task, "discrete", False):  # the task's reference architecture; --width/--blocks scale it
            self.model = build_model(data.task.model_dims(cfg.width, cfg.blocks)).to(device)
        elif cfg.blocks is not None:
            raise InputError("--blocks applies to the discrete tasks' networks; the MLP has a fixed depth")
        else:
            self.model = EnergyMLP(data.task.x_dim, data.task.y_dim, cfg.width or 512, cfg.time_dim).to(device)
        self.ema = EMA(self.model, cfg.ema_beta, cfg.ema_every, cfg.ema_start)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
        self.step = 0
        self.compute = 0.0  # cumulative FLOPs (ebmtool.compute), inherited ones included
        self.rows: list[dict] = []
        self.eval_rows: list[dict] = []
        self.skipped = 0

    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {f"model/{k}": v for k, v in self.model.state_dict().items()}
        tensors.update({f"ema/{k}": v for k, v in self.ema.model.state_dict().items()})
        for i, st in self.opt.state_dict()["state"].items():
            for k, v in st.items():
                tensors[f"optim/{i}/{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
        tensors["rng/torch_cpu"] = torch.get_rng_state()
        return tensors

    def save(self, path: Path):
        cfg = self.cfg
        meta = {
            "ebmtool.version": __version__,
            "ebmtool.task": cfg.task if getattr(self.data.task, "path", "") else self.data.task.name,
            "ebmtool.task_size": json.dumps(None if getattr(self.data.task, "path", "") else self.data.task.size),
            "ebmtool.config": json.dumps(cfg.to_dict(), sort_keys=True),
            "ebmtool.config_sha256": cfg.checksum(),
            "ebmtool.model": json.dumps(self.model.dims, sort_keys=True),
            "ebmtool.step": str(self.step),
            "ebmtool.compute_flops": json.dumps(self.compute),
            "ebmtool.seed": str(cfg.seed),
            "ebmtool.data_fingerprint": self.data.fingerprint,
            "ebmtool.optim_groups": json.dumps(self.opt.state_dict()["param_groups"]),
            "ebmtool.ema_updates": str(self.ema.updates),
            "ebmtool.skipped_steps": str(self.skipped),
            "ebmtool.world_size": str(dist.world_size()),  # processes that trained the last steps (torchrun)
            "ebmtool.environment": json.dumps(environment(self.device), sort_keys=True),
            **{f"ebmtool.{k}": v for k, v in code_version().items() if k != "ebmtool_version"},
            **_rng_meta(),
        }
        save_checkpoint(path, self.checkpoint_tensors(), meta)

    def load(self, ckpt: Checkpoint, full: bool):
        """full=True: resume (everything); False: --init (weights only, as EMA too)."""
        try:
            self.model.load_state_dict(ckpt.group("model"), strict=True)
            if full:
                self.ema.model.load_state_dict(ckpt.group("ema"), strict=True)
            else:
                self.ema.model.load_state_dict(ckpt.group("model"), strict=True)
        except RuntimeError as exc:
            raise InputError(f"{ckpt.path}: weights do not fit this model ({str(exc).splitlines()[0]})") from None
        if not full:
            return
        groups = json.loads(ckpt.meta["ebmtool.optim_groups"])
        state = {}
        for k, v in ckpt.group("optim").items():
            i, name = k.split("/", 1)
            state.setdefault(int(i), {})[name] = v.to(self.device) if name != "step" else v
        self.opt.load_state_dict({"state": state, "param_groups": groups})
        self.ema.updates = int(ckpt.meta["ebmtool.ema_updates"])
        self.skipped = int(ckpt.meta.get("ebmtool.skipped_steps", "0"))
        self.step = ckpt.step
        self.compute = checkpoint_compute(ckpt) or 0.0
        _restore_rng(ckpt)


METRIC_COLUMNS = ("step", "loss_total", "loss_denoise", "loss_energy", "energy_pos", "energy_neg", "margin",
                  "p_hard", "norm_ratio", "grad_norm", "lr", "energy_weight", "skipped_steps", "step_seconds",
                  "wall_time", "compute_flops")
NEGATIVE_COLUMNS = ("stage", "k", "active_fraction", "dup_fraction", "excluded_fraction", "weight_entropy",
                    "weight_ess", "sans_alpha", "grad_share_energy")
SOURCE_COLUMNS = ("fraction", "configured", "energy_pos", "energy_neg", "margin", "p_hard", "active_fraction",
                  "dup_fraction", "norm_ratio", "seconds")


def metric_columns(cfg: TrainConfig) -> tuple[str, ...]:
    """Columns of metrics.h5 for this run: the core ones, the negatives' diagnostics, and per source
    `source/<name>/<metric>` for every source the run's curriculum uses."""
    if not cfg.supervise_energy:
        return METRIC_COLUMNS
    cols = list(METRIC_COLUMNS) + list(NEGATIVE_COLUMNS)
    if cfg.offline_negatives:
        cols.append("offline_fraction")
    for name in curriculum_mod.sources_of(cfg.stages()):
        cols += [f"source/{name}/{c}" for c in SOURCE_COLUMNS]
        if name in REFINING_SOURCES:
            cols.append(f"source/{name}/accept_fraction")
        if name == "hnm":
            cols.append("source/hnm/selected_level")
            levels = hnm_levels(cfg.hnm_candidates or NegativeSettings().hnm_candidates).unique().tolist()
            cols += [f"source/hnm/selected_level_{lv}" for lv in levels]
    return tuple(cols)
EVAL_COLUMNS = ("step", "metric_model", "metric_ema", "mse_model", "mse_ema", "mse_ref_scaled_model",
                "mse_ref_scaled_ema")


def write_metrics(path: Path, st: RunState):
    rows, erows = st.rows, st.eval_rows
    datasets = {c: np.asarray([r.get(c, np.nan) for r in rows], dtype=np.float64) for c in metric_columns(st.cfg)}
    datasets["step"] = datasets["step"].astype(np.int64)
    datasets.update({f"eval/{c}": np.asarray([r.get(c, np.nan) for r in erows], dtype=np.float64)
                     for c in EVAL_COLUMNS})
    datasets["eval/step"] = datasets["eval/step"].astype(np.int64)
    prov = provenance("train", st.cfg.to_dict(), data_fingerprint=st.data.fingerprint, device=st.device)
    write_h5(path, "metrics", datasets,
             {"task": st.data.task.label, "seed": st.cfg.seed, "step": st.step, "skipped_steps": st.skipped,
              "metric": st.data.task.metric, "higher_is_better": bool(st.data.task.higher_is_better),
              "world_size": dist.world_size()}, prov)


def read_metric_rows(path: Path, upto_step: int, columns=METRIC_COLUMNS) -> tuple[list[dict], list[dict]]:
    """Rows of an existing metrics.h5 up to a checkpoint's step (a resume continues the same curves).

    The file is read through the verified reader: a damaged metrics.h5 stops the resume with one sentence
    (never a silent restart of the curves).
    """
    if not path.exists():
        return [], []
    try:
        f = open_h5(path, "metrics")
    except InputError as exc:
        raise InputError(f"{exc}; move it away to resume without the earlier metric rows") from None
    with f:
        cols = [c for c in columns if c in f]
        rows = [dict(zip(cols, vals)) for vals in zip(*(f[c][()].tolist() for c in cols))]
        ecols = [c for c in EVAL_COLUMNS if f"eval/{c}" in f]
        erows = [dict(zip(ecols, vals)) for vals in zip(*(f[f"eval/{c}"][()].tolist() for c in ecols))]
    return [r for r in rows if r["step"] <= upto_step], [r for r in erows if r["step"] <= upto_step]


# ------------------------------------------------------------------------------------------------ snapshots

SNAPSHOT_RE = re.compile(r"^ckpt-step(\d+)\.safetensors$")


def snapshot_path(out_dir: Path, step: int) -> Path:
    return Path(out_dir) / f"ckpt-step{step:07d}.safetensors"


def write_snapshot(ckpt_path: Path, step: int, keep: int) -> list[Path]:
    """Copy the latest checkpoint to a step-numbered snapshot (atomically), then prune to the newest `keep`."""
    with atomic_path(snapshot_path(ckpt_path.parent, step)) as tmp:
        shutil.copyfile(ckpt_path, tmp)
    return prune_snapshots(ckpt_path.parent, keep, step)


def prune_snapshots(out_dir: Path, keep: int, upto_step: int) -> list[Path]:
    """Delete all but the newest `keep` snapshots at or before `upto_step`; returns the deleted paths.

    Snapshots after `upto_step` (left by a run that was later resumed from an earlier snapshot) are not touched.
    """
    found = []
    for p in Path(out_dir).iterdir():
        m = SNAPSHOT_RE.match(p.name)
        if m and int(m.group(1)) <= upto_step:
            found.append((int(m.group(1)), p))
    found.sort()
    doomed = [p for _, p in found[:max(0, len(found) - keep)]]
    for p in doomed:
        p.unlink()
    return doomed


# ------------------------------------------------------------------------------------------------ signals

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)  # SIGUSR1/2: Slurm's pre-timeout


class StopFlag:
    """STOP_SIGNALS set a flag; the loop finishes the current step, saves, and exits (128 + the signal number:
    130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self):
        self.signum = None
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in STOP_SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


# ------------------------------------------------------------------------------------------------ the loop

@dataclass
class TrainResult:
    out_dir: Path
    step: int
    seconds: float
    final_eval: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)


def prepare(cfg: TrainConfig, resume: Path | None = None,
            overrides: dict | None = None) -> tuple[TrainConfig, Checkpoint | None]:
    """Resolve the seed and, for a resume, take the configuration from the checkpoint.

    On resume only the cadence fields in `overrides` (steps, log/eval/checkpoint periods, device) may change.
    A budgeted run (budget_flops) lays its curriculum out over the budget, so it has no curriculum_total.
    """
    ckpt = None
    if resume is not None:
        ckpt = load_checkpoint(resume)
        stored = TrainConfig.from_dict(ckpt.config)
        if stored.checksum() != ckpt.meta.get("ebmtool.config_sha256"):
            raise InputError(f"{resume}: configuration checksum mismatch; the checkpoint was altered")
        bad = sorted(set(overrides or {}) - set(CADENCE_FIELDS))
        if bad:
            raise InputError(f"{bad[0]} cannot change on resume: a resumed run keeps its configuration")
        cfg = dataclasses.replace(stored, **(overrides or {}))
    elif cfg.init and cfg.init_steps is None:
        init = load_checkpoint(Path(cfg.init))  # total training shows in the config: the init's steps and its own
        cfg.init_steps = init.step + (json.loads(init.meta.get("ebmtool.config", "{}")).get("init_steps") or 0)
    if cfg.seed is None:
        cfg.seed = dist.broadcast_json(secrets.randbelow(2**31))  # one seed for every process
    if cfg.curriculum_total is None and cfg.supervise_energy and cfg.budget_flops is None:
        cfg.curriculum_total = cfg.steps  # fixed now, so a resume that extends --steps keeps the stage boundaries
    cfg.validate()
    check_world(cfg)
    return cfg, ckpt


def resume_overrides(stored: TrainConfig, given: dict) -> dict:
    """The cadence fields of `given` (flags repeated on --resume) that change; a non-cadence flag is accepted when
    it equals the run's own value and refused, by name, when it differs."""
    out = {}
    for name, value in given.items():
        if getattr(stored, name) == value:
            continue
        if name not in CADENCE_FIELDS:
            raise InputError(f"--{_flag(name)} cannot change on --resume (the run has {getattr(stored, name)}, "
                             f"given {value}): a resumed run keeps its configuration (start a new run with --init "
                             "to change it)")
        out[name] = value
    return out


def inherited_compute(cfg: TrainConfig) -> float:
    """Compute a new run starts with: its --init checkpoint's and the mining of its --negatives file, so a
    refined run is charged for everything that produced it."""
    total = 0.0
    if cfg.init:
        total += checkpoint_compute(load_checkpoint(Path(cfg.init))) or 0.0
    if cfg.offline_negatives:
        with open_h5(Path(cfg.offline_negatives), "negatives") as f:
            total += float(f.attrs.get("compute_flops", 0.0))
    return total


def check_world(cfg: TrainConfig) -> None:
    """Settings that cannot be split across processes are refused with one sentence (exit 2)."""
    n = dist.world_size()
    if n == 1:
        return
    if cfg.batch_size % n:
        lo, hi = (cfg.batch_size // n) * n, (cfg.batch_size // n + 1) * n
        raise InputError(f"--batch-size {cfg.batch_size} cannot be split across {n} processes: the global batch "
                         f"is divided evenly among them, so give a multiple of {n} (e.g. "
                         f"{hi if lo == 0 else f'{lo} or {hi}'})").on_every_process()
    if cfg.clamp_mode == "first-example":
        raise InputError("--clamp-mode first-example bounds the whole batch by its first example's level, which "
                         "only one process sees; train it with one process").on_every_process()


def train(cfg: TrainConfig, out_dir: Path, resume: Path | None = None, overrides: dict | None = None,
          log=print, force: bool = False) -> TrainResult:
    """Train (or resume) and write out_dir/ckpt.safetensors and out_dir/metrics.h5.

    For a resume, `cfg` is ignored: the checkpoint's configuration is used, with `overrides` (cadence only).

    Under torchrun (WORLD_SIZE > 1) every process runs this function: the global batch (--batch-size) is split
    evenly, gradients are averaged by one all-reduce per step, and process 0 alone logs and writes files (the
    others wait where it matters). The result equals a one-process run with the same seed and batch up to float
    reduction order. Every collective is reached by every process: decisions (a non-finite loss, a signal) are
    agreed through an all-reduced flag each step.
    """
    dist.init_from_env()
    main, world = dist.is_main(), dist.world_size()
    if not main:
        log = _quiet
    cfg, resume_ckpt = prepare(cfg, resume, overrides)
    out_dir = Path(out_dir)
    metrics_path = out_dir / "metrics.h5"
    device = resolve_device(cfg.device)
    check_precision(cfg.precision, device)
    data = TrainingData(cfg)
    sched = cosine_schedule().to(device)
    energy_weight = data.task.energy_weight if cfg.energy_weight is None else cfg.energy_weight
    st = RunState(cfg, data, device)
    meter = ComputeMeter(st.model, *data_dims(data))

    if resume_ckpt is not None:
        if resume_ckpt.meta.get("ebmtool.data_fingerprint") != data.fingerprint:
            raise InputError(f"{resume}: the training data differ from the data this checkpoint was trained on")
        st.load(resume_ckpt, full=True)
        if main:
            st.rows, st.eval_rows = read_metric_rows(metrics_path, st.step, metric_columns(cfg))
    elif cfg.init:
        init = load_checkpoint(Path(cfg.init))
        if init.dims != st.model.dims:
            raise InputError(f"{cfg.init}: its model ({init.dims}) does not match this run's ({st.model.dims})")
        st.load(init, full=False)
    if resume_ckpt is None:
        st.compute = inherited_compute(cfg)
    offline_store = None
    if cfg.offline_negatives:
        from ebmtool.mining import OfflineNegatives

        offline_store = OfflineNegatives.load(cfg, data, st.model.dims, force=force, log=log)

    until = f"steps {st.step} -> {cfg.steps}" if cfg.budget_flops is None else \
        f"step {st.step}, compute {st.compute:.3e} -> budget {cfg.budget_flops:.3e} FLOPs" + \
        (f" (at most {cfg.steps} steps)" if cfg.steps < NO_STEP_CAP else "")
    log(f"ebmtool {__version__} train: {data.task.label}, seed {cfg.seed}, device {device}, "
        f"{until}, output {out_dir}"
        + (f", {world} processes x {cfg.batch_size // world} examples (global batch {cfg.batch_size})"
           if world > 1 else ""))
    log("config " + json.dumps(cfg.to_dict(), sort_keys=True))
    if cfg.supervise_energy:
        total = cfg.curriculum_total or cfg.steps
        log("negatives " + "; ".join(
            (f"from step {round(s.start * total)}: " if cfg.budget_flops is None else
             f"from {s.start:.0%} of the budget: ") + " + ".join(f"{n} {f:g}" for n, f in s.mix)
            for s in cfg.stages()) + f"; K = {cfg.k}" + (f"; SANS {cfg.sans_loss}, alpha {cfg.alpha:g} "
                                                         f"({cfg.alpha_schedule})" if cfg.sans else ""))
    lock = RunLock(out_dir) if main else contextlib.nullcontext()
    with lock:
        return _train_loop(cfg, st, data, sched, meter, offline_store, energy_weight, out_dir, device, log)


def data_dims(data: TrainingData) -> tuple[int, int]:
    """(x_dim, y_dim) of the training problems (the FLOP rule of a non-MLP network needs one row's shape)."""
    p = data.train if data.train is not None else data.val
    if p is not None:
        return p.x.shape[1], p.y.shape[1]
    return data.task.x_dim, data.task.y_dim


def _train_loop(cfg, st, data, sched, meter, offline_store, energy_weight, out_dir, device, log) -> TrainResult:
    """The steps of `train`, under the run directory's lock."""
    main, world = dist.is_main(), dist.world_size()
    ckpt_path, metrics_path = out_dir / "ckpt.safetensors", out_dir / "metrics.h5"

    def evaluate_now():
        row = {"step": st.step}
        for name, m in (("model", st.model), ("ema", st.ema.model)):
            errs = evaluate_model(m, data.task, data.val, device=device, precision=cfg.precision)
            row[f"metric_{name}"] = float(errs[data.task.metric].mean())  # the task's primary metric
            if "mse" in errs:
                row[f"mse_{name}"] = float(errs["mse"].mean())
                row[f"mse_ref_scaled_{name}"] = float(errs["mse_ref_scaled"].mean())
        st.eval_rows = [r for r in st.eval_rows if r["step"] != st.step] + [row]
        return row

    def checkpoint(periodic: bool = False):
        """Process 0 writes; every process checks first that the model copies are identical (a collective)."""
        dist.check_replicas(st.model)
        if not main:
            return
        # metrics first: if the run dies between the two writes, the resume drops the rows past the checkpoint
        write_metrics(metrics_path, st)
        st.save(ckpt_path)
        if periodic and cfg.keep:
            write_snapshot(ckpt_path, st.step, cfg.keep)

    def non_finite(where: str) -> None:
        """--on-nan stop: raise (the last good checkpoint stays); skip: drop the batch, count it, move on.
        Every process calls it at the same step (the decision is all-reduced)."""
        if cfg.on_nan == "stop":
            bar.close()
            if main:
                write_metrics(metrics_path, st)  # the curve up to the fault; the checkpoint is untouched
            dist.barrier()  # nobody exits while process 0 writes (torchrun stops the others when one exits)
            kept = f"the last good checkpoint {ckpt_path} is kept" if ckpt_path.exists() else \
                "no checkpoint had been written yet"
            raise RunError(f"non-finite {where} at step {st.step}; training stopped and {kept} "
                           "(--on-nan skip drops such batches instead)").on_every_process()
        st.skipped += 1
        st.step += 1
        bar.update(1)

    def finished() -> bool:
        return st.step >= cfg.steps or (cfg.budget_flops is not None and st.compute >= cfg.budget_flops)

    t0 = time.perf_counter() - (st.rows[-1]["wall_time"] if st.rows else 0.0)
    window: list[dict] = []
    last_flops = 0.0
    bar = tqdm(total=cfg.steps if cfg.budget_flops is None else None, initial=st.step, desc="train",
               file=sys.stderr, disable=None if main else True, dynamic_ncols=True)
    with StopFlag() as stop:
        while not finished():
            step_start = time.perf_counter()
            gen = step_generator(cfg.seed, st.step)
            x, y, mask = data.batch_with_mask(st.step, device)
            t = torch.randint(0, sched.levels, (x.shape[0],), generator=gen).to(device)
            shard = None
            if world > 1:  # this process's rows; every draw of the step is made for the whole batch
                lo, hi = dist.row_range(cfg.batch_size)
                shard = Shard(lo, hi, cfg.batch_size, y=y, mask=mask)
                x, y, t, mask = x[lo:hi], y[lo:hi], t[lo:hi], None if mask is None else mask[lo:hi]
            offline = None if offline_store is None else (offline_store, data.batch_indices(st.step))
            progress = None if cfg.budget_flops is None else st.compute / cfg.budget_flops
            meter.start()
            with autocast(device, cfg.precision):
                parts = ired_losses(st.model, x, y, t, gen, sched, cfg, energy_weight, step=st.step,
                                    neg_gen=step_generator(cfg.seed, st.step, purpose=3), mask=mask,
                                    task=data.task, offline=offline, shard=shard, progress=progress)
            flops = meter.flops(denoise_rows=x.shape[0],
                                train_score_rows=x.shape[0] * (1 + cfg.k) if cfg.supervise_energy else 0)

            # one all-reduce agrees on everything this step decides: non-finite parts, a signal, the logged losses
            checks = [k for k in ("loss_denoise", "loss_energy", "energy_pos", "energy_neg") if k in parts]
            flags = [0.0 if torch.isfinite(parts[k]).all() else 1.0 for k in checks]
            flags.append(0.0 if torch.isfinite(parts["loss_total"]) else 1.0)
            signals = [float(stop.signum == sig) for sig in STOP_SIGNALS]
            losses = [parts["loss_total"].item(), parts["loss_denoise"].detach().mean().item(),
                      parts["loss_energy"].detach().mean().item() if "loss_energy" in parts else math.nan, flops]
            agreed = dist.all_reduce_sum(torch.tensor(flags + signals + losses, dtype=torch.float64)).tolist()
            nf, ns = len(flags), len(signals)
            bad = [k for k, f in zip(checks, agreed[:nf - 1]) if f > 0]
            if world > 1:
                raised = [sig for sig, f in zip(STOP_SIGNALS, agreed[nf:nf + ns]) if f > 0]
                signum = raised[-1] if raised else None
            st.compute += agreed[nf + ns + 3]  # every process's rows: the whole batch's work, charged once
            if bad or agreed[nf - 1] > 0:
                non_finite(bad[0] if bad else "loss_total")
            else:
                last_step = st.step + 1 == cfg.steps or (cfg.budget_flops is not None and
                                                          st.compute + last_flops >= cfg.budget_flops)
                last_flops = agreed[nf + ns + 3]
                logging_step = (st.step + 1) % cfg.log_every == 0 or last_step
                if logging_step and "energy_term" in parts:
                    parts["diagnostics"]["grad_share_energy"] = grad_share(st.model, parts)
                st.opt.zero_grad(set_to_none=True)
                parts["loss_total"].backward()
                dist.average_gradients(st.model.parameters())  # one flattened all-reduce (not DDP: see module)
                grad_norm = torch.nn.utils.clip_grad_norm_(st.model.parameters(), cfg.grad_clip)
                if not torch.isfinite(grad_norm):
                    non_finite("gradient norm")  # never step the optimiser on a non-finite gradient
                else:
                    st.opt.step()
                    st.ema.update(st.model)
                    st.step += 1
                    bar.update(1)
                    row = {"loss_total": agreed[nf + ns] / world, "loss_denoise": agreed[nf + ns + 1] / world,
                           "grad_norm": float(grad_norm), "step_seconds": time.perf_counter() - step_start}
                    if "loss_energy" in parts:
                        row["loss_energy"] = agreed[nf + ns + 2] / world
                    row.update(parts.get("diagnostics", {}))
                    window.append(row)

            if window and (st.step % cfg.log_every == 0 or finished()):
                keys = {k for w in window for k in w}
                row = {k: _nanmean([w.get(k, np.nan) for w in window]) for k in keys}
                row.update(step=st.step, lr=cfg.lr, energy_weight=energy_weight, skipped_steps=st.skipped,
                           wall_time=time.perf_counter() - t0, compute_flops=st.compute)
                if "stage" in window[-1]:
                    row["stage"] = window[-1]["stage"]  # the stage at the row's last step, not a mean
                st.rows.append(row)
                window = []
                bar.set_postfix({k: f"{row[k]:.3g}" for k in ("loss_denoise", "loss_energy", "p_hard", "stage",
                                                               "dup_fraction", "weight_ess", "grad_share_energy")
                                 if k in row and np.isfinite(row[k])}, refresh=False)
            if main and cfg.eval_every and st.step % cfg.eval_every == 0 and not finished() \
                    and data.val is not None:  # process 0 only; the others wait at the next collective
                row = evaluate_now()
                bar.write(f"step {st.step}: val {data.task.metric} {row['metric_model']:.4g} "
                          f"(ema {row['metric_ema']:.4g})", file=sys.stderr)
            if cfg.ckpt_every and st.step % cfg.ckpt_every == 0:
                checkpoint(periodic=True)
            if world == 1:
                signum = stop.signum  # one process: the flag as it stands at the end of the step
            if signum is not None:
                bar.close()
                checkpoint()
                dist.barrier()  # nobody exits while process 0 writes
                raise Interrupted(f"{signal.Signals(signum).name}: saved a resumable checkpoint at step {st.step} in "
                                  f"{ckpt_path}; continue with: ebmtool train --resume {ckpt_path}",
                                  128 + int(signum)).on_every_process()
    bar.close()
    final = {}
    if main and data.val is not None:
        final = {**evaluate_now(), "metric_name": data.task.metric}
    checkpoint()
    dist.barrier()  # the files exist before any process returns
    return TrainResult(out_dir, st.step, time.perf_counter() - t0, final, cfg.to_dict())


def _quiet(msg: str) -> None:
    """The log of processes other than 0 (process 0 speaks for the run)."""


def _nanmean(values) -> float:
    a = np.asarray(values, dtype=np.float64)
    return float(np.mean(a[np.isfinite(a)])) if np.isfinite(a).any() else float("nan")


def grad_share(model, parts) -> float:
    """||grad lambda*L_E|| / (||grad L_mse|| + ||grad lambda*L_E||), from two extra backward passes; called on
    logging steps only, so ordinary steps keep their cost. The graph is kept for the update."""
    params = [p for p in model.parameters() if p.requires_grad]

    def norm(loss):
        gs = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        gs = [torch.zeros_like(p) if g is None else g for g, p in zip(gs, params)]
        dist.average_(gs)  # several processes: the whole batch's gradient, as for the update
        return math.sqrt(sum(float(g.pow(2).sum()) for g in gs))

    g_mse, g_e = norm(parts["loss_denoise"].mean()), norm(parts["energy_term"])
    return g_e / (g_mse + g_e) if g_mse + g_e > 0 else float("nan")


def file_sha(path) -> str:
    return sha256_file(Path(path))
