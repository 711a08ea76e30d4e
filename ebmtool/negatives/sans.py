"""SANS: weights over the K negatives of one positive and the weighted energy losses.

Convention: lower energy = more plausible, so a hard negative has LOW energy and gets a HIGH weight:
    w_i = softmax_i(-alpha * E_i)   over the valid negatives of one positive, from detached energies.
alpha is an inverse temperature (larger = sharper; 0 = uniform). Filtered negatives (valid = False) get weight 0.
Every function is pure and works on (B,) positives and (B, K) negatives; losses are returned per example (B,).
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

LOSS_FORMS = ("infonce", "pairwise", "logistic")
ALPHA_SCHEDULES = ("constant", "linear")
DEFAULT_ALPHA = 1.0  # the inverse temperature of `train --sans` and `weights` when none is given
DEFAULT_ALPHA_FLOOR = 0.1  # the floor of the linear alpha schedule when none is given
DEFAULT_LOSS = "pairwise"  # --sans-loss when none is given
DEFAULT_MARGIN = 9.0  # --margin of the logistic form when none is given (PyKEEN's NSSALoss default)


def alpha_at(t: torch.Tensor, alpha: float, schedule: str = "constant", floor: float = 0.1,
             levels: int = 10) -> torch.Tensor:
    """alpha per example (B,). 'linear' is the seed note's max(floor, alpha * (1 - t / (T - 1))): alpha at t = 0,
    decreasing to the floor at t = T - 1; 'constant' ignores t."""
    if schedule == "constant":
        return torch.full(t.shape, float(alpha), dtype=torch.float32, device=t.device)
    if schedule == "linear":
        return torch.clamp(alpha * (1 - t.float() / (levels - 1)), min=floor)
    raise ValueError(f"unknown alpha schedule {schedule!r}; use one of {ALPHA_SCHEDULES}")


def weights(e_neg: torch.Tensor, alpha, valid: torch.Tensor | None = None) -> torch.Tensor:
    """w = softmax(-alpha * E) over K (dim 1), detached; invalid entries get weight exactly 0.

    alpha: a float or a (B,) tensor. A row with no valid entry gets all-zero weights (the caller excludes it from
    the energy term and counts it; it is never silently given weight).
    """
    e = e_neg.detach()
    a = alpha[:, None] if torch.is_tensor(alpha) else alpha
    logits = -a * e
    if valid is None:
        return torch.softmax(logits, dim=1)
    logits = logits.masked_fill(~valid, -math.inf)
    w = torch.softmax(logits, dim=1)
    return torch.nan_to_num(w, nan=0.0) * valid  # all-invalid rows: softmax of -inf is NaN -> 0


def uniform_weights(valid: torch.Tensor) -> torch.Tensor:
    """Plain mean over the valid negatives (what K > 1 uses without --sans)."""
    v = valid.float()
    return v / v.sum(dim=1, keepdim=True).clamp_min(1.0)


def loss(form: str, e_pos: torch.Tensor, e_neg: torch.Tensor, w: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """Per-example energy loss (B,) from E+ (B,), E- (B, K) and detached weights (B, K) summing to 1 per row.

    infonce : log(1 + sum_i w_i exp(E+ - E_i))          (the seed note's weighted InfoNCE)
    pairwise: sum_i w_i softplus(E+ - E_i)               (= reference softplus(E+ - E-) at K = 1)
    logistic: 1/2 [softplus(E+ - margin) + sum_i w_i softplus(margin - E_i)]   (RotatE/PyKEEN, energy form)
    Zero-weight entries contribute exactly nothing (also when their energy is not finite-safe to exponentiate).
    """
    assert e_neg.dim() == 2 and e_pos.shape == e_neg.shape[:1] and w.shape == e_neg.shape, "shapes (B,), (B,K)"
    w = w.detach()
    d = e_pos[:, None] - e_neg
    if form == "pairwise":
        out = (w * F.softplus(d)).sum(dim=1)
    elif form == "infonce":
        # logsumexp over [0, log w_i + d_i]; log 0 = -inf drops the invalid entries exactly.
        terms = torch.where(w > 0, torch.log(w.clamp_min(1e-38)) + d, torch.full_like(d, -math.inf))
        out = torch.logsumexp(torch.cat([torch.zeros_like(e_pos)[:, None], terms], dim=1), dim=1)
    elif form == "logistic":
        out = 0.5 * (F.softplus(e_pos - margin) + (w * F.softplus(margin - e_neg)).sum(dim=1))
    else:
        raise ValueError(f"unknown SANS loss form {form!r}; use one of {LOSS_FORMS}")
    return out


def weight_stats(w: torch.Tensor, rows: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Mean entropy -sum w log w and effective sample size 1 / sum w^2 over the rows that have weights, as 0-d
    tensors on w's device (NaN without such a row): computed every training step, read when a row is logged."""
    w = w.detach()
    if rows is None:
        rows = w.sum(dim=1) > 0
    ent = -(w * torch.log(w.clamp_min(1e-38))).sum(dim=1)
    ess = 1.0 / (w ** 2).sum(dim=1)
    n = rows.sum()
    zero = torch.zeros((), dtype=w.dtype, device=w.device)
    return {"weight_entropy": torch.where(rows, ent, zero).sum() / n,
            "weight_ess": torch.where(rows, ess, zero).sum() / n}
