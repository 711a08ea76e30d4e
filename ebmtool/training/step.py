"""One training step as a public function: `batch = draw_batch(state, step)`, then `train_step(state, batch)`.

Benchmarks and tests call these rather than re-implementing a step. Every decision a step makes (a non-finite
loss, a stop signal) is agreed by all processes through one all-reduce of an `Agreement`, so every process
reaches every collective.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ebmtool.runtime import distributed as dist
from ebmtool.runtime import rng
from ebmtool.runtime.devices import autocast
from ebmtool.training.diagnostics import backward_terms
from ebmtool.training.losses import Batch, Losses, ired_losses
from ebmtool.training.negatives import Shard
from ebmtool.training.signals import STOP_SIGNALS
from ebmtool.training.state import RunState

LOSSES = ("loss_total", "loss_denoise", "loss_energy")  # the agreed (summed) losses of a step, when present
FAULT_LAST = ("loss_total", "gradient norm")  # non-finite checks after the per-example parts, in the order named


@dataclass
class Agreement:
    """What every process must decide alike at a step, summed over the processes by one all-reduce. Every value
    has a name (`named`), and the all-reduce combines them by name (distributed.all_reduce_named), so a part or
    loss added here cannot land in another's place."""

    non_finite: dict[str, float]  # per checked part present, then loss_total and the gradient norm (the order a
    # fault is named in): > 0 where some process saw a non-finite value
    signals: dict[str, float]  # per STOP_SIGNALS, by name: > 0 where some process received it
    losses: dict[str, float]  # LOSSES present at this step (loss_energy only with the energy term): sums
    grad_norm: float  # the clipped update's gradient norm (of the averaged gradient: alike on every process)
    flops: float  # the step's counted work, summed: the whole batch's, charged once

    @classmethod
    def of(cls, parts: Losses, grad_norm: torch.Tensor, signum: int | None, flops: float) -> "Agreement":
        """This process's view. The flags, losses and gradient norm are read from the device in one transfer:
        the step's only host round-trip outside logged rows."""
        checked = parts.per_example(checked_only=True)
        flags = {k: ~torch.isfinite(v).all() for k, v in checked.items()}
        flags.update(zip(FAULT_LAST, (~torch.isfinite(parts.loss_total), ~torch.isfinite(grad_norm))))
        values = {"loss_total": parts.loss_total, **parts.per_example()}
        losses = {k: values[k].detach().mean() for k in LOSSES if k in values}
        dev = [*flags.values(), *losses.values(), grad_norm.detach()]
        host = torch.stack([v.double() for v in dev]).cpu().tolist()
        return cls(dict(zip(flags, host)), {s.name: float(signum == s) for s in STOP_SIGNALS},
                   dict(zip(losses, host[len(flags):])), host[-1], flops)

    def named(self) -> dict[str, float]:
        """The values the processes sum, each under its own name."""
        return {**{f"non_finite/{k}": v for k, v in self.non_finite.items()},
                **{f"signal/{k}": v for k, v in self.signals.items()},
                **{f"loss/{k}": v for k, v in self.losses.items()}, "flops": self.flops}

    def all_reduced(self) -> "Agreement":
        if not dist.active():
            return self
        v = dist.all_reduce_named(self.named())
        return Agreement({k: v[f"non_finite/{k}"] for k in self.non_finite},
                         {k: v[f"signal/{k}"] for k in self.signals},
                         {k: v[f"loss/{k}"] for k in self.losses}, self.grad_norm, v["flops"])

    def fault(self) -> str | None:
        """The first part some process found non-finite (loss_total, then the gradient norm, last), or None."""
        bad = [k for k, f in self.non_finite.items() if f > 0]
        return bad[0] if bad else None

    def signal(self) -> int | None:
        """The stop signal some process received (the last of STOP_SIGNALS when several), or None."""
        raised = [sig for sig in STOP_SIGNALS if self.signals[sig.name] > 0]
        return raised[-1] if raised else None


@dataclass
class StepResult:
    fault: str | None  # what was non-finite (a part, or "gradient norm"); no optimiser step was taken
    row: dict | None  # the step's logged values (None on a fault)
    agreed: Agreement


def draw_batch(st: RunState, step: int) -> Batch:
    """The batch of `step`: a pure function of (seed, step). Under several processes every draw is made for the
    whole batch, as one process makes it, and this process keeps its rows."""
    cfg, data, sched = st.cfg, st.data, st.objective.sched
    gen = rng.step_generator(cfg.seed, step)
    x, y, mask = data.batch_with_mask(step, st.device)
    t = torch.randint(0, sched.levels, (x.shape[0],), generator=gen).to(st.device)
    shard = None
    if dist.world_size() > 1:
        lo, hi = dist.row_range(cfg.batch_size)
        shard = Shard(lo, hi, cfg.batch_size, y=y, mask=mask)
        x, y, t, mask = x[lo:hi], y[lo:hi], t[lo:hi], None if mask is None else mask[lo:hi]
    return Batch(x, y, t, gen, rng.step_generator(cfg.seed, step, rng.NEGATIVES), mask=mask, step=step,
                 progress=None if cfg.budget_flops is None else st.compute / cfg.budget_flops,
                 offline_rows=None if st.objective.offline is None else data.batch_indices(step), shard=shard)


def ends_log_row(st: RunState, step_flops: float) -> bool:
    """Whether the step being taken ends a logged row (every log_every steps, and at the run's end: its last
    step, or, in a budgeted run, once the budget is within one more step's compute). `step_flops`: the step's
    compute, which the decision counts as spent (st.compute does not hold it yet)."""
    cfg = st.cfg
    last = st.step + 1 == cfg.steps or \
        (cfg.budget_flops is not None and st.compute + step_flops + st.last_step_flops >= cfg.budget_flops)
    return (st.step + 1) % cfg.log_every == 0 or last


def train_step(st: RunState, batch: Batch, signum: int | None = None) -> StepResult:
    """One optimiser step: the objective, backward, gradient average and clip, one cross-process agreement
    (non-finite losses or gradient norm, stop signals, losses, compute), then Adam, EMA and the step counter.
    A non-finite loss or gradient norm takes no step (result.fault names it): the caller decides whether that
    stops the run. Outside a row's last step the agreement is the step's only host round-trip. The two terms are
    back-propagated apart at every step (the same arithmetic whatever is logged); a row's last step also measures
    their gradients' share, cosine and norm ratio. The row's values
    that the host does not know yet stay tensors (`diagnostics.to_host` reads a window of rows at once)."""
    cfg, world = st.cfg, dist.world_size()
    started = time.perf_counter()
    st.meter.start()
    with autocast(st.device, cfg.precision):
        parts = ired_losses(st.model, batch, st.objective)
    flops = st.meter.flops(denoise_rows=batch.x.shape[0],
                           train_score_rows=batch.x.shape[0] * (1 + cfg.k) if cfg.supervise_energy else 0)
    # under several processes this step's global compute is not known before the agreement: every process
    # takes the previous step's (agreed) instead, so all decide alike whether to measure the share
    logging = ends_log_row(st, flops if world == 1 else st.last_step_flops)
    st.opt.zero_grad(set_to_none=True)
    if parts.energy_term is not None:
        parts.diagnostics.update(backward_terms(st.model, parts, measure=logging))
    else:
        parts.loss_total.backward()
    dist.average_gradients(st.model.parameters())  # one flattened all-reduce (not DDP: see ebmtool.runtime.distributed)
    grad_norm = torch.nn.utils.clip_grad_norm_(st.model.parameters(), cfg.grad_clip)
    agreed = Agreement.of(parts, grad_norm, signum, flops).all_reduced()
    st.compute += agreed.flops
    fault = agreed.fault()
    if fault is not None:
        return StepResult(fault, None, agreed)  # never step the optimiser on a non-finite loss or gradient
    st.last_step_flops = agreed.flops
    st.opt.step()
    st.ema.update(st.model)
    st.step += 1
    losses = {k: v / world for k, v in agreed.losses.items()}
    row = {"loss_total": losses["loss_total"], "loss_denoise": losses["loss_denoise"], "grad_norm": agreed.grad_norm,
           "step_seconds": time.perf_counter() - started}
    if "loss_energy" in losses:
        row["loss_energy"] = losses["loss_energy"]
    row.update(parts.diagnostics)
    return StepResult(None, row, agreed)
