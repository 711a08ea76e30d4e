"""Negative sources. Every source returns clean-space candidates y_neg, detached; only the framework noises them.

The training step (ebmtool.training.losses) re-noises a negative with the positive's own noise:
    x_neg = sqrt(ab_t) * y_neg + sqrt(1 - ab_t) * eps_pos
so a positive and its negative differ only in their clean component.

One signature for every source: `generate(source, model, x, y, t, eps, sched, k, settings, gen)` returns a
`NegativeBatch` with y_neg (B, K, D), a validity mask (B, K) after the near-duplicate filter, and counts. Sources
are batched over examples and over K: the B*K rows are one batch (x, y, t and eps repeated with
`repeat_interleave`, row b*K + j is negative j of example b), so every descent step is one network call.
Everything is generated, refined and scored at the positive's own level t.

Sources (the reference's negative, and variants that must not flip the descent sign, share noise wrongly or
score at the wrong level):
- ired     the reference: z = sqrt(ab_t) y + sqrt(1-ab_t) * 3 eps, 2 descent steps (1x, 2x), clamp(z/sqrt(ab_t), +-2).
- anm      adversarial: start from the ired start mapped to clean space, then projected descent on the energy the
           loss will actually see (the re-noised point, positive's noise), inside an RMS radius around the start.
- hnm      candidates started at several noise levels, refined by descent at t, selected by a deception score
           z(-E) + lambda * z(RMS(y_cand - y)), both z-scored over the C candidates of one negative (low energy,
           far from the ground truth in clean space; `standardise`).
- gaussian control: y + scale * N(0, 1), clamped.
Negative j = 0 of each example starts from the positive's own noise eps (so K = 1 ired is exactly the reference);
j >= 1 start from fresh draws of `gen`. Near-duplicates (RMS(y_neg - y) <= dup_threshold) are marked invalid and
counted; the caller never uses them.

Masks (given entries, e.g. Sudoku's given cells): every source keeps them. A negative's given entries equal the
positive's (y), descent re-imposes them at every step, and the framework re-imposes sqrt(ab_t) x on the
re-noised point. Discrete tasks use a clean box of +-1 (`clean_clamp`) instead of +-2; their `ired` source is
the task's own reference negative (ebmtool.training.negatives.discrete_reference), not this module's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ebmtool.diffusion import Schedule, descend, impose_mask, noised

CLAMP_MODES = ("per-example", "first-example")
FLOOR_MARGIN = 1e-4  # floor_kappa places a moved negative at kappa = floor * (1 + this)
CLEAN_CLAMP = 2.0  # continuous answers live in [-2, 2] (the reference's clean-space clamp)
DISCRETE_CLAMP = 1.0  # discrete answers are one-hot +-1: their negatives stay in [-1, 1]


def ired_negative(model, x, y, t, eps, sched: Schedule, *, steps: int = 2, noise_scale: float = 3.0,
                  clamp_mode: str = "per-example", mask=None) -> torch.Tensor:
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


@dataclass(frozen=True)
class NegativeSettings:
    """Hyper-parameters of every source (resolved from TrainConfig; each one is read by its source)."""

    ired_steps: int = 2
    ired_noise: float = 3.0
    clamp_mode: str = "per-example"
    anm_steps: int = 5
    anm_step_size: float = 1.0  # multiplies eta_t
    anm_radius: float = 1.0  # RMS distance from the start, clean space
    anm_noise: float = 1.0  # start noise scale (ired uses 3 eps)
    hnm_candidates: int = 4  # candidates per negative, at evenly spaced start levels 0..T-1
    hnm_steps: int = 2
    hnm_lambda: float = 1.0
    hnm_select: str = "top"  # per negative: the best-scoring candidate ("top"), or one drawn ∝ softmax(score) ("sample")
    gaussian_scale: float = 1.0
    dup_threshold: float = 1e-3  # RMS(y_neg - y) at or below this is a near-duplicate of the positive
    clean_clamp: float = CLEAN_CLAMP  # clean-space box of anm/hnm/gaussian negatives (1 for discrete tasks)
    kappa_floor: float = 0.0  # every negative is kept at kappa >= this (floor_kappa); 0 = no floor


@dataclass
class NegativeBatch:
    y_neg: torch.Tensor  # (B, K, D) clean space, detached
    valid: torch.Tensor  # (B, K) bool: False = near-duplicate, dropped
    candidates: int  # candidates examined (B*K, or B*K*C for hnm)
    duplicates: int | torch.Tensor  # candidates dropped as near-duplicates (a count on the device in training)
    info: dict = field(default_factory=dict)  # per-source extras (hnm: selected start level per negative)


def repeat_rows(v: torch.Tensor, k: int) -> torch.Tensor:
    """Each row repeated k times in place (row i -> rows i*k .. i*k+k-1): the layout of (B, K, D) negatives."""
    return v if k == 1 else v.repeat_interleave(k, dim=0)


def start_noise(eps: torch.Tensor, k: int, gen: torch.Generator | None,
                fresh: torch.Tensor | None = None) -> torch.Tensor:
    """(B*K, D) start noises: slot 0 of each example is the positive's eps, slots >= 1 fresh draws (`fresh`,
    (B, K-1, D), or drawn from `gen`)."""
    if k == 1:
        return eps
    b, d = eps.shape
    if fresh is None:
        fresh = torch.randn((b, k - 1, d), generator=gen)
    return torch.cat([eps[:, None, :], fresh.to(eps.device)], dim=1).reshape(b * k, d)


def draw_noise(source: str, n: int, k: int, d: int, settings: "NegativeSettings",
               gen: torch.Generator | None) -> dict[str, torch.Tensor]:
    """Every random draw `source` makes for n positives, in the order it makes them, as CPU tensors whose first
    axis is the positive: {"start": (n, K-1, D)} for ired/anm (nothing when K = 1), {"delta": (n, K*C, D)} for hnm,
    {"gauss": (n, K, D)} for gaussian.

    `generate(..., noise=draw_noise(...)[rows])` equals `generate(..., gen)` on those rows of the whole batch: the
    distributed trainer draws for the global batch, as one process does, and each process keeps its rows. (hnm's
    `sample` selection also draws after scoring, a data-dependent draw that stays on `gen`.)"""
    if source in ("ired", "anm"):
        return {"start": torch.randn((n, k - 1, d), generator=gen)} if k > 1 else {}
    if source == "hnm":
        return {"delta": torch.randn((n, k * settings.hnm_candidates, d), generator=gen)}
    if source == "gaussian":
        return {"gauss": torch.randn((n, k, d), generator=gen)}
    raise ValueError(f"unknown negative source {source!r}")


def rms(a: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return a.pow(2).mean(dim=dim).sqrt()


def refine_renoised(model, x, y0, t, eps, sched: Schedule, steps: int, *, step_scale: float = 1.0,
                    radius: float | None = None, multiplier: float = 1.0, box: float = CLEAN_CLAMP, mask=None):
    """Projected energy descent on the point the loss scores: z = sqrt(ab_t) y + sqrt(1-ab_t) eps (eps = the
    positive's noise), starting at clean y0. The projection keeps y inside an RMS `radius` around y0 (if given)
    and inside the clean box +-`box`; with a mask, given entries keep y0's value in clean space and the scored
    point carries sqrt(ab_t) x there (as the loss sees it). Returns (clean y, its energy at the re-noised point),
    detached.

    Descending the re-noised point's energy is what makes the negative hard for the loss that uses it; the
    acceptance rule of `descend` guarantees the energy never rises. The third value counts each row's accepted
    descent steps: a source whose steps are all rejected leaves its negatives where they started.
    """
    sab, s1 = sched.sqrt_ab[t][:, None], sched.sqrt_1mab[t][:, None]
    noise = s1 * eps

    def project(z):
        yc = (z - noise) / sab
        if radius is not None:
            delta = yc - y0
            r = rms(delta)[:, None]
            delta = delta * torch.clamp(radius / r.clamp_min(1e-12), max=1.0)
            yc = y0 + delta
        yc = yc.clamp(-box, box)
        if mask is not None:
            yc = torch.where(mask > 0, y0, yc)
        return sab * yc + noise

    z0 = impose_mask(sched, sab * y0 + noise, t, x, mask)
    z, e, accepted = descend(model, x, z0, t, sched, steps, multiplier=multiplier, clamp=None,
                             step_scale=step_scale, project=project, mask=mask)
    y = ((z - noise) / sab).clamp(-box, box)
    if mask is not None:
        y = torch.where(mask > 0, y0, y)
    return y.detach(), e, accepted


def _keep_given(y_cand, y, mask):
    """Given entries (mask = 1) of a clean-space candidate set to the positive's ((B, K, D) candidates take a
    (B, D) mask)."""
    if mask is None:
        return y_cand
    return torch.where((mask if y_cand.dim() == mask.dim() else mask[:, None, :]) > 0, y, y_cand)


def _ired(model, x, y, t, eps, sched, k, s: NegativeSettings, gen, mask=None, noise=None):
    noise = start_noise(eps, k, gen, noise.get("start"))
    return ired_negative(model, repeat_rows(x, k), repeat_rows(y, k), repeat_rows(t, k), noise, sched, steps=s.ired_steps,
                         noise_scale=s.ired_noise, clamp_mode=s.clamp_mode,
                         mask=None if mask is None else repeat_rows(mask, k)), {}


def _clean_start(sched, y, t, noise, scale, box=CLEAN_CLAMP):
    """The ired start z = sqrt(ab_t) y + sqrt(1-ab_t) scale * noise, expressed in clean space and clamped."""
    return (noised(sched, y, t, scale * noise) / sched.sqrt_ab[t][:, None]).clamp(-box, box)


def _anm(model, x, y, t, eps, sched, k, s: NegativeSettings, gen, mask=None, noise=None):
    xr, yr, tr, er = repeat_rows(x, k), repeat_rows(y, k), repeat_rows(t, k), repeat_rows(eps, k)
    mr = None if mask is None else repeat_rows(mask, k)
    start = start_noise(eps, k, gen, noise.get("start"))
    y0 = _keep_given(_clean_start(sched, yr, tr, start, s.anm_noise, s.clean_clamp), yr, mr)
    y_neg, _, accepted = refine_renoised(model, xr, y0, tr, er, sched, s.anm_steps, step_scale=s.anm_step_size,
                                         radius=s.anm_radius, box=s.clean_clamp, mask=mr)
    return y_neg, _acceptance(accepted, s.anm_steps)


def _acceptance(accepted: torch.Tensor, steps: int) -> dict:
    """Accepted and attempted descent steps of a source's refinement (counted on device, read when logged)."""
    return {"accepted": accepted.sum(), "attempted": accepted.numel() * steps}


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


def _hnm(model, x, y, t, eps, sched, k, s: NegativeSettings, gen, mask=None, noise=None):
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
    y_c, e_c, accepted = refine_renoised(model, xr, _keep_given(y0, yr, mr), tr, er, sched, s.hnm_steps,
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
                   "candidates": b * kc, **_acceptance(accepted, s.hnm_steps)}


def _gaussian(model, x, y, t, eps, sched, k, s: NegativeSettings, gen, mask=None, noise=None):
    yr = repeat_rows(y, k)
    y_neg = (yr + s.gaussian_scale * noise["gauss"].reshape(yr.shape).to(y.device)).clamp(-s.clean_clamp,
                                                                                           s.clean_clamp)
    return _keep_given(y_neg, yr, None if mask is None else repeat_rows(mask, k)), {}


SOURCE_FUNCTIONS = {"ired": _ired, "anm": _anm, "hnm": _hnm, "gaussian": _gaussian}


@torch.no_grad()
def generate(source: str, model, x, y, t, eps, sched: Schedule, k: int, settings: NegativeSettings,
             gen: torch.Generator | None = None, mask: torch.Tensor | None = None,
             noise: dict[str, torch.Tensor] | None = None) -> NegativeBatch:
    """K negatives per positive from `source`, in clean space, with the near-duplicate filter applied.

    eps is the positive's own noise (B, D): sources refine and score at (t, eps) and the framework re-noises
    with it. `gen` supplies every extra random draw (fresh start noises for j >= 1, gaussian and hnm noise).
    `mask` (B, D), given entries = 1: every source returns negatives whose given entries equal y's.
    `noise` (from `draw_noise`, possibly some rows of a larger draw) replaces the draws from `gen`.
    """
    if source not in SOURCE_FUNCTIONS:
        raise ValueError(f"unknown negative source {source!r}")
    b, d = y.shape
    if noise is None:
        noise = draw_noise(source, b, k, d, settings, gen)
    y_neg, info = SOURCE_FUNCTIONS[source](model, x, y, t, eps, sched, k, settings, gen, mask=mask, noise=noise)
    y_neg = y_neg.detach().view(b, k, d)
    valid = rms(y_neg - y[:, None, :]) > settings.dup_threshold
    cands = info.pop("candidates", b * k)
    # hnm counts dropped candidates (a selected near-duplicate implies all its candidates were); others count picks
    dups = info.pop("candidate_duplicates", None)
    dups = (~valid).sum() if dups is None else dups  # a tensor: read when logged, not here
    return NegativeBatch(y_neg, valid, cands, dups, info)


def noise_to_signal(sched: Schedule, t: torch.Tensor) -> torch.Tensor:
    """c_t = sqrt(1 - ab_t) / sqrt(ab_t) per example (B,): the clean-space length of one unit of noise at t."""
    return sched.sqrt_1mab[t] / sched.sqrt_ab[t]


def kappa(y_neg: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, c: torch.Tensor,
          mask: torch.Tensor | None = None) -> torch.Tensor:
    """kappa (B, K) = ||x- - sqrt(ab_t) y|| / ||x+ - sqrt(ab_t) y||, each negative re-noised with its positive's eps.

    When the answer is a function of the problem the true noisy density at t is N(sqrt(ab_t) y, (1 - ab_t) I), so
    kappa < 1 means the "negative" is MORE probable than its positive: a false negative, which the contrastive
    loss teaches the model to rank backwards. Divided by sqrt(ab_t) both lengths live in clean space:
    ||y- - y + c_t eps|| / ||c_t eps||. With a mask only the free entries (mask = 0) count."""
    ce = c[:, None] * eps
    u = y_neg - y[:, None, :] + ce[:, None, :]
    if mask is not None:
        free = 1 - mask
        ce, u = ce * free, u * free[:, None, :]
    return u.norm(dim=2) / ce.norm(dim=1, keepdim=True).clamp_min(1e-30)


def floor_kappa(y_neg: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, c: torch.Tensor, floor: float,
                box: float, mask: torch.Tensor | None = None):
    """Positive-aware negatives: every negative with kappa < floor is moved out to kappa = floor. No network call.

    In clean units the noisy mode sqrt(ab_t) y sits at q = y - c_t eps and kappa = |y- - q| / (c_t |eps|). A
    negative inside the floor is first moved radially away from q out to the floor's sphere (the smallest move);
    if the clean box cuts that point back inside, it moves instead along the segment from the clamped point to the
    box corner farthest from q, just as far as the floor needs (the box is convex: the whole segment is inside).
    Given entries (mask = 1) keep y's value. A negative sitting on q moves along its positive's own noise.

    Returns (y_neg', moved, short): `moved` (B, K) marks the negatives that were inside the floor, `short` those
    that no point of the box lifts to the floor (at high noise levels the box can be too small), which the caller
    must drop: the floor never leaves a negative below it."""
    free = torch.ones_like(y) if mask is None else 1 - mask
    ce = c[:, None] * eps * free
    q = (y - ce)[:, None, :]  # the noisy mode in clean units (given entries: y itself)
    u = (y_neg - q) * free[:, None, :]
    reach = (floor * (1 + FLOOR_MARGIN) * ce.norm(dim=1))[:, None]  # (B, 1): just outside the floor's sphere
    r = u.norm(dim=2)  # (B, K)
    moved = r < floor * ce.norm(dim=1)[:, None]
    own = (ce / ce.norm(dim=1, keepdim=True).clamp_min(1e-30))[:, None, :].expand_as(u)
    direction = torch.where((r > 1e-12 * reach)[..., None], u / r.clamp_min(1e-30)[..., None], own)
    radial = _keep_given((q + direction * reach[..., None]).clamp(-box, box), y[:, None, :], mask)
    far = _keep_given(torch.where(q < 0, box, -box).expand_as(u), y[:, None, :], mask)  # the farthest corner
    d0, v = (radial - q) * free[:, None, :], (far - radial) * free[:, None, :]
    a, b = (v * v).sum(2), 2 * (d0 * v).sum(2)
    c0 = (d0 * d0).sum(2) - reach ** 2  # < 0 where the clamp pulled the radial point back inside the floor
    lam = ((-b + (b * b - 4 * a * c0).clamp_min(0).sqrt()) / (2 * a).clamp_min(1e-30)).clamp(0, 1)
    lifted = torch.where((c0 > 0)[..., None], radial, radial + lam[..., None] * (far - radial))
    y_out = torch.where(moved[..., None], lifted.clamp(-box, box), y_neg)
    short = moved & (kappa(y_out, y, eps, c, mask) < floor)
    return y_out.detach(), moved, short


def renoise(sched: Schedule, y_neg: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """x_neg (B, K, D) = sqrt(ab_t) y_neg + sqrt(1-ab_t) eps_pos, the same eps for all K negatives of a positive."""
    return sched.sqrt_ab[t][:, None, None] * y_neg + sched.sqrt_1mab[t][:, None, None] * eps[:, None, :]
