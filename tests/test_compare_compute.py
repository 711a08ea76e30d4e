"""ebmtool.compare: one-seed verdicts compare checkpoints, not training methods.

Fake checkpoints (configs as the training code resolves them) and synthetic errors: no files, no models.
"""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from ebmtool import stats as S
from ebmtool.compare import (
    CHECKPOINTS_DIFFER, NO_DIFFERENCE_SHOWN, ONE_SEED_NOTE, Group, Run, analyse, config_diff, summary_lines,
)
from ebmtool.train import TrainConfig

SMALL = dict(size=4, width=32, time_dim=16, batch_size=16, train_size=32, val_size=0, device="cpu")


def resolved(steps=100, **over) -> dict:
    """A configuration as a checkpoint stores it: validated (used sources' defaults filled in), curriculum laid out."""
    cfg = TrainConfig(**{**SMALL, "steps": steps, **over}).validate()
    cfg.curriculum_total = cfg.steps
    return cfg.to_dict()


def arm(name, configs) -> Group:
    """A group of fake runs: one config per run, seeds 0, 1, ..., trained to the configured steps."""
    g = Group(name)
    for seed, cfg in enumerate(configs):
        cfg = {**cfg, "seed": seed}
        ck = SimpleNamespace(seed=seed, step=cfg["steps"], config=cfg)
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
