"""What every negative source shares: the batch it returns, the row layout of K negatives, start noises, the
projected descent on the re-noised energy, and the framework's geometry of a negative (kappa, the kappa floor,
re-noising). A source's own code is in its module (ired.py, anm.py, hnm.py, gaussian.py); the registry
(registry.py) dispatches to it.

The training step (ebmtool.training.losses) re-noises a negative with the positive's own noise:
    x_neg = sqrt(ab_t) * y_neg + sqrt(1 - ab_t) * eps_pos
so a positive and its negative differ only in their clean component.

Layout: the B*K rows of K negatives per positive are one batch (x, y, t and eps repeated with `repeat_interleave`,
row b*K + j is negative j of example b), so every descent step is one network call. Negative j = 0 of each
example starts from the positive's own noise eps (so K = 1 ired is exactly the reference); j >= 1 start from fresh
draws. Near-duplicates (RMS(y_neg - y) <= dup_threshold) are marked invalid and counted; the caller never uses
them.

Masks (given entries, e.g. Sudoku's given cells): every source keeps them. A negative's given entries equal the
positive's (y), descent re-imposes them at every step, and the framework re-imposes sqrt(ab_t) x on the
re-noised point. Discrete tasks use a clean box of +-1 (`clean_clamp`) instead of +-2; their `ired` source is
the task's own reference negative (ebmtool.training.negatives.discrete_reference), not ired.py's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ebmtool.method.diffusion import Schedule, descend, impose_mask, noised

CLAMP_MODES = ("per-example", "first-example")
FLOOR_MARGIN = 1e-4  # floor_kappa places a moved negative at kappa = floor * (1 + this)
CLEAN_CLAMP = 2.0  # continuous answers live in [-2, 2] (the reference's clean-space clamp)
DISCRETE_CLAMP = 1.0  # discrete answers are one-hot +-1: their negatives stay in [-1, 1]
DUP_THRESHOLD = 1e-3  # RMS(y_neg - y) at or below this is a near-duplicate of the positive (training and mining)


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


def keep_given(y_cand, y, mask):
    """Given entries (mask = 1) of a clean-space candidate set to the positive's ((B, K, D) candidates take a
    (B, D) mask)."""
    if mask is None:
        return y_cand
    return torch.where((mask if y_cand.dim() == mask.dim() else mask[:, None, :]) > 0, y, y_cand)


def clean_start(sched, y, t, noise, scale, box=CLEAN_CLAMP):
    """The ired start z = sqrt(ab_t) y + sqrt(1-ab_t) scale * noise, expressed in clean space and clamped."""
    return (noised(sched, y, t, scale * noise) / sched.sqrt_ab[t][:, None]).clamp(-box, box)


def acceptance(accepted: torch.Tensor, steps: int) -> dict:
    """Accepted and attempted descent steps of a source's refinement (counted on device, read when logged)."""
    return {"accepted": accepted.sum(), "attempted": accepted.numel() * steps}


def masked_mean(v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of v over the True entries of mask, as a 0-d tensor on v's device (NaN when there are none):
    no boolean indexing, so no host round-trip."""
    return torch.where(mask, v, torch.zeros((), dtype=v.dtype, device=v.device)).sum() / mask.sum()


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
    radial = keep_given((q + direction * reach[..., None]).clamp(-box, box), y[:, None, :], mask)
    far = keep_given(torch.where(q < 0, box, -box).expand_as(u), y[:, None, :], mask)  # the farthest corner
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
