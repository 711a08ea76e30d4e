"""ebmtool.compare: a config diff that names only real confounds, one-seed verdicts.

Fake checkpoints (configs as the training code resolves them) and synthetic errors: no files, no models.
"""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from ebmtool import stats as S
from ebmtool.compare import (
    CHECKPOINTS_DIFFER, DERIVED_KEYS, NO_DIFFERENCE_SHOWN, ONE_SEED_NOTE, Group, Run, analyse, config_diff,
    summary_lines,
)
from ebmtool.train import TrainConfig

SMALL = dict(size=4, width=32, time_dim=16, batch_size=16, train_size=32, val_size=0, device="cpu")


def resolved(steps=100, **over) -> dict:
    """A configuration as a checkpoint stores it: validated (used sources' defaults filled in), curriculum laid out."""
    cfg = TrainConfig(**{**SMALL, "steps": steps, **over}).validate()
    cfg.curriculum_total = cfg.steps
    return cfg.to_dict()


def arm(name, configs, *, steps=None) -> Group:
    """A group of fake runs: one config per run, seeds 0, 1, ..., trained to `steps` (default: the
    configured steps)."""
    g = Group(name)
    for seed, cfg in enumerate(configs):
        cfg = {**cfg, "seed": seed}
        step = cfg["steps"] if steps is None else steps[seed]
        ck = SimpleNamespace(seed=seed, step=step, config=cfg)
        g.runs.append(Run(f"{name}/seed-{seed}" if len(configs) > 1 else name, name, Path(f"/x/{name}/{seed}"), ck,
                          f"{name}{seed}".ljust(64, "0")))
    return g


def errors_for(groups, shift, n=200):
    """Per-problem errors: a shared difficulty, a small per-seed offset, `shift[group]` added."""
    difficulty = np.random.default_rng(0).gamma(2.0, 0.01, n)
    out = {}
    for g in groups:
        for r in g.runs:
            rng = np.random.default_rng(1000 + r.seed + 17 * len(g.name))
            out[r.name] = {"mse": np.abs(difficulty + shift[g.name] + rng.normal(0, 0.001) + rng.normal(0, 0.002, n))}
    return out


def confound(variant, baseline, declared, keys):
    """config_diff's warning for a variant that differs from the baseline in undeclared settings."""
    return (f"{variant!r} differs from the baseline {baseline!r} in settings beyond the declared {declared}: {keys}; "
            "the comparison confounds them")




# ------------------------------------------------------------------------------------------------ config diff

def test_ired_against_anm_is_one_difference_whatever_follows_from_it():
    """anm fills in its sources' defaults, a resumed run lays its curriculum out for other steps and stops at
    another step: none of that is a confound, only `negatives` is."""
    base = arm("base", [resolved()] * 2)
    anm = arm("anm", [{**resolved(negatives="anm"), "curriculum_total": 80}] * 2, steps=[90, 90])
    gs = [base, anm]
    assert gs[1].runs[0].ckpt.config["anm_steps"] == 5 and gs[0].runs[0].ckpt.config["anm_steps"] is None
    d = config_diff(gs, "base", ("negatives",))
    assert d["warnings"] == []
    assert set(d["keys"]) == {"negatives", "curriculum_total", "trained_steps"}  # still shown ...
    assert d["derived"] == ["curriculum_total", "trained_steps"]  # ... marked as derived
    assert config_diff(gs, "base")["warnings"] == []  # one setting differs: nothing to warn about
    rep = analyse(gs, errors_for(gs, {"base": 0.0, "anm": 0.0}), "mse", "lower", n_boot=200, n_perm=200)
    rows = summary_lines({**rep, "config_diff": d})
    assert [r[0] for r in rows["diff"]] == ["curriculum_total (derived)", "negatives", "trained_steps (derived)",
                                            "seed (replicates)"]


def test_an_explicit_non_default_source_setting_is_still_a_confound():
    gs = [arm("anm", [resolved(negatives="anm")]), arm("anm5", [resolved(negatives="anm", anm_steps=3)])]
    gs[1].runs[0].ckpt.config["lr"] = 2e-3
    d = config_diff(gs, "anm")
    assert d["keys"]["anm_steps"] == {"anm": "5", "anm5": "3"}
    assert d["warnings"] == ["'anm5' differs from the baseline 'anm' in more than one setting: anm_steps, lr; the "
                             "comparison confounds them"]
    d = config_diff([arm("anm", [resolved(negatives="anm")]), arm("anm5", [resolved(negatives="anm", anm_steps=3)])],
                    "anm", ("negatives",))
    assert d["warnings"] == [confound("anm5", "anm", "negatives", "anm_steps")]


def test_sans_defaults_are_not_differences_but_the_sans_flag_is():
    gs = [arm("base", [resolved()]), arm("sans", [resolved(sans=True)]),
          arm("hot", [resolved(sans=True, alpha=2.0)])]
    assert gs[1].runs[0].ckpt.config["alpha"] == 1.0 and gs[0].runs[0].ckpt.config["alpha"] is None
    d = config_diff(gs, "base", ("sans",))
    assert set(d["keys"]) == {"sans", "alpha"}
    assert d["keys"]["alpha"] == {"base": "1.0", "sans": "1.0", "hot": "2.0"}
    assert d["warnings"] == [confound("hot", "base", "sans", "alpha")]


def test_a_different_keep_is_cadence_and_derived_keys_are_documented():
    gs = [arm("base", [resolved()]), arm("v", [resolved(keep=3, lr=2e-3)])]
    d = config_diff(gs, "base")
    assert set(d["cadence"]) == {"keep"} and set(d["keys"]) == {"lr"} and d["warnings"] == []
    assert set(DERIVED_KEYS) == {"curriculum_total", "trained_steps", "budget_flops", "budget_of", "init_sha256",
                                 "offline_negatives_sha256", "offline_weights_sha256", "compute"}
    replicates = [arm("base", [resolved(), {**resolved(), "init_sha256": "ab" * 32}])]
    assert config_diff(replicates, "base")["warnings"] == []  # a derived key never splits replicates either


# ------------------------------------------------------------------------------------------------ verdicts

@pytest.mark.parametrize("shift, expected", [(-0.01, CHECKPOINTS_DIFFER), (0.01, CHECKPOINTS_DIFFER),
                                             (0.0, NO_DIFFERENCE_SHOWN)])
def test_one_seed_per_arm_compares_checkpoints_not_methods(shift, expected):
    gs = [arm("base", [resolved()]), arm("v", [resolved(lr=2e-3)])]
    rep = analyse(gs, errors_for(gs, {"base": 0.0, "v": shift}), "mse", "lower", n_boot=200, n_perm=500)
    c = rep["comparisons"][0]
    assert c["basis"] == "problems" and c["verdict"] == expected
    assert ONE_SEED_NOTE in rep["notes"]
    assert ONE_SEED_NOTE == ("one seed per arm: the verdict compares these checkpoints, not the training methods; "
                             "train >= 2 seeds per arm")


def test_one_seed_in_either_arm_is_enough_to_lose_the_method_verdict():
    gs = [arm("base", [resolved()] * 3), arm("v", [resolved(lr=2e-3)])]
    rep = analyse(gs, errors_for(gs, {"base": 0.0, "v": -0.01}), "mse", "lower", n_boot=200, n_perm=500)
    assert rep["comparisons"][0]["verdict"] == CHECKPOINTS_DIFFER and ONE_SEED_NOTE in rep["notes"]


def test_two_seeds_per_arm_keep_the_method_verdict():
    gs = [arm("base", [resolved()] * 2), arm("v", [resolved(lr=2e-3)] * 2)]
    rep = analyse(gs, errors_for(gs, {"base": 0.0, "v": -0.01}), "mse", "lower", n_boot=200, n_perm=500)
    c = rep["comparisons"][0]
    assert c["basis"] == "seeds" and c["verdict"] == S.BETTER
    assert ONE_SEED_NOTE not in rep["notes"]
    assert summary_lines({**rep, "config_diff": config_diff(gs, "base")})["verdicts"][0][-1] == "BETTER"
