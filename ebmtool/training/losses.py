"""The IRED objective of one batch: the denoising term and the energy-landscape term.

Denoising: eps_hat = dE/dy at x_t (trained through the gradient: double backprop), per-example mean squared
error against eps. Energy landscape: a fresh eps' shared by the positive and its K negatives, scored in ONE
network call of B(1+K) rows, weighted (uniform, or SANS) and turned into a per-example loss. With the default
configuration (ired, K = 1, no SANS) the energy loss is exactly softplus(E+ - E-) (golden-tested).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch

from ebmtool.runtime import distributed as dist
from ebmtool.negatives import sans as sans_mod
from ebmtool.config import TrainConfig
from ebmtool.runtime.errors import RunError
from ebmtool.method.diffusion import Schedule, condition, energy_and_grad, impose_mask, noised, repeat_condition
from ebmtool.negatives import NegativeSettings, kappa, noise_to_signal, renoise, repeat_rows
from ebmtool.tasks.problems import Task
from ebmtool.training.diagnostics import energy_diagnostics, level_losses
from ebmtool.training.negatives import Shard, assemble


@dataclass
class Objective:
    """What the loss needs besides the batch, fixed for a run."""

    cfg: TrainConfig
    sched: Schedule
    task: Task | None = None  # None: a continuous task without element weights (tests, benchmarks)
    energy_weight: float = 0.5  # λ of the energy term
    offline: object | None = None  # ebmtool.offline.inputs.OfflineNegatives of --offline-negatives FILE
    settings: NegativeSettings = field(init=False)

    def __post_init__(self):
        self.settings = self.cfg.negative_settings(None if self.task is None else self.task.clean_box)


@dataclass
class Batch:
    """One step's inputs: this process's rows of the global batch, the levels, and the step's random streams."""

    x: torch.Tensor
    y: torch.Tensor
    t: torch.Tensor
    gen: torch.Generator  # the step's stream: eps, then the energy term's shared eps'
    neg_gen: torch.Generator | None = None  # the negatives' stream (None: derived from gen, for tests)
    mask: torch.Tensor | None = None
    step: int = 0  # selects the curriculum stage (or `progress`, the fraction of a compute budget spent)
    progress: float | None = None
    offline_rows: object | None = None  # training-set indices of the batch's rows (offline negatives)
    shard: Shard | None = None

    def __post_init__(self):
        if self.neg_gen is None:
            self.neg_gen = torch.Generator().manual_seed(self.gen.initial_seed() ^ 0x9E3779B97F4A7C15)


def standard_normal(y, gen, shard: Shard | None) -> torch.Tensor:
    """N(0, 1) noise of y's shape, drawn on the CPU from `gen` and moved to y's device. Under a shard it is drawn
    for the whole batch, as one process draws it, and this process keeps its rows."""
    if shard is None:
        return torch.randn(y.shape, generator=gen).to(y.device)
    return shard.rows(torch.randn((shard.total, y.shape[1]), generator=gen)).to(y.device)


# A per-example part whose non-finite values do not stop a step (a diagnostic) says so in its field's metadata.
DIAGNOSTIC_ONLY = {"checked": False}


@dataclass
class EnergyParts:
    """The energy-landscape term of each example: every field has shape (B,)."""

    loss_energy: torch.Tensor  # the per-example loss (softplus(E+ - E-) by default; the SANS form with --sans)
    energy_pos: torch.Tensor  # E+ (detached)
    energy_neg: torch.Tensor  # the weighted mean of E- over the K negatives (detached)
    norm_ratio: torch.Tensor = field(metadata=DIAGNOSTIC_ONLY)  # ||x-|| / ||x+||, weighted as E- is (detached)


@dataclass
class Losses:
    """What `ired_losses` returns: the losses, the per-example parts and the logged diagnostics."""

    loss_total: torch.Tensor  # 0-d: what the step back-propagates
    loss_denoise: torch.Tensor  # (B,)
    energy: EnergyParts | None  # None when the energy term is off (--no-supervise-energy)
    energy_term: torch.Tensor | None  # 0-d: λ times loss_energy's mean over included examples (None as energy)
    diagnostics: dict = field(default_factory=dict)  # logged values (0-d tensors or floats) by column name

    def __post_init__(self):
        if (self.energy is None) != (self.energy_term is None):
            raise ValueError("Losses takes both the energy parts and the energy term, or neither")

    def per_example(self, checked_only: bool = False) -> dict[str, torch.Tensor]:
        """The (B,) parts by name, loss_denoise first, then the energy term's fields when it is on. With
        `checked_only`, the parts whose non-finite values stop a step, in the order a fault names the first."""
        out = {"loss_denoise": self.loss_denoise}
        if self.energy is not None:
            out.update({f.name: getattr(self.energy, f.name) for f in fields(self.energy)
                        if not checked_only or f.metadata.get("checked", True)})
        return out


def check_shapes(parts: dict[str, torch.Tensor], rows: int) -> None:
    """Refuse a per-example part whose shape is not (rows,): a (B, B) or (B, K) broadcast would otherwise be
    averaged into a plausible loss. A check that stays under python -O (an assert would not)."""
    for name, v in parts.items():
        if tuple(v.shape) != (rows,):
            raise RunError(f"the objective's part {name} has shape {tuple(v.shape)} where ({rows},) was expected "
                           f"(one value per example of the batch's {rows} rows)")


def ired_losses(model, batch: Batch, obj: Objective) -> Losses:
    """The objective of one batch: the per-example parts (each of shape (B,), checked), loss_total (a scalar) and
    the diagnostics (logged values).

    Under a shard (distributed training) the parts are this process's rows, and loss_total is scaled so that the
    mean of the processes' loss_total (and of their gradients) is the one-process loss of the whole batch."""
    cfg, sched, x, y, t, mask = obj.cfg, obj.sched, batch.x, batch.y, batch.t, batch.mask
    b = x.shape[0]
    eps = standard_normal(y, batch.gen, batch.shard)
    x_t = impose_mask(sched, noised(sched, y, t, eps), t, x, mask)  # given entries <- sqrt(ab_t) x
    cond = condition(model, x, t)  # x's share of the first layer and t's FiLM rows: once, for the denoising and
    # the scoring call
    _, eps_hat = energy_and_grad(model, cond, x_t, t, create_graph=True)
    if mask is not None:
        eps_hat = eps_hat * (1 - mask) + eps * mask  # given entries contribute zero loss
    sq = (eps_hat - eps) ** 2
    weights = None if obj.task is None else obj.task.denoise_weights(y)
    if weights is not None:
        sq = sq * weights
    loss_denoise = sq.mean(dim=1)
    energy, diag, included = None, {}, None
    if cfg.supervise_energy:
        eps_shared = standard_normal(y, batch.gen, batch.shard)
        energy, diag, included = energy_term(model, batch, obj, eps_shared, cond)
    diag.update(level_losses(loss_denoise, t, sched.levels, batch.shard is not None))
    check_shapes({"loss_denoise": loss_denoise, **({} if energy is None else vars(energy))}, b)
    total, term = loss_denoise.mean(), None
    if energy is not None:
        term = obj.energy_weight * included_mean(energy.loss_energy, included, batch.shard)
        total = total + term
    return Losses(total, loss_denoise, energy, term, diag)


def included_mean(le: torch.Tensor, included: torch.Tensor, shard: Shard | None) -> torch.Tensor:
    """The energy loss's mean over examples with at least one valid negative (the others are excluded, and
    counted); under a shard, the global mean times N, so the processes' mean is the one-process term. Chosen on
    the device (no host round-trip): exactly le.mean() when every example is included."""
    if shard is None or not dist.active():
        return torch.where(included.all(), le.mean(), (le * included).sum() / included.sum().clamp_min(1))
    n_inc = dist.all_reduce_sum(included.sum().double().reshape(1).cpu())[0].item()
    return le.mean() if n_inc == shard.total else (le * included).sum() * (dist.world_size() / max(n_inc, 1.0))


def energy_term(model, batch: Batch, obj: Objective, eps: torch.Tensor, cond=None):
    """The energy-landscape loss per example: the batch's negatives (training.negatives.assemble), re-noised with
    the positive's eps so that the pair differs only in y, scored with the positives in one call, weighted and
    compared (`cond`: the batch's Condition, whose projection and level terms the scoring call reuses). Returns
    (EnergyParts, diagnostics, included)."""
    cfg, sched, x, y, t, mask = obj.cfg, obj.sched, batch.x, batch.y, batch.t, batch.mask
    b, d, k = y.shape[0], y.shape[1], cfg.k
    neg = assemble(model, batch, obj, eps)
    x_pos = impose_mask(sched, noised(sched, y, t, eps), t, x, mask)
    x_neg = renoise(sched, neg.y_neg, t, eps)  # the positive's own noise: they differ only in y
    if mask is not None:
        x_neg = impose_mask(sched, x_neg.reshape(b * k, d), repeat_rows(t, k), repeat_rows(x, k),
                            repeat_rows(mask, k)).view(b, k, d)
    ts = torch.cat([t, repeat_rows(t, k)])
    e = model(repeat_condition(x if cond is None else cond, k, keep_first=True, t=ts),
              torch.cat([x_pos, x_neg.reshape(b * k, d)]), ts)
    e_pos, e_neg = e[:b], e[b:].view(b, k)
    included = neg.valid.any(dim=1)
    if cfg.sans:
        alpha = sans_mod.alpha_at(t, cfg.alpha, cfg.alpha_schedule, cfg.alpha_floor or 0.0, sched.levels)
        w = sans_mod.weights(e_neg, alpha, neg.valid)
        form = cfg.sans_loss
        neg.diag["sans_alpha"] = alpha.mean() if batch.shard is None or not dist.active() else \
            dist.all_reduce_sum(alpha.double().sum().reshape(1))[0] / neg.total
    else:
        w = sans_mod.uniform_weights(neg.valid)
        form = "pairwise"
    if neg.offline_pos is not None and obj.offline.weights is not None:
        w = w.clone()
        w[neg.offline_pos] = obj.offline.weights[neg.offline_file].to(x.device)  # the file's weights replace uniform
    loss_e = sans_mod.loss(form, e_pos, e_neg, w, cfg.margin or 0.0)
    norm_ratio = (x_neg.norm(dim=2) / x_pos.norm(dim=1)[:, None].clamp_min(1e-12)).detach()
    kap = kappa(neg.y_neg, y, eps, noise_to_signal(sched, t), mask)
    e_neg_d = e_neg.detach()
    parts = EnergyParts(loss_e, e_pos.detach(), (w * e_neg_d).sum(dim=1), (w * norm_ratio).sum(dim=1))
    diag = energy_diagnostics(neg, e_pos.detach(), e_neg_d, norm_ratio, kap, w.detach(),
                              batch.shard is not None, obj.settings, sched.levels)
    return parts, diag, included
