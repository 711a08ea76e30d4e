"""Statistics of a comparison: pure numpy/scipy, seeded, with no torch and no I/O.

Conventions (the statistics an honest comparison of training methods needs):

- Differences are always signed and always (variant - baseline), per problem (paired: same problems, same noise).
- The primary paired test over problems is the **sign-flip permutation test** of the mean difference (two-sided;
  exact over all 2^n sign patterns for n <= EXACT_MAX, Monte Carlo with a seeded generator otherwise, with the
  (1 + hits) / (1 + draws) estimate so a p-value is never 0). The Wilcoxon signed-rank test (scipy) is reported
  beside it as a secondary check, never used for the verdict.
- Confidence intervals are percentile bootstraps with a seeded generator: the same inputs and seed give the same
  interval, bit for bit.
- Effect size: paired d_z = mean(d) / sd(d) (sd with ddof=1). It is 0 when every difference is 0 and `nan`
  ("undefined") when the differences are a non-zero constant; it is never +-inf.
- Several variants against one baseline: exactly one multiplicity correction, Holm's step-down, applied to the
  p-values and then compared with alpha (not also with alpha/m).
- The verdict uses the metric's declared direction and the *signed* interval: "better" needs the whole interval of
  (variant - baseline) on the better side **and** the corrected p below alpha; "worse" is symmetric; anything else
  is "no detectable difference". A worse result can therefore never read as better.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass

import numpy as np


def scipy_stats():
    """scipy.stats, imported on first use (it costs half a second, and every process, torchrun's training workers
    too, imports the command line, which imports this module)."""
    from scipy import stats

    return stats


EXACT_MAX = 16  # up to 2^16 = 65,536 sign patterns: enumerate them all
DIRECTIONS = ("lower", "higher")
BETTER, WORSE, NO_DIFFERENCE = "better", "worse", "no detectable difference"
PRIMARY_TEST = "paired sign-flip permutation test of the mean difference (two-sided)"
SECONDARY_TEST = "Wilcoxon signed-rank (scipy, two-sided; zero differences dropped)"
SEED_TEST_PAIRED = "paired t-test across seeds (replicates matched by seed)"
SEED_TEST_WELCH = "Welch t-test across seeds (unequal variances; seeds not matched)"


def _vector(x, name="values") -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    if a.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} has non-finite entries")
    return a


def _check_level(confidence: float):
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")


def bootstrap_mean_ci(x, *, confidence: float = 0.95, n_boot: int = 2000, seed: int = 0,
                      chunk: int = 256) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap interval of the mean, resampling with a seeded generator.

    Resamples are drawn in chunks of `chunk` rows, so memory stays O(chunk * n) for any n_boot.
    """
    a = _vector(x)
    _check_level(confidence)
    if n_boot < 1:
        raise ValueError("n_boot must be at least 1")
    rng = np.random.default_rng(seed)
    n = a.size
    means = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        m = min(chunk, n_boot - start)
        means[start:start + m] = a[rng.integers(0, n, size=(m, n))].mean(axis=1)
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(means, [tail, 1 - tail])
    mean = float(a.mean())
    # quantiles of a constant vector can differ from the mean in the last bit; keep the mean inside its interval
    return mean, float(min(lo, mean)), float(max(hi, mean))


def sign_flip_test(d, *, n_perm: int = 10000, seed: int = 0, exact_max: int = EXACT_MAX) -> dict:
    """Two-sided sign-flip permutation test of H0: the paired differences are symmetric about 0.

    Statistic |mean(s * d)| over sign patterns s. Exact for n <= exact_max, else Monte Carlo with `n_perm` seeded
    draws and p = (1 + #{|T*| >= |T|}) / (1 + n_perm). Differences of exactly 0 contribute nothing either way.
    """
    d = _vector(d, "differences")
    n = d.size
    observed = abs(d.mean())
    tol = 1e-12 * max(1.0, float(np.abs(d).max()))
    if not np.any(d):
        return {"p": 1.0, "method": "exact", "n": n, "draws": 1}
    if n <= exact_max:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
        stats = np.abs(signs @ d) / n
        return {"p": float(np.mean(stats >= observed - tol)), "method": "exact", "n": n, "draws": len(signs)}
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, n_perm, 1000):
        m = min(1000, n_perm - start)
        signs = rng.integers(0, 2, size=(m, n)) * 2.0 - 1.0
        hits += int(np.sum(np.abs(signs @ d) / n >= observed - tol))
    return {"p": (1 + hits) / (1 + n_perm), "method": "monte carlo", "n": n, "draws": n_perm}


def wilcoxon_p(d) -> float:
    """Two-sided Wilcoxon signed-rank p-value (zero differences dropped); 1.0 when every difference is 0."""
    d = _vector(d, "differences")
    if not np.any(d):
        return 1.0
    return float(scipy_stats().wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)


def effect_size_dz(d) -> float:
    """Paired d_z = mean(d) / sd(d). 0 when all differences are 0; nan (undefined) for a constant non-zero shift
    or a single difference; never +-inf (identical seeds must not produce a spurious +-10)."""
    d = _vector(d, "differences")
    mean = float(d.mean())
    if not np.any(d):
        return 0.0
    if d.size < 2:
        return float("nan")
    sd = float(d.std(ddof=1))
    if sd <= 1e-12 * max(1.0, abs(mean)):
        return float("nan")
    return mean / sd


def holm(pvalues) -> list[float]:
    """Holm's step-down adjusted p-values (monotone, capped at 1), in the input order. NaN stays NaN."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    running = 0.0
    for rank, i in enumerate(ok[np.argsort(p[ok], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def verdict(ci_low: float, ci_high: float, p_adjusted: float, *, direction: str = "lower",
            alpha: float = 0.05) -> str:
    """Words for (variant - baseline): 'better', 'worse' or 'no detectable difference'.

    direction: 'lower' when a lower metric is better (MSE), 'higher' for accuracies. Better needs the whole
    interval on the better side of 0 AND p_adjusted < alpha; worse is the mirror image. NaN -> no difference.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if not all(math.isfinite(v) for v in (ci_low, ci_high, p_adjusted)) or ci_low > ci_high:
        return NO_DIFFERENCE
    if not p_adjusted < alpha:
        return NO_DIFFERENCE
    below, above = ci_high < 0, ci_low > 0
    if direction == "lower":
        return BETTER if below else WORSE if above else NO_DIFFERENCE
    return BETTER if above else WORSE if below else NO_DIFFERENCE


@dataclass
class PairedResult:
    """One variant against the baseline over the same problems."""
    n: int
    mean_baseline: float
    mean_variant: float
    mean_diff: float  # variant - baseline
    ci_low: float
    ci_high: float
    relative_diff: float  # mean_diff / mean_baseline (nan when the baseline mean is 0)
    p: float  # primary test (sign-flip)
    p_method: str
    p_wilcoxon: float
    d_z: float
    n_variant_better: int
    n_variant_worse: int
    n_tied: int

    def to_dict(self):
        return asdict(self)


def paired_comparison(baseline, variant, *, direction: str = "lower", confidence: float = 0.95,
                      n_boot: int = 2000, n_perm: int = 10000, seed: int = 0) -> PairedResult:
    """Everything about (variant - baseline) per problem, except the corrected p and the verdict (see `verdict`)."""
    b, v = _vector(baseline, "baseline"), _vector(variant, "variant")
    if b.shape != v.shape:
        raise ValueError(f"paired vectors differ in length ({b.size} vs {v.size})")
    d = v - b
    mean, lo, hi = bootstrap_mean_ci(d, confidence=confidence, n_boot=n_boot, seed=seed)
    test = sign_flip_test(d, n_perm=n_perm, seed=seed)
    better = d < 0 if direction == "lower" else d > 0
    worse = d > 0 if direction == "lower" else d < 0
    mb = float(b.mean())
    return PairedResult(
        n=int(d.size), mean_baseline=mb, mean_variant=float(v.mean()), mean_diff=mean, ci_low=lo, ci_high=hi,
        relative_diff=mean / mb if mb != 0 else float("nan"), p=test["p"], p_method=test["method"],
        p_wilcoxon=wilcoxon_p(d), d_z=effect_size_dz(d), n_variant_better=int(better.sum()),
        n_variant_worse=int(worse.sum()), n_tied=int((d == 0).sum()),
    )


def across_seed_test(baseline: dict[int, float], variant: dict[int, float], *, confidence: float = 0.95) -> dict:
    """Seeds as replicates: per-seed metric means of two groups, {seed: mean}.

    Same seed set in both (>= 2): paired t-test on the per-seed differences, t interval of their mean.
    Otherwise (>= 2 each): Welch t-test and Welch interval of the difference of means. Returns a dict with the
    test used, mean difference (variant - baseline), interval, p and t; p is nan when the test is undefined
    (e.g. every per-seed difference identical), which the verdict reads as no detectable difference.
    """
    _check_level(confidence)
    bs, vs = sorted(baseline), sorted(variant)
    if len(bs) < 2 or len(vs) < 2:
        return {"test": None, "reason": "needs at least 2 seeds per group"}
    if bs == vs:
        d = np.array([variant[s] - baseline[s] for s in bs], dtype=np.float64)
        n = d.size
        mean, sd = float(d.mean()), float(d.std(ddof=1))
        if sd <= 1e-12 * max(1.0, abs(mean)):
            t, p, half = float("nan"), (1.0 if mean == 0 else float("nan")), 0.0
        else:
            se = sd / math.sqrt(n)
            t = mean / se
            p = float(2 * scipy_stats().t.sf(abs(t), n - 1))
            half = float(scipy_stats().t.ppf(0.5 + confidence / 2, n - 1) * se)
        return {"test": SEED_TEST_PAIRED, "seeds": bs, "n_seeds": n, "mean_diff": mean, "ci_low": mean - half,
                "ci_high": mean + half, "t": t, "p": p, "df": n - 1, "sd_diff": sd}
    a = np.array([baseline[s] for s in bs], dtype=np.float64)
    b = np.array([variant[s] for s in vs], dtype=np.float64)
    mean = float(b.mean() - a.mean())
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    if se <= 1e-12 * max(1.0, abs(mean)):
        t, p, half, df = float("nan"), (1.0 if mean == 0 else float("nan")), 0.0, float("nan")
    else:
        df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
        t = mean / se
        p = float(2 * scipy_stats().t.sf(abs(t), df))
        half = float(scipy_stats().t.ppf(0.5 + confidence / 2, df) * se)
    return {"test": SEED_TEST_WELCH, "seeds_baseline": bs, "seeds_variant": vs, "mean_diff": mean,
            "ci_low": mean - half, "ci_high": mean + half, "t": t, "p": p, "df": df}


def mean_sd(values) -> tuple[float, float]:
    """Mean and sample SD (ddof=1; 0 for a single value)."""
    a = _vector(values)
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0
