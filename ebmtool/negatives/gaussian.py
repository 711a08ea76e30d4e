"""gaussian, a control: y + scale * N(0, 1), clamped to the clean box."""

from __future__ import annotations

import torch

from ebmtool.negatives.common import keep_given, repeat_rows
from ebmtool.negatives.registry import NegativeSource, Setting, register

SCALE = Setting("gaussian_scale", 1.0, "Gaussian control: y + scale * N(0,1).", minimum=0, exclusive=True)


def _draw(n: int, k: int, d: int, settings, gen) -> dict:
    return {"gauss": torch.randn((n, k, d), generator=gen)}


def _generate(model, x, y, t, eps, sched, k, s, gen, mask=None, noise=None):
    yr = repeat_rows(y, k)
    y_neg = (yr + s.gaussian_scale * noise["gauss"].reshape(yr.shape).to(y.device)).clamp(-s.clean_clamp,
                                                                                           s.clean_clamp)
    return keep_given(y_neg, yr, None if mask is None else repeat_rows(mask, k)), {}


SOURCE = register(NegativeSource("gaussian", _generate, _draw, settings=(SCALE,)))
