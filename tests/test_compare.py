"""ebmtool.analysis.compare on synthetic per-problem errors (statistics, verdicts, replicates, config diff)."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from ebmtool.analysis import stats as S
from ebmtool.io.artifacts import jsonable
from ebmtool.analysis.compare import NO_DIFFERENCE_SHOWN, ONE_SEED_NOTE, analyse, identical_replicates
from ebmtool.analysis.arms import Group, Run
from ebmtool.analysis.confounds import config_diff
from ebmtool.runtime.errors import InputError

BASE_CFG = {"task": "inverse", "size": 4, "steps": 100, "seed": 0, "supervise_energy": True, "lr": 1e-3,
            "log_every": 10, "device": "auto"}


def make_groups(spec):
    """spec: {group: [(seed, config-overrides), ...]} -> [Group] with fake checkpoints (no files needed)."""
    out = []
    for name, members in spec.items():
        g = Group(name)
        for i, (seed, over) in enumerate(members):
            cfg = {**BASE_CFG, "seed": seed, **over}
            ck = SimpleNamespace(seed=seed, step=cfg["steps"], config=cfg, meta={})  # meta: no compute recorded
            g.runs.append(Run(f"{name}/seed-{seed}", name, Path(f"/x/{name}/{seed}"), ck, f"{name}{i}{seed}" * 8))
        out.append(g)
    return out


def synthetic_errors(groups, shift, n=300, noise=0.002, seed_sd=0.001):
    """Per-problem errors: a shared problem difficulty, a per-seed offset, and `shift[group]` added."""
    rng = np.random.default_rng(0)
    difficulty = rng.gamma(2.0, 0.01, n)
    errs = {}
    for g in groups:
        for r in g.runs:
            seed_rng = np.random.default_rng(1000 + r.seed + 17 * len(g.name))
            e = difficulty + shift[g.name] + seed_rng.normal(0, seed_sd) + seed_rng.normal(0, noise, n)
            errs[r.name] = {"mse": np.abs(e)}
    return errs


def three_arms():
    seeds = [(s, {}) for s in range(5)]
    return make_groups({"base": seeds, "good": [(s, {"supervise_energy": False}) for s in range(5)],
                        "bad": [(s, {"supervise_energy": False}) for s in range(5)]})


def test_better_worse_and_equal_arms_get_the_right_words():
    gs = three_arms()
    errs = synthetic_errors(gs, {"base": 0.0, "good": -0.01, "bad": +0.01})
    rep = analyse(gs, errs, "mse", "lower", n_boot=400, n_perm=2000, seed=1)
    by = {c["variant"]: c for c in rep["comparisons"]}
    assert by["good"]["verdict"] == S.BETTER and by["bad"]["verdict"] == S.WORSE
    assert by["good"]["basis"] == "seeds" and by["good"]["seeds"]["test"] == S.SEED_TEST_PAIRED
    assert by["good"]["primary"]["ci_high"] < 0 < by["bad"]["primary"]["ci_low"]
    for c in rep["comparisons"]:  # exactly one correction: Holm over the two primary p-values
        assert c["primary"]["p_holm"] == pytest.approx(S.holm([x["primary"]["p"] for x in rep["comparisons"]])[
            rep["comparisons"].index(c)])
    # the same data with "higher is better" flips the words, never the numbers
    rep_hi = analyse(gs, errs, "mse", "higher", n_boot=400, n_perm=2000, seed=1)
    by_hi = {c["variant"]: c for c in rep_hi["comparisons"]}
    assert by_hi["good"]["verdict"] == S.WORSE and by_hi["bad"]["verdict"] == S.BETTER
    assert by_hi["good"]["primary"]["mean_diff"] == by["good"]["primary"]["mean_diff"]


@pytest.mark.parametrize("shift, seed_sd, expected", [
    (1e-4, 0.0005, S.NO_DIFFERENCE), (1e-4, 0.005, S.NO_DIFFERENCE), (1e-3, 0.0005, S.NO_DIFFERENCE),
    (1e-3, 0.005, S.NO_DIFFERENCE), (5e-3, 0.0005, S.WORSE), (5e-3, 0.005, S.NO_DIFFERENCE)])
def test_a_worse_arm_is_never_better_across_many_synthetic_setups(shift, seed_sd, expected):
    """Three seeds per arm, the variant worse by `shift`: worse when the shift is large against the seed spread,
    otherwise no detectable difference; never better."""
    gs = make_groups({"base": [(s, {}) for s in range(3)], "v": [(s, {}) for s in range(3)]})
    errs = synthetic_errors(gs, {"base": 0.0, "v": shift}, seed_sd=seed_sd)
    rep = analyse(gs, errs, "mse", "lower", n_boot=300, n_perm=1000)
    assert rep["comparisons"][0]["basis"] == "seeds"
    assert rep["comparisons"][0]["verdict"] == expected


def test_identical_arms_contain_zero_and_give_no_verdict():
    gs = make_groups({"a": [(0, {})], "b": [(0, {})]})
    e = np.random.default_rng(3).gamma(2.0, 0.01, 200)
    rep = analyse(gs, {"a/seed-0": {"mse": e}, "b/seed-0": {"mse": e.copy()}}, "mse", "lower", n_boot=300)
    c = rep["comparisons"][0]
    assert c["basis"] == "problems"
    assert c["primary"]["ci_low"] <= 0 <= c["primary"]["ci_high"]
    assert c["verdict"] == NO_DIFFERENCE_SHOWN and c["problems"]["d_z"] == 0.0
    assert ONE_SEED_NOTE in rep["notes"]


def test_bootstrap_seed_is_recorded_and_reproducible():
    gs = three_arms()
    errs = synthetic_errors(gs, {"base": 0.0, "good": -0.001, "bad": 0.001})
    a = analyse(gs, errs, "mse", "lower", n_boot=300, n_perm=1000, seed=5)
    b = analyse(gs, errs, "mse", "lower", n_boot=300, n_perm=1000, seed=5)
    c = analyse(gs, errs, "mse", "lower", n_boot=300, n_perm=1000, seed=6)
    assert jsonable(a) == jsonable(b)
    assert a["seed"] == 5
    assert a["groups"][0]["ci_low"] != c["groups"][0]["ci_low"]


def test_unmatched_seeds_use_welch():
    gs = make_groups({"base": [(s, {}) for s in (0, 1, 2)], "v": [(s, {}) for s in (5, 6, 7)]})
    errs = synthetic_errors(gs, {"base": 0.0, "v": 0.0})
    rep = analyse(gs, errs, "mse", "lower", n_boot=200, n_perm=500)
    assert rep["comparisons"][0]["seeds"]["test"] == S.SEED_TEST_WELCH


def test_identical_replicates_are_found():
    gs = make_groups({"a": [(0, {}), (1, {})], "b": [(0, {}), (1, {})]})
    e = np.linspace(0.01, 0.02, 50)
    errs = {"a/seed-0": {"mse": e}, "a/seed-1": {"mse": e.copy()}, "b/seed-0": {"mse": e + 1e-3},
            "b/seed-1": {"mse": e + 2e-3}}
    msgs = identical_replicates(gs, errs, "mse")
    assert len(msgs) == 1 and "a/seed-0" in msgs[0] and "inert" in msgs[0]
    gs[1].runs[1].sha256 = gs[1].runs[0].sha256  # the same file used twice
    msgs = identical_replicates(gs, errs, "mse")
    assert any("same checkpoint" in m for m in msgs)


def test_config_diff_names_the_differing_keys():
    gs = make_groups({"base": [(0, {}), (1, {})],
                      "v": [(0, {"supervise_energy": False, "steps": 200, "log_every": 50}),
                            (1, {"supervise_energy": False, "steps": 200, "log_every": 50})]})
    d = config_diff(gs, "base")
    assert set(d["keys"]) == {"supervise_energy", "steps", "trained_steps"}
    assert d["keys"]["supervise_energy"] == {"base": "True", "v": "False"}
    assert set(d["cadence"]) == {"log_every"}  # shown apart, not counted as a difference
    assert d["seeds"] == {"base": [0, 1], "v": [0, 1]}
    assert any("more than one setting" in w and "steps" in w for w in d["warnings"])
    # declaring the variable: only the undeclared keys are warned about
    d2 = config_diff(gs, "base", ("supervise_energy",))
    assert any("beyond the declared supervise_energy" in w and "supervise_energy," not in w for w in d2["warnings"])
    with pytest.raises(InputError):
        config_diff(gs, "base", ("no_such_key",))
    d3 = config_diff(gs, "base", ("supervise_*", "*steps"))  # glob patterns cover a variable's dependent keys
    assert not any("beyond the declared" in w for w in d3["warnings"])


def test_config_diff_warns_when_replicates_differ_in_more_than_the_seed():
    gs = make_groups({"base": [(0, {}), (1, {"lr": 1e-4})], "v": [(0, {}), (1, {})]})
    d = config_diff(gs, "base")
    assert any("replicates of 'base' differ in more than the seed: lr" in w for w in d["warnings"])
    assert d["keys"]["lr"]["base"].startswith("varies: ")


def test_unknown_baseline_is_an_input_error():
    gs = three_arms()
    errs = synthetic_errors(gs, {"base": 0.0, "good": 0.0, "bad": 0.0})
    with pytest.raises(InputError):
        analyse(gs, errs, "mse", "lower", baseline="nope")
    rep = analyse(gs, errs, "mse", "lower", baseline="good", n_boot=200, n_perm=500)
    assert {c["variant"] for c in rep["comparisons"]} == {"base", "bad"}


def test_energy_samples_are_shared_across_models_and_accept_runs_without_ired_settings():
    import torch

    from ebmtool.analysis.compare import energy_samples
    from ebmtool.method.models import EnergyMLP
    from ebmtool.tasks.registry import get_task

    task = get_task("inverse", 3)
    problems = task.generate(40, "test")
    torch.manual_seed(0)
    m1, m2 = EnergyMLP(9, 9, 16, 16), EnergyMLP(9, 9, 16, 16)
    anm_like = SimpleNamespace(config={"neg_steps": None, "neg_noise_scale": None, "clamp_mode": "per-example"})
    a = energy_samples(m1, anm_like, task, problems, n=32)
    b = energy_samples(m2, SimpleNamespace(config={}), task, problems, n=32)
    assert np.array_equal(a["t"], b["t"]) and a["e_pos"].shape == (32,)  # same t (and noise) for every model
    assert not np.array_equal(a["e_pos"], b["e_pos"])
    again = energy_samples(m1, anm_like, task, problems, n=32)
    assert np.array_equal(a["e_neg"], again["e_neg"])  # fixed seed
