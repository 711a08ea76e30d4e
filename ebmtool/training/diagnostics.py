"""What a run logs about its negatives and gradients, computed from tensors the step already has.

Every statistic describes the whole (global) batch: under several processes the rows are gathered first, so
the logged numbers equal a one-process run's.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ebmtool.negatives import curriculum as curriculum_mod
from ebmtool.runtime import distributed as dist
from ebmtool.negatives import sans as sans_mod
from ebmtool.negatives import masked_mean, registry


def pair_stats(e_pos, e_neg, norm_ratio, valid, kappa, floored=None) -> dict[str, torch.Tensor]:
    """Means over the valid (positive, negative) pairs: E+, E-, margin E- - E+, p_hard = P(E- < E+), the
    fraction with an active gradient (softplus slope sigmoid(E+ - E-) > 0.01), |x-|/|x+|, and the pairs'
    geometry: kappa (ebmtool.negatives.kappa), the false-negative fraction P(kappa < 1), and p_hard split into
    p_hard_true = P(E- < E+, kappa >= 1) (truly hard: a less probable negative ranked below its positive) and
    p_hard_false = P(E- < E+, kappa < 1) (a more probable "negative" ranked below its positive: the model is
    right, the label is wrong). `floored_fraction`: the share of all pairs moved out to the kappa floor.
    0-d tensors on the device (NaN without a valid pair), read by the logger once per row."""
    ep = e_pos[:, None].expand_as(e_neg)
    nan = torch.full((), math.nan, device=e_pos.device)
    hard, false_neg = e_neg < ep, kappa < 1
    out = {"energy_pos": torch.where(valid.any(), e_pos.mean(), nan), "energy_neg": masked_mean(e_neg, valid),
           "margin": masked_mean(e_neg - ep, valid), "p_hard": masked_mean(hard.float(), valid),
           "p_hard_true": masked_mean((hard & ~false_neg).float(), valid),
           "p_hard_false": masked_mean((hard & false_neg).float(), valid),
           "active_fraction": masked_mean((torch.sigmoid(ep - e_neg) > 0.01).float(), valid),
           "norm_ratio": masked_mean(norm_ratio, valid), "kappa": masked_mean(kappa, valid),
           "false_negative_fraction": masked_mean(false_neg.float(), valid)}
    if floored is not None:
        out["floored_fraction"] = floored.float().mean() if floored.numel() else nan
    return out


def gathered(e_pos, pairs: dict, level, counts, sharded: bool):
    """The pair tensors (each (B, K)) and source counts of the whole batch: this process's own, or every
    process's rows gathered (one all-gather of the packed columns, one all-reduce of the counts)."""
    if not (sharded and dist.active()):
        return e_pos, pairs, level, counts
    names = list(pairs)
    cols = [e_pos[:, None]] + [pairs[n] for n in names] + ([level] if level is not None else [])
    widths = [c.shape[1] for c in cols]
    packed = dist.all_gather_rows(torch.cat([c.double() for c in cols], dim=1))
    parts = list(torch.split(packed, widths, dim=1))
    out = {}
    for n, a in zip(names, parts[1:1 + len(names)]):
        out[n] = a > 0.5 if pairs[n].dtype == torch.bool else a.float()
    return parts[0][:, 0].float(), out, parts[-1] if level is not None else None, dist.all_reduce_sum(counts)


def energy_diagnostics(neg, e_pos, e_neg, norm_ratio, kappa, w, sharded: bool, settings, levels: int):
    """The logged diagnostics of one step's energy term: pair statistics overall and per source, SANS weight
    entropy/ESS, near-duplicate and excluded fractions, refinement acceptance and each source's own diagnostics (hnm's selected levels).
    `neg` is the step's training.negatives.Negatives. Values are 0-d tensors on the device (or floats the host
    already knows): nothing here waits for the device; the logger reads a row's values in one transfer."""
    pairs = {"e_neg": e_neg, "norm_ratio": norm_ratio, "valid": neg.valid, "w": w, "kappa": kappa}
    if neg.floored is not None:
        pairs["floored"] = neg.floored
    g_pos, g, g_level, counts = gathered(e_pos, pairs, neg.level, neg.counts, sharded)
    g_valid, g_floored = g["valid"], g.get("floored")
    g_included = g_valid.any(dim=1)
    diag = dict(neg.diag)
    diag.update(pair_stats(g_pos, g["e_neg"], g["norm_ratio"], g_valid, g["kappa"], g_floored))
    diag.update(sans_mod.weight_stats(g["w"], g_included))
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
        source = registry.get(name)
        if source.refines:  # NaN where no step was attempted (0 / 0)
            diag[f"source/{name}/accept_fraction"] = counts[j, 2] / counts[j, 3]
        sel = slice(None) if rows is None else rows.to(g_pos.device)
        stats = pair_stats(g_pos[sel], g["e_neg"][sel], g["norm_ratio"][sel], g_valid[sel], g["kappa"][sel],
                           None if g_floored is None else g_floored[sel])
        for key, v in stats.items():
            diag[f"source/{name}/{key}"] = v
        if source.diagnose is not None and g_level is not None:
            for key, v in source.diagnose(g_level[sel], g_valid[sel], settings, levels).items():
                diag[f"source/{name}/{key}"] = v
    for name in curriculum_mod.sources_of(neg.stages):  # sources of other stages: configured and realised 0 here
        diag.setdefault(f"source/{name}/fraction", 0.0)
        diag[f"source/{name}/configured"] = neg.stage.fractions().get(name, 0.0)
    return diag


def level_losses(loss: torch.Tensor, t: torch.Tensor, levels: int, sharded: bool) -> dict[str, torch.Tensor]:
    """The denoising loss per noise level, `loss_denoise_t<i>` (NaN for a level the batch did not draw): the
    batch mean hides levels where the denoiser is much worse than at others. Under several processes the sums
    and counts are those of the whole batch."""
    sums = torch.zeros(2, levels, dtype=torch.float64, device=loss.device)
    sums[0].index_add_(0, t, loss.detach().double())
    sums[1].index_add_(0, t, torch.ones_like(loss, dtype=torch.float64))
    if sharded and dist.active():
        sums = dist.all_reduce_sum(sums)
    means = sums[0] / sums[1]
    return {f"loss_denoise_t{i}": means[i] for i in range(levels)}


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


def backward_terms(model, parts, measure: bool) -> dict[str, torch.Tensor]:
    """Back-propagate loss_total (of `parts`, a training.losses.Losses with the energy term) as its two terms, the denoising mean and the energy term, at EVERY step, and
    leave their sum in the parameters' .grad. Always the same arithmetic, so a run's weights never depend on
    which steps were measured (the log cadence, where a run was split and resumed). The two graphs share only
    the parameters: traversing them apart costs what one backward of their sum costs.

    With `measure` (a logged row's last step) also return, as 0-d tensors: the energy term's gradient-norm share
    ||g_E|| / (||g_mse|| + ||g_E||), the cosine between the two gradients (negative: the energy term pushes the
    parameters against the denoiser) and their norm ratio ||g_E|| / ||g_mse||. Under several processes these
    are of the whole batch's gradients, as for the update."""
    params = [p for p in model.parameters() if p.requires_grad]
    terms = (parts.loss_denoise.mean(), parts.energy_term)
    g_mse, g_e = (torch.autograd.grad(term, params, retain_graph=i == 0, allow_unused=True)
                  for i, term in enumerate(terms))
    for p, a, b in zip(params, g_mse, g_e):
        if a is not None or b is not None:  # a parameter neither term reaches keeps grad None, as in one backward
            p.grad = a if b is None else b if a is None else a + b
    if not measure:
        return {}
    flat = []
    for gs in (g_mse, g_e):
        gs = [torch.zeros_like(p) if g is None else g for g, p in zip(gs, params)]  # the same list on every process
        dist.average_(gs)  # several processes: the whole batch's gradient (in place; .grad holds the sum already)
        flat.append(torch.cat([g.reshape(-1) for g in gs]))
    n_mse, n_e = (torch.linalg.vector_norm(f) for f in flat)
    return {"grad_share_energy": n_e / (n_mse + n_e), "grad_cosine": (flat[0] @ flat[1]) / (n_mse * n_e),
            "grad_ratio_energy": n_e / n_mse}
