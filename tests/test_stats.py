"""ebmtool.analysis.stats on synthetic per-problem error vectors with known effects."""

import itertools
import math

import numpy as np
import pytest
from scipy import stats as sps

from ebmtool.analysis import stats as S


def errors(n=400, seed=0):
    rng = np.random.default_rng(seed)
    return rng.gamma(2.0, 0.01, n)  # positive, skewed: like per-problem MSE


def test_bootstrap_is_seeded_and_reproducible():
    x = errors()
    a = S.bootstrap_mean_ci(x, n_boot=500, seed=7)
    b = S.bootstrap_mean_ci(x, n_boot=500, seed=7)
    c = S.bootstrap_mean_ci(x, n_boot=500, seed=8)
    assert a == b
    assert a != c
    mean, lo, hi = a
    assert lo < mean < hi
    assert mean == pytest.approx(x.mean())


def test_bootstrap_interval_covers_the_true_mean_at_its_level():
    rng = np.random.default_rng(1)
    covered = 0
    for i in range(100):
        x = rng.normal(1.0, 1.0, 60)
        _, lo, hi = S.bootstrap_mean_ci(x, confidence=0.9, n_boot=400, seed=i)
        covered += lo <= 1.0 <= hi
    assert 78 <= covered <= 98  # nominal 90 %


def test_identical_models_give_an_interval_with_zero_and_no_verdict():
    x = errors()
    r = S.paired_comparison(x, x.copy(), seed=0)
    assert r.mean_diff == 0 and r.ci_low <= 0 <= r.ci_high
    assert r.p == 1.0 and r.p_wilcoxon == 1.0 and r.d_z == 0.0
    assert r.n_tied == x.size
    assert S.verdict(r.ci_low, r.ci_high, r.p) == S.NO_DIFFERENCE


def test_same_distribution_different_draws_is_not_a_difference():
    b = errors(seed=0)
    v = b * np.random.default_rng(5).normal(1.0, 0.05, b.size)  # noise around the baseline, no shift
    v = v - (v.mean() - b.mean())  # exactly equal means
    r = S.paired_comparison(b, v, seed=0)
    assert r.ci_low < 0 < r.ci_high
    assert S.verdict(r.ci_low, r.ci_high, r.p) == S.NO_DIFFERENCE


@pytest.mark.parametrize("direction", ["lower", "higher"])
def test_clearly_better_and_clearly_worse_are_detected(direction):
    b = errors()
    sign = -1 if direction == "lower" else 1
    better = b + sign * 0.3 * b.mean() + np.random.default_rng(2).normal(0, 0.001, b.size)
    worse = b - sign * 0.3 * b.mean() + np.random.default_rng(3).normal(0, 0.001, b.size)
    rb = S.paired_comparison(b, better, direction=direction, seed=0)
    rw = S.paired_comparison(b, worse, direction=direction, seed=0)
    assert S.verdict(rb.ci_low, rb.ci_high, rb.p, direction=direction) == S.BETTER
    assert S.verdict(rw.ci_low, rw.ci_high, rw.p, direction=direction) == S.WORSE
    assert rb.p < 1e-3 and rw.p < 1e-3
    assert np.sign(rb.d_z) == sign and np.sign(rw.d_z) == -sign


def test_a_worse_model_is_never_called_better_exhaustive():
    """Sweep shifts, noise, sizes, skew and seeds: whenever the true mean difference is worse, never 'better'."""
    rng = np.random.default_rng(11)
    seen = {S.WORSE: 0, S.NO_DIFFERENCE: 0}
    for n, shift, noise, seed in itertools.product((5, 12, 80), (1e-4, 0.002, 0.02), (1e-4, 0.01, 0.05), (0, 1)):
        b = rng.gamma(2.0, 0.01, n)
        d = shift + rng.normal(0, noise, n)
        d = d - d.mean() + shift  # the realised mean difference is exactly +shift: worse for MSE
        for direction, v in (("lower", b + d), ("higher", b - d)):
            r = S.paired_comparison(b, v, direction=direction, seed=seed, n_boot=300, n_perm=2000)
            for p in (r.p, 0.0, 1e-9):  # even with a (wrongly) tiny p-value the sign decides
                word = S.verdict(r.ci_low, r.ci_high, p, direction=direction)
                assert word != S.BETTER, (n, shift, noise, direction)
                seen[word] += 1
    assert seen[S.WORSE] > 0 and seen[S.NO_DIFFERENCE] > 0


def test_verdict_truth_table():
    v = S.verdict
    assert v(-2, -1, 0.01) == S.BETTER
    assert v(1, 2, 0.01) == S.WORSE
    assert v(-2, -1, 0.2) == S.NO_DIFFERENCE  # interval excludes 0 but the corrected p does not pass
    assert v(-1, 1, 0.001) == S.NO_DIFFERENCE  # p passes but the interval holds 0
    assert v(-2, -1, 0.05, alpha=0.05) == S.NO_DIFFERENCE  # strict p < alpha
    assert v(-2, 0, 0.001) == S.NO_DIFFERENCE  # touching 0 is not excluding it
    assert v(1, 2, 0.01, direction="higher") == S.BETTER
    assert v(-2, -1, 0.01, direction="higher") == S.WORSE
    assert v(float("nan"), 1, 0.01) == S.NO_DIFFERENCE
    assert v(-2, -1, float("nan")) == S.NO_DIFFERENCE
    with pytest.raises(ValueError):
        v(-2, -1, 0.01, direction="bigger")


def test_sign_flip_exact_matches_enumeration_and_monte_carlo_is_seeded():
    d = np.array([0.3, -0.1, 0.5, 0.2, 0.4, -0.05, 0.25])
    r = S.sign_flip_test(d)
    assert r["method"] == "exact"
    # brute force
    obs = abs(d.mean())
    count = sum(abs(np.mean(np.array(s) * d)) >= obs - 1e-15 for s in itertools.product((1, -1), repeat=d.size))
    assert r["p"] == pytest.approx(count / 2**d.size)
    big = np.random.default_rng(0).normal(0.01, 1, 300)
    a = S.sign_flip_test(big, n_perm=3000, seed=4)
    assert a == S.sign_flip_test(big, n_perm=3000, seed=4)
    assert a["method"] == "monte carlo" and 0 < a["p"] <= 1
    # the Monte Carlo p agrees with the (large-sample) t-test
    assert a["p"] == pytest.approx(sps.ttest_1samp(big, 0).pvalue, abs=0.05)
    # the smallest possible exact p-value with 3 problems is 2/8
    assert S.sign_flip_test([1.0, 2.0, 3.0])["p"] == pytest.approx(0.25)


def test_effect_size_is_never_infinite():
    assert S.effect_size_dz([0.0, 0.0, 0.0]) == 0.0
    assert math.isnan(S.effect_size_dz([0.2, 0.2, 0.2]))  # a constant shift: d_z undefined, not +inf
    assert math.isnan(S.effect_size_dz([0.2]))
    d = np.array([1.0, 2.0, 3.0])
    assert S.effect_size_dz(d) == pytest.approx(2.0 / 1.0)
    assert S.effect_size_dz(-d) == pytest.approx(-2.0)


def test_holm_matches_definition_and_applies_once():
    p = [0.01, 0.04, 0.03, 0.5]
    adj = S.holm(p)
    # sorted 0.01*4=0.04, 0.03*3=0.09, 0.04*2=0.08 -> monotone 0.09, 0.5*1 -> 0.5
    assert adj == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert S.holm([0.02]) == [0.02]
    assert S.holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])
    nan_adj = S.holm([0.01, float("nan")])
    assert nan_adj[0] == pytest.approx(0.01) and math.isnan(nan_adj[1])


def test_across_seed_paired_and_welch_agree_with_scipy():
    base = {0: 0.10, 1: 0.12, 2: 0.11, 3: 0.13}
    var = {0: 0.08, 1: 0.11, 2: 0.085, 3: 0.12}
    r = S.across_seed_test(base, var)
    ref = sps.ttest_rel([var[s] for s in range(4)], [base[s] for s in range(4)])
    assert r["test"] == S.SEED_TEST_PAIRED
    assert r["p"] == pytest.approx(ref.pvalue) and r["t"] == pytest.approx(ref.statistic)
    assert r["ci_low"] < r["mean_diff"] < r["ci_high"] < 0
    var2 = {10: 0.08, 11: 0.11, 12: 0.085}
    w = S.across_seed_test(base, var2)
    ref2 = sps.ttest_ind(list(var2.values()), list(base.values()), equal_var=False)
    assert w["test"] == S.SEED_TEST_WELCH
    assert w["p"] == pytest.approx(ref2.pvalue) and w["t"] == pytest.approx(ref2.statistic)
    assert S.across_seed_test({0: 1.0}, {0: 2.0})["test"] is None
    same = S.across_seed_test(base, dict(base))
    assert same["p"] == 1.0 and same["mean_diff"] == 0
