"""ired, the reference's negative: z = sqrt(ab_t) y + sqrt(1-ab_t) * 3 eps, 2 descent steps (1x, 2x),
clamp(z/sqrt(ab_t), +-2). The default source. For discrete tasks the training step replaces it by the task's own
reference negative (`reference=True`)."""

from __future__ import annotations

import torch

from ebmtool.method.diffusion import Schedule, descend, noised
from ebmtool.negatives.common import CLAMP_MODES, repeat_rows, start_noise
from ebmtool.negatives.registry import NegativeSource, Setting, register

STEPS = Setting("neg_steps", 2, "Descent steps of IRED negatives.", type=int, minimum=0)
NOISE = Setting("neg_noise_scale", 3.0, "Start noise scale of IRED negatives.", flag=False)
CLAMP = Setting("clamp_mode", CLAMP_MODES[0], "opt_step clamp bound: per example (correct) or the release's "
                "first-example bug.", type=str, choices=CLAMP_MODES)


def ired_negative(model, x, y, t, eps, sched: Schedule, *, steps: int = STEPS.default,
                  noise_scale: float = NOISE.default, clamp_mode: str = CLAMP.default, mask=None) -> torch.Tensor:
    """The reference's continuous negative.

    Start from z = sqrt(ab_t) y + sqrt(1 - ab_t) * 3 eps (the positive's noise, tripled), run `opt_step`
    (`descend`, 2 steps, 1x then 2x), map back to clean space and clamp to +-2.

    clamp_mode "per-example" bounds each example by 2 sqrt(ab_{t_b}); "first-example" reproduces the release's
    bug of using the first example's t for the whole batch (for exact-reproduction studies only).
    """
    z = noised(sched, y, t, noise_scale * eps)
    bound = 2.0 * sched.sqrt_ab[t][:, None]
    if clamp_mode == "first-example":
        bound = bound[:1].expand_as(bound)
    elif clamp_mode != "per-example":
        raise ValueError(f"unknown clamp mode {clamp_mode!r}")
    z, _, _ = descend(model, x, z, t, sched, steps, multiplier=2.0, bound=bound, mask=mask)
    return (z / sched.sqrt_ab[t][:, None]).clamp(-2.0, 2.0).detach()


def draw_start(n: int, k: int, d: int, settings, gen) -> dict:
    """Fresh start noises of negatives j >= 1: {"start": (n, K-1, D)} (nothing when K = 1). anm draws the same."""
    return {"start": torch.randn((n, k - 1, d), generator=gen)} if k > 1 else {}


def _generate(model, x, y, t, eps, sched, k, s, gen, mask=None, noise=None):
    noise = start_noise(eps, k, gen, noise.get("start"))
    return ired_negative(model, repeat_rows(x, k), repeat_rows(y, k), repeat_rows(t, k), noise, sched,
                        steps=s.neg_steps, noise_scale=s.neg_noise_scale, clamp_mode=s.clamp_mode,
                        mask=None if mask is None else repeat_rows(mask, k)), {}


SOURCE = register(NegativeSource("ired", _generate, draw_start, settings=(STEPS, NOISE, CLAMP), describe="reference",
                                 reference=True))
