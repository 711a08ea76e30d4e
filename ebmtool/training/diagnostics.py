"""What a run logs about its negatives and gradients, computed from tensors the step already has.

Every statistic describes the whole (global) batch: under several processes the rows are gathered first, so
the logged numbers equal a one-process run's.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ebmtool import curriculum as curriculum_mod
from ebmtool import distributed as dist
from ebmtool import sans as sans_mod
from ebmtool.config import REFINING_SOURCES
from ebmtool.negatives import hnm_levels


def pair_stats(e_pos, e_neg, norm_ratio, valid) -> dict[str, float]:
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
    `neg` is the step's training.negatives.Negatives."""
    g_pos, g_neg, g_ratio, g_valid, g_w, g_level, counts = gathered(
        e_pos, e_neg, norm_ratio, neg.valid, w, neg.level, neg.counts, k, sharded)
    g_included = g_valid.any(dim=1)
    diag = dict(neg.diag)
    diag.update(pair_stats(g_pos, g_neg, g_ratio, g_valid))
    diag.update(sans_mod.weight_stats(g_w, g_included))
    cand, dups = counts[:, 0].sum().item(), counts[:, 1].sum().item()
    diag.update(dup_fraction=dups / max(cand, 1), excluded_fraction=float((~g_included).float().mean()))
    for j, name in enumerate(neg.names):
        if name not in neg.source_rows:
            diag[f"source/{name}/fraction"] = 0.0
            continue
        rows = neg.source_rows[name]
        diag[f"source/{name}/fraction"] = 1.0 if rows is None else rows.numel() / neg.total
        diag[f"source/{name}/seconds"] = neg.seconds[name]
        diag[f"source/{name}/dup_fraction"] = counts[j, 1].item() / max(counts[j, 0].item(), 1)
        if name in REFINING_SOURCES:
            diag[f"source/{name}/accept_fraction"] = counts[j, 2].item() / counts[j, 3].item() \
                if counts[j, 3] > 0 else math.nan
        sel = slice(None) if rows is None else rows.to(g_pos.device)
        for key, v in pair_stats(g_pos[sel], g_neg[sel], g_ratio[sel], g_valid[sel]).items():
            diag[f"source/{name}/{key}"] = v
        if name == "hnm" and g_level is not None:
            lv = g_level[sel][g_valid[sel]]
            diag[f"source/{name}/selected_level"] = float(lv.mean()) if lv.numel() else math.nan
            for level in hnm_levels(hnm_candidates, levels).unique().tolist():
                diag[f"source/hnm/selected_level_{level}"] = float((lv == level).float().mean()) \
                    if lv.numel() else math.nan
    for name in curriculum_mod.sources_of(neg.stages):  # sources of other stages: configured and realised 0 here
        diag.setdefault(f"source/{name}/fraction", 0.0)
        diag[f"source/{name}/configured"] = neg.stage.fractions().get(name, 0.0)
    return diag


def nanmean(values) -> float:
    """The mean of the finite values (NaN when there are none): a logged row averages its window's steps."""
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
