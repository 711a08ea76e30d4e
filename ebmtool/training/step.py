"""One training step as a public function: `batch = draw_batch(state, step)`, then `train_step(state, batch)`.

Benchmarks and tests call these rather than re-implementing a step. Every decision a step makes (a non-finite
loss, a stop signal) is agreed by all processes through one all-reduce of an `Agreement`, so every process
reaches every collective.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from ebmtool import distributed as dist
from ebmtool import rng
from ebmtool.devices import autocast
from ebmtool.training.diagnostics import backward_terms
from ebmtool.training.losses import Batch, ired_losses
from ebmtool.training.negatives import Shard
from ebmtool.training.signals import STOP_SIGNALS
from ebmtool.training.state import RunState

CHECKED_PARTS = ("loss_denoise", "loss_energy", "energy_pos", "energy_neg")  # non-finite values stop the step


@dataclass
class Agreement:
    """What every process must decide alike at a step, summed over the processes by one all-reduce."""

    non_finite: list[float]  # per checked part present, then loss_total, then the gradient norm: > 0 where some
    # process saw a non-finite value
    signals: list[float]  # per STOP_SIGNALS: > 0 where some process received it
    losses: list[float]  # loss_total, loss_denoise, loss_energy (NaN without the energy term): sums
    grad_norm: float  # the clipped update's gradient norm (of the averaged gradient: alike on every process)
    flops: float  # the step's counted work, summed: the whole batch's, charged once
    checked: tuple[str, ...] = ()

    @classmethod
    def of(cls, parts: dict, grad_norm: torch.Tensor, signum: int | None, flops: float) -> "Agreement":
        """This process's view. The flags, losses and gradient norm are read from the device in one transfer:
        the step's only host round-trip outside logged rows."""
        checked = tuple(k for k in CHECKED_PARTS if k in parts)
        dev = [(~torch.isfinite(parts[k]).all()).double() for k in checked]
        dev += [(~torch.isfinite(parts["loss_total"])).double(), (~torch.isfinite(grad_norm)).double()]
        dev += [parts[k].detach().mean().double() for k in ("loss_total", "loss_denoise", "loss_energy") if k in parts]
        dev.append(grad_norm.detach().double())
        host = torch.stack(dev).cpu().tolist()
        n = len(checked) + 2
        losses = host[n:-1] + ([] if "loss_energy" in parts else [math.nan])
        return cls(host[:n], [float(signum == s) for s in STOP_SIGNALS], losses, host[-1], flops, checked)

    def all_reduced(self) -> "Agreement":
        if not dist.active():
            return self
        n, s = len(self.non_finite), len(self.signals)
        v = dist.all_reduce_sum(torch.tensor(self.non_finite + self.signals + self.losses + [self.flops],
                                             dtype=torch.float64)).tolist()
        return Agreement(v[:n], v[n:n + s], v[n + s:n + s + 3], self.grad_norm, v[n + s + 3], self.checked)

    def fault(self) -> str | None:
        """The first part some process found non-finite (loss_total, then the gradient norm, last), or None."""
        bad = [k for k, f in zip(self.checked + ("loss_total", "gradient norm"), self.non_finite) if f > 0]
        return bad[0] if bad else None

    def signal(self) -> int | None:
        """The stop signal some process received (the last of STOP_SIGNALS when several), or None."""
        raised = [sig for sig, f in zip(STOP_SIGNALS, self.signals) if f > 0]
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
    if "energy_term" in parts:
        parts["diagnostics"].update(backward_terms(st.model, parts, measure=logging))
    else:
        parts["loss_total"].backward()
    dist.average_gradients(st.model.parameters())  # one flattened all-reduce (not DDP: see ebmtool.distributed)
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
    total, denoise, energy = (v / world for v in agreed.losses)
    row = {"loss_total": total, "loss_denoise": denoise, "grad_norm": agreed.grad_norm,
           "step_seconds": time.perf_counter() - started}
    if "loss_energy" in parts:
        row["loss_energy"] = energy
    row.update(parts.get("diagnostics", {}))
    return StepResult(None, row, agreed)
