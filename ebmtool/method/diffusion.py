"""Noise schedule, forward noising, the one energy-descent routine, and the annealed sampler.

Everything here follows the published IRED method (docs/training.md). There is exactly one
descent routine, `descend`: `opt_step` in training negatives, the sampler's inner loop and the mining code
all call it, so its sign is fixed in one place and tested once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

NUM_LEVELS = 10  # K = 10 landscape levels, t in {0..9}


@dataclass(frozen=True)
class Schedule:
    """Cosine schedule (s = 0.008), computed in float64 and stored in float32."""

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    sqrt_ab: torch.Tensor  # sqrt(alpha_bar_t)
    sqrt_1mab: torch.Tensor  # sqrt(1 - alpha_bar_t)
    step_size: torch.Tensor  # eta_t = beta_t / sqrt(1 - alpha_bar_t), the inner-loop step

    @property
    def levels(self) -> int:
        return self.betas.shape[0]

    def to(self, device) -> "Schedule":
        return Schedule(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def cosine_schedule(levels: int = NUM_LEVELS, s: float = 0.008) -> Schedule:
    u = torch.arange(levels + 1, dtype=torch.float64)
    f = torch.cos(((u / levels) + s) / (1 + s) * math.pi / 2) ** 2
    betas = torch.clamp(1 - f[1:] / f[:-1], max=0.999)
    ab = torch.cumprod(1 - betas, dim=0)
    sqrt_1mab = torch.sqrt(1 - ab)
    return Schedule(
        betas=betas.float(),
        alphas_cumprod=ab.float(),
        sqrt_ab=torch.sqrt(ab).float(),
        sqrt_1mab=sqrt_1mab.float(),
        step_size=(betas / sqrt_1mab).float(),
    )


def noised(sched: Schedule, y: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Forward process x_t = sqrt(ab_t) y + sqrt(1 - ab_t) eps, per example t."""
    return sched.sqrt_ab[t][:, None] * y + sched.sqrt_1mab[t][:, None] * eps


def impose_mask(sched, y, t, x_given, mask):
    """Masked tasks: given entries <- sqrt(ab_t) * given value. No-op without a mask."""
    if mask is None:
        return y
    return y * (1 - mask) + mask * sched.sqrt_ab[t][:, None] * x_given


class CallCounter:
    """Counts energy-network evaluations (every forward pass, in the model), the rows they covered, how many of
    them (and rows) also took an input-gradient, and the rows of conditions projected (`proj_rows`; those
    recorded for a backward pass: `proj_grad_rows`). The compute count (ebmtool.method.compute) is made of these."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.calls = self.grad_calls = self.rows = self.grad_rows = 0
        self.proj_rows = self.proj_grad_rows = 0


@dataclass(frozen=True, eq=False)
class Condition:
    """A batch's condition x with what every network call that shares it reuses instead of recomputing: the
    model's projection of x (EnergyMLP: x's share of the first layer, fc1's bias included) and, for one level
    tensor `t`, the model's terms of that level (EnergyMLP: its FiLM gains and biases). Made by
    `condition(model, x, t)`; the sampler makes one per problem batch (and one per level from it), `descend`
    one per descent, training one per step (for its denoising and scoring calls), mining and scoring one per
    batch. A model without a `condition` method (the discrete tasks' networks) gets x itself."""

    x: torch.Tensor
    proj: torch.Tensor
    t: torch.Tensor | None = None  # the very tensor `layers` were computed for (identity, not value)
    layers: tuple | None = None
    per_row: tuple[int, ...] = ()  # the entries of `layers` that hold one row per row of x

    def repeated(self, k: int, keep_first: bool = False, t: torch.Tensor | None = None) -> "Condition":
        """`repeat_condition` of this condition. Given `t`, the level tensor of the repeated rows (the caller's
        promise: this condition's levels repeated alike), the level terms come along, their per-row entries
        repeated; without it they are dropped."""
        if t is None or self.layers is None:
            return Condition(repeat_condition(self.x, k, keep_first), repeat_condition(self.proj, k, keep_first))
        layers = tuple(repeat_condition(v, k, keep_first) if i in self.per_row else v
                       for i, v in enumerate(self.layers))
        return Condition(repeat_condition(self.x, k, keep_first), repeat_condition(self.proj, k, keep_first), t,
                         layers, self.per_row)


def repeat_condition(x, k: int, keep_first: bool = False, t: torch.Tensor | None = None):
    """A condition's rows each repeated k times (row i -> rows i*k .. i*k+k-1), preceded by the rows themselves
    when keep_first (training's scoring layout [x; x repeated]); a Condition's projection is repeated, not
    recomputed, and its level terms too where `t` is the repeated rows' level tensor (`Condition.repeated`)."""
    if isinstance(x, Condition):
        return x.repeated(k, keep_first, t)
    r = x if k == 1 else x.repeat_interleave(k, dim=0)
    return torch.cat([x, r]) if keep_first else r


def condition(model, x, t=None):
    """x prepared once for the network calls that share it (see Condition): the model's `condition(x, t)`, or x
    itself for a model that has none. A Condition passed in keeps its projection (nothing is recomputed) and
    gains the level terms of t."""
    make = getattr(model, "condition", None)
    return x if make is None else make(x, t)


def raw(x) -> torch.Tensor:
    """The condition tensor itself (masks re-impose given entries from it)."""
    return x.x if isinstance(x, Condition) else x


def energy(model, x, y, t) -> torch.Tensor:
    """Energies (B,) without any gradient."""
    with torch.no_grad():
        return model(x, y, t)


def energy_and_grad(model, x, y, t, create_graph: bool = False):
    """(E, dE/dy) at y. The gradient is the noise prediction eps_hat.

    Works inside no-grad contexts and never mutates the caller's tensor. With create_graph=True E and the
    gradient stay differentiable w.r.t. the parameters (and x); otherwise both come back detached. y is a
    constant here either way: no gradient flows back into the caller's y.

    A model whose `explicit_grad` is true (EnergyMLP, by default) computes both with its own
    `energy_and_grad(x, y, t)`: the explicit vector-Jacobian product, one ordinary forward graph that training
    differentiates with first-order autograd, and no graph at all without create_graph. Other models (the
    discrete tasks' networks), or an EnergyMLP with `explicit_grad = False`, take the input gradient with
    torch.autograd.grad (`autograd_energy_and_grad`), through which create_graph=True training back-propagates
    a second time (double backprop). The same counts, and the same values: E and dE/dy agree bit for bit in
    float32 on a CPU; parameter gradients to rounding (their contributions are summed in another order).
    """
    if getattr(model, "explicit_grad", False):
        with torch.enable_grad() if create_graph else torch.no_grad():
            e, g = model.energy_and_grad(x, y.detach(), t)
    else:
        e, g = autograd_energy_and_grad(model, x, y, t, create_graph)
    counter = getattr(model, "counter", None)
    if counter is not None:
        counter.grad_calls += 1
        counter.grad_rows += y.shape[0]
    return e, g


def autograd_energy_and_grad(model, x, y, t, create_graph: bool = False):
    """(E, dE/dy) by torch.autograd.grad through model(x, y, t), whatever the model; counts no gradient call
    (`energy_and_grad` does). The reference the explicit form is tested against."""
    with torch.enable_grad():
        y = y.detach().requires_grad_(True)
        e = model(x, y, t)
        (g,) = torch.autograd.grad(e.sum(), y, create_graph=create_graph)
    if not create_graph:
        e, g = e.detach(), g.detach()
    return e, g


def descend(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    t: torch.Tensor,
    sched: Schedule,
    steps: int,
    *,
    multiplier: float = 2.0,
    clamp: float | None = 2.0,
    bound: torch.Tensor | None = None,
    step_scale: float = 1.0,
    mask: torch.Tensor | None = None,
    start: tuple[torch.Tensor, torch.Tensor] | None = None,
    project=None,
):
    """Energy descent with the acceptance rule: `opt_step`.

    Each step moves y <- y - m_i * eta_t * dE/dy with m_0 = 1 and m_i = `multiplier` after (the release
    overwrites its step-size argument, giving this 1x-then-2x pattern), re-imposes the mask, clamps to
    +-clamp * sqrt(ab_t) **per example** (the release uses the first example's t for the whole batch, a bug:
    see `bound` for the compatibility switch), and reverts examples whose energy rose (E' > E strictly).

    Reuse: the energy and gradient at an accepted point are computed in the same network call, so the next
    step needs no new evaluation, and a rejected example keeps its known (E, g). S steps cost S+1 calls (S
    when `start` gives the energy and gradient at y), against 2S in the release, with the same answers. The
    last step needs only the energy.

    `project(y_new)` (optional) maps a proposal back into a feasible set (ANM's radius) before the clamp.
    The condition is prepared once for the descent's calls (`condition`: the model's projection of x and the
    terms of level t), x may be a Condition already (the sampler's).

    Returns (y, E) detached, and the number of accepted steps per example.
    """
    y = y.detach()
    x = condition(model, x, t)
    x_given = raw(x)
    eta = (sched.step_size[t] * step_scale)[:, None]
    if bound is None and clamp is not None:
        bound = clamp * sched.sqrt_ab[t][:, None]
    e, g = start if start is not None else energy_and_grad(model, x, y, t)
    accepted = torch.zeros(y.shape[0], dtype=torch.long, device=y.device)
    for i in range(steps):
        m = 1.0 if i == 0 else multiplier
        proposal = y - m * eta * g
        if project is not None:
            proposal = project(proposal)
        proposal = impose_mask(sched, proposal, t, x_given, mask)
        if bound is not None:
            proposal = torch.maximum(torch.minimum(proposal, bound), -bound)
        if i == steps - 1:
            e_new, g_new = energy(model, x, proposal, t), None
        else:
            e_new, g_new = energy_and_grad(model, x, proposal, t)
        ok = e_new <= e  # acceptance: revert only where the energy rose strictly
        y = torch.where(ok[:, None], proposal, y)
        e = torch.where(ok, e_new, e)
        if g_new is not None:
            g = torch.where(ok[:, None], g_new, g)
        accepted += ok.long()
    return y.detach(), e.detach(), accepted


@dataclass(frozen=True)
class SamplerSettings:
    """Per-task switches of the sampler."""

    inner_steps: int = 5
    x0_clamp: float = 2.0
    opt_clamp: float = 2.0
    opt_multiplier: float = 2.0
    post_clamp: float = 2.0


@torch.no_grad()
def sample(model, x, sched: Schedule, out_dim: int, settings: SamplerSettings, generator=None, mask=None):
    """The annealed sampler with inner-loop optimisation. Returns y_hat (the clean answer).

    The release returns sqrt(ab_0) * y_hat and computes its MSE on that; callers that compare with reference
    numbers multiply by sched.sqrt_ab[0] (`mse_ref_scaled`). Network calls per problem: 10 x (1 + 1 + S)
    = 70 at S = 5, against the release's 110, with the same answers (see `descend`). Every call shares x: its
    projection is computed once per problem (`condition`), and each level's terms once per level.
    """
    b = x.shape[0]
    y = torch.randn(b, out_dim, generator=generator, device="cpu").to(x.device)
    cond = condition(model, x)
    for level in reversed(range(sched.levels)):
        t = torch.full((b,), level, dtype=torch.long, device=x.device)
        at_level = condition(model, cond, t)
        sab, s1mab = sched.sqrt_ab[level], sched.sqrt_1mab[level]
        y = impose_mask(sched, y, t, x, mask)
        _, eps_hat = energy_and_grad(model, at_level, y, t)
        x0 = (y / sab - (s1mab / sab) * eps_hat).clamp(-settings.x0_clamp, settings.x0_clamp)
        y = impose_mask(sched, sab * x0, t, x, mask)
        if settings.inner_steps > 0:
            y, _, _ = descend(
                model, at_level, y, t, sched, settings.inner_steps,
                multiplier=settings.opt_multiplier, clamp=settings.opt_clamp, mask=mask,
            )
        y = y.clamp(-settings.post_clamp * sab, settings.post_clamp * sab)
        if level > 0:
            y = sched.sqrt_ab[level - 1] * y / sab
    return y / sched.sqrt_ab[0]
