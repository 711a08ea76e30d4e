"""Negative sources. Every source returns clean-space candidates y_neg, detached; only the framework noises them.

The framework (train.py) re-noises a negative with the positive's own noise:
    x_neg = sqrt(ab_t) * y_neg + sqrt(1 - ab_t) * eps_pos
so a positive and its negative differ only in their clean component (lessons.md F3).
"""

from __future__ import annotations

import torch

from ebmtool.diffusion import Schedule, descend, noised

CLAMP_MODES = ("per-example", "first-example")


def ired_negative(model, x, y, t, eps, sched: Schedule, *, steps: int = 2, noise_scale: float = 3.0,
                  clamp_mode: str = "per-example", mask=None) -> torch.Tensor:
    """The reference's continuous negative (ired-algorithm.md §3.2).

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
