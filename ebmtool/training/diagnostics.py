"""What a run logs about its negatives and gradients, computed from tensors the step already has.

Every statistic describes the whole (global) batch: under several processes the rows are gathered first, so
the logged numbers equal a one-process run's.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from ebmtool import curriculum as curriculum_mod
from ebmtool import distributed as dist
from ebmtool import sans as sans_mod
from ebmtool.config import REFINING_SOURCES
from ebmtool.negatives import hnm_levels


def masked_mean(v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of v over the True entries of mask, as a 0-d tensor on v's device (NaN when there are none):
    no boolean indexing, so no host round-trip."""
    return torch.where(mask, v, torch.zeros((), dtype=v.dtype, device=v.device)).sum() / mask.sum()


def pair_stats(e_pos, e_neg, norm_ratio, valid) -> dict[str, torch.Tensor]:
    """Means over the valid (positive, negative) pairs: E+, E-, margin E- - E+, p_hard = P(E- < E+), the
    fraction with an active gradient (softplus slope sigmoid(E+ - E-) > 0.01), and |x-|/|x+|. 0-d tensors on
    the device (NaN without a valid pair), read by the logger once per row."""
    ep = e_pos[:, None].expand_as(e_neg)
    nan = torch.full((), math.nan, device=e_pos.device)
    return {"energy_pos": torch.where(valid.any(), e_pos.mean(), nan), "energy_neg": masked_mean(e_neg, valid),
            "margin": masked_mean(e_neg - ep, valid), "p_hard": masked_mean((e_neg < ep).float(), valid),
            "active_fraction": masked_mean((torch.sigmoid(ep - e_neg) > 0.01).float(), valid),
            "norm_ratio": masked_mean(norm_ratio, valid)}


def gathered(e_pos, e_neg, norm_ratio, valid, w, level, counts, k: int, sharded: bool):
    """The pair tensors and source counts of the whole batch: this process's own, or every process's rows
    gathered (one all-gather of the packed columns, one all-reduce of the counts)."""
    if not (sharded and dist.active()):
        return e_pos, e_neg, norm_ratio, valid, w, level, counts
    cols = [e_pos[:, None], e_neg, norm_ratio, valid, w] + ([level] if level is not None else [])
    packed = dist.all_gather_rows(torch.cat([c.double() for c in cols], dim=1))
    g_neg, g_ratio, g_valid, g_w = (packed[:, 1 + i * k:1 + (i + 1) * k] for i in range(4))
    return (packed[:, 0].float(), g_neg.float(), g_ratio.float(), g_valid > 0.5, g_w.float(),
            packed[:, 1 + 4 * k:] if level is not None else None, dist.all_reduce_sum(counts))


def energy_diagnostics(neg, e_pos, e_neg, norm_ratio, w, k: int, sharded: bool, hnm_candidates, levels: int):
    """The logged diagnostics of one step's energy term: pair statistics overall and per source, SANS weight
    entropy/ESS, near-duplicate and excluded fractions, refinement acceptance and HNM's selected levels.
    `neg` is the step's training.negatives.Negatives. Values are 0-d tensors on the device (or floats the host
    already knows): nothing here waits for the device; the logger reads a row's values in one transfer."""
    g_pos, g_neg, g_ratio, g_valid, g_w, g_level, counts = gathered(
        e_pos, e_neg, norm_ratio, neg.valid, w, neg.level, neg.counts, k, sharded)
    g_included = g_valid.any(dim=1)
    diag = dict(neg.diag)
    diag.update(pair_stats(g_pos, g_neg, g_ratio, g_valid))
    diag.update(sans_mod.weight_stats(g_w, g_included))
    diag.update(dup_fraction=counts[:, 1].sum() / counts[:, 0].sum().clamp_min(1),
                excluded_fraction=(~g_included).float().mean())
    for j, name in enumerate(neg.names):
        if name not in neg.source_rows:
            diag[f"source/{name}/fraction"] = 0.0
            continue
        rows = neg.source_rows[name]
        diag[f"source/{name}/fraction"] = 1.0 if rows is None else rows.numel() / neg.total
        diag[f"source/{name}/seconds"] = neg.seconds[name]
        diag[f"source/{name}/dup_fraction"] = counts[j, 1] / counts[j, 0].clamp_min(1)
        if name in REFINING_SOURCES:  # NaN where no step was attempted (0 / 0)
            diag[f"source/{name}/accept_fraction"] = counts[j, 2] / counts[j, 3]
        sel = slice(None) if rows is None else rows.to(g_pos.device)
        for key, v in pair_stats(g_pos[sel], g_neg[sel], g_ratio[sel], g_valid[sel]).items():
            diag[f"source/{name}/{key}"] = v
        if name == "hnm" and g_level is not None:
            lv, ok = g_level[sel], g_valid[sel]
            diag[f"source/{name}/selected_level"] = masked_mean(lv, ok)
            for level in hnm_level_values(hnm_candidates, levels):
                diag[f"source/hnm/selected_level_{level}"] = masked_mean((lv == level).float(), ok)
    for name in curriculum_mod.sources_of(neg.stages):  # sources of other stages: configured and realised 0 here
        diag.setdefault(f"source/{name}/fraction", 0.0)
        diag[f"source/{name}/configured"] = neg.stage.fractions().get(name, 0.0)
    return diag


@functools.lru_cache(maxsize=None)
def hnm_level_values(candidates: int, levels: int) -> tuple[int, ...]:
    """The distinct start levels of HNM's candidates (fixed for a run: computed once, not read every step)."""
    return tuple(hnm_levels(candidates, levels).unique().tolist())


def nanmean(values) -> float:
    """The mean of the finite values (NaN when there are none): a logged row averages its window's steps."""
    a = np.asarray(values, dtype=np.float64)
    return float(np.mean(a[np.isfinite(a)])) if np.isfinite(a).any() else float("nan")


def to_host(rows: list[dict]) -> list[dict]:
    """`rows` with every tensor value replaced by its float, all read from the device in one transfer (a
    logged row's window of steps: the only host round-trip the diagnostics make)."""
    where = [(i, key) for i, r in enumerate(rows) for key, v in r.items() if isinstance(v, torch.Tensor)]
    if not where:
        return rows
    values = torch.stack([rows[i][key].detach().reshape(()).double() for i, key in where]).cpu().tolist()
    out = [dict(r) for r in rows]
    for (i, key), v in zip(where, values):
        out[i][key] = v
    return out


def backward_with_grad_share(model, parts) -> torch.Tensor:
    """Back-propagate loss_total as its two terms, leaving their sum in the parameters' .grad (what
    loss_total.backward() leaves, up to float summation order), and return the energy term's gradient-norm
    share ||grad lambda*L_E|| / (||grad L_mse|| + ||grad lambda*L_E||) as a 0-d tensor (NaN when both are 0).

    The two terms' graphs are traversed once each, as one backward of their sum would: measuring the share
    costs a few elementwise passes over the gradients, not extra backward passes. Under several processes the
    norms are of the whole batch's gradients, as for the update."""
    params = [p for p in model.parameters() if p.requires_grad]
    terms = (parts["loss_denoise"].mean(), parts["energy_term"])
    g_mse, g_e = (torch.autograd.grad(term, params, retain_graph=True, allow_unused=True) for term in terms)
    for p, a, b in zip(params, g_mse, g_e):
        if a is not None or b is not None:  # a parameter neither term reaches keeps grad None, as in one backward
            p.grad = a if b is None else b if a is None else a + b
    norms = []
    for gs in (g_mse, g_e):
        gs = [torch.zeros_like(p) if g is None else g for g, p in zip(gs, params)]  # the same list on every process
        dist.average_(gs)  # several processes: the whole batch's gradient (in place; .grad holds the sum already)
        norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in gs])))
    return norms[1] / (norms[0] + norms[1])
