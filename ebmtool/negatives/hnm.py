"""hnm, hard negative mining: candidates started at several noise levels, refined by descent at t, selected by a
deception score z(-E) + lambda * z(RMS(y_cand - y)), both z-scored over the C candidates of one negative (low
energy, far from the ground truth in clean space; `standardise`). The source `mine-negatives` uses by default,
with its own offline flags (--candidates, --refine-steps, --lambda, --select)."""

from __future__ import annotations

import functools
import math

import torch

from ebmtool.method.diffusion import noised
from ebmtool.negatives.common import acceptance, keep_given, masked_mean, refine_renoised, repeat_rows, rms
from ebmtool.negatives.registry import NegativeSource, Setting, register

SELECT = ("top", "sample")  # per negative: the best-scoring candidate, or one drawn with probability softmax(score)
SETTINGS = (
    Setting("hnm_candidates", 4, "HNM candidates per negative, at evenly spaced start levels.", type=int, minimum=0,
            exclusive=True),
    Setting("hnm_steps", 2, "HNM refinement steps.", type=int, minimum=0),
    Setting("hnm_lambda", 1.0, "HNM deception score z(-E) + lambda * z(RMS(y- - y)), z-scored over each negative's "
            "candidates."),
    Setting("hnm_select", SELECT[0], "Per negative: the best candidate, or one drawn with probability "
            "softmax(deception score).", type=str, choices=SELECT, flag=False, training=False),
)
# mine-negatives' options (recorded by that name in every negatives file's provenance) and the settings they set
MINING_OPTIONS = (("candidates", "hnm_candidates"), ("refine_steps", "hnm_steps"), ("lam", "hnm_lambda"),
                  ("select", "hnm_select"))


def standardise(v: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """z-scores of each row of v (n, C) over its valid entries; a row without spread scores 0 everywhere.

    HNM's deception score adds an energy (a sum of squares whose scale moves with the answer size, the level and
    training) to a clean-space distance: standardised within each row, lambda weighs two unitless terms and
    means the same on every task and level."""
    w = valid.to(v.dtype)
    n = w.sum(dim=1, keepdim=True).clamp_min(1)
    vv = torch.where(valid, v, torch.zeros_like(v))
    mean = vv.sum(dim=1, keepdim=True) / n
    var = (((vv - mean) * w) ** 2).sum(dim=1, keepdim=True) / n
    return (v - mean) / var.sqrt().clamp_min(1e-12)


def hnm_levels(candidates: int, levels: int = 10) -> torch.Tensor:
    """Evenly spaced start levels for the candidates of one negative (one candidate: level 0)."""
    if candidates == 1:
        return torch.zeros(1, dtype=torch.long)
    return torch.round(torch.linspace(0, levels - 1, candidates)).long()


def _draw(n: int, k: int, d: int, settings, gen) -> dict:
    """{"delta": (n, K*C, D)}: the start noise of every candidate. (The `sample` selection also draws after
    scoring, a data-dependent draw that stays on `gen`.)"""
    return {"delta": torch.randn((n, k * settings.hnm_candidates, d), generator=gen)}


def _generate(model, x, y, t, eps, sched, k, s, gen, mask=None, noise=None):
    """C candidates per negative (B*K*C rows, one batch), started at levels hnm_levels(C) in clean space,
    refined at t on the re-noised energy, scored at t; per negative the candidate with the largest
    z(-E) + lambda * z(RMS(y_cand - y)) wins, both terms z-scored over the negative's valid candidates
    (near-duplicates score -inf). Returns the selected level and the refinement's accepted steps too."""
    b, d = y.shape
    c = s.hnm_candidates
    kc = k * c
    xr, yr, tr, er = repeat_rows(x, kc), repeat_rows(y, kc), repeat_rows(t, kc), repeat_rows(eps, kc)
    mr = None if mask is None else repeat_rows(mask, kc)
    levels = hnm_levels(c, sched.levels).to(y.device)
    lv = levels.repeat(b * k)  # row (b*K + j)*C + c has level levels[c]
    delta = noise["delta"].reshape(b * kc, d).to(y.device)
    y0 = (noised(sched, yr, lv, delta) / sched.sqrt_ab[lv][:, None]).clamp(-s.clean_clamp, s.clean_clamp)
    y_c, e_c, accepted = refine_renoised(model, xr, keep_given(y0, yr, mr), tr, er, sched, s.hnm_steps,
                                         box=s.clean_clamp, mask=mr)
    dist = rms(y_c - yr)
    dup = dist <= s.dup_threshold
    ok = ~dup.view(b * k, c)
    score = (standardise(-e_c.view(b * k, c), ok) + s.hnm_lambda * standardise(dist.view(b * k, c), ok))
    score = score.masked_fill(~ok, -math.inf)
    if s.hnm_select == "top":
        pick = score.argmax(dim=1)  # batched selection, no loop over examples
    elif s.hnm_select == "sample":  # all-duplicate rows have no finite score: fall back to the argmax (dropped later)
        probs = torch.softmax(score, dim=1).nan_to_num(0.0)
        probs[probs.sum(dim=1) == 0] = 1.0
        pick = torch.multinomial(probs.cpu(), 1, generator=gen).squeeze(1).to(y.device)
    else:
        raise ValueError(f"unknown hnm selection {s.hnm_select!r}; use top or sample")
    y_sel = y_c.view(b * k, c, d)[torch.arange(b * k, device=y.device), pick]
    return y_sel, {"level": levels[pick].view(b, k), "candidate_duplicates": dup.sum(),
                   "candidates": b * kc, **acceptance(accepted, s.hnm_steps)}


@functools.lru_cache(maxsize=None)
def level_values(candidates: int, levels: int) -> tuple[int, ...]:
    """The distinct start levels of the candidates (fixed for a run: computed once, not read every step)."""
    return tuple(hnm_levels(candidates, levels).unique().tolist())


def _columns(settings, levels: int) -> tuple[str, ...]:
    return ("selected_level", *(f"selected_level_{lv}" for lv in level_values(settings.hnm_candidates, levels)))


def _diagnose(level: torch.Tensor, ok: torch.Tensor, settings, levels: int) -> dict:
    """The selected start level: its mean and the share of each level, over the valid negatives."""
    out = {"selected_level": masked_mean(level, ok)}
    for lv in level_values(settings.hnm_candidates, levels):
        out[f"selected_level_{lv}"] = masked_mean((level == lv).float(), ok)
    return out


SOURCE = register(NegativeSource("hnm", _generate, _draw, settings=SETTINGS, refines=True, per_negative="level",
                                 columns=_columns, diagnose=_diagnose, mining_options=MINING_OPTIONS))
