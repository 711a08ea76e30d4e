"""ebmtool.analysis.compare: training compute per arm, a config diff that names only real confounds, one-seed verdicts.

Fake checkpoints (configs as the training code resolves them, metadata strings) and synthetic errors: no files,
no models.
"""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from ebmtool.analysis import stats as S
from ebmtool.analysis.compare import CHECKPOINTS_DIFFER, NO_DIFFERENCE_SHOWN, ONE_SEED_NOTE, analyse
from ebmtool.analysis.arms import COMPUTE_META, Group, Run
from ebmtool.analysis.confounds import DERIVED_KEYS, config_diff
from ebmtool.analysis.reporting import summary_lines
from ebmtool.runtime.errors import InputError

from helpers import SMALL, tiny


def resolved(steps=100, **over) -> dict:
    """A configuration as a checkpoint stores it: validated (used sources' defaults filled in), curriculum laid out."""
    cfg = tiny(**{**SMALL, "steps": steps, **over}).validate()
    cfg.curriculum_total = cfg.steps
    return cfg.to_dict()


def arm(name, configs, *, steps=None, flops=None) -> Group:
    """A group of fake runs: one config per run, seeds 0, 1, ..., trained to `steps` (default: the
    configured steps), with `flops` as ebmtool.compute_flops metadata (None: an older checkpoint without it)."""
    g = Group(name)
    for seed, cfg in enumerate(configs):
        cfg = {**cfg, "seed": seed}
        meta = {} if flops is None or flops[seed] is None else {COMPUTE_META: json.dumps(flops[seed])}
        step = cfg["steps"] if steps is None else steps[seed]
        ck = SimpleNamespace(seed=seed, step=step, config=cfg, meta=meta)
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


WARN_352 = ("arm anm4 used 3.52x the baseline's compute (matched-compute comparisons need a ratio within 10 %; "
            "declare an intended difference with --vary compute)")


def confound(variant, baseline, declared, keys):
    """config_diff's warning for a variant that differs from the baseline in undeclared settings."""
    return (f"{variant!r} differs from the baseline {baseline!r} in settings beyond the declared {declared}: {keys}; "
            "the comparison confounds them")


# ------------------------------------------------------------------------------------------------ compute

def test_compute_per_run_mean_and_ratio_are_reported():
    gs = [arm("base", [resolved()] * 2, flops=[3.0e13, 3.2e13]),
          arm("anm4", [resolved(negatives="anm")] * 2, flops=[1.1e14, 1.08e14])]
    rep = analyse(gs, errors_for(gs, {"base": 0.0, "anm4": 0.0}), "mse", "lower", n_boot=200, n_perm=200)
    base, anm = rep["groups"]
    assert base["compute_flops"] == [3.0e13, 3.2e13] and base["compute_flops_mean"] == pytest.approx(3.1e13)
    assert base["compute_ratio"] == pytest.approx(1.0)
    assert anm["compute_flops"] == [1.1e14, 1.08e14] and anm["compute_ratio"] == pytest.approx(1.09e14 / 3.1e13)
    assert [r["compute_flops"] for r in rep["runs"]] == [3.0e13, 3.2e13, 1.1e14, 1.08e14]
    rows = summary_lines({**rep, "config_diff": config_diff(gs, "base", ("negatives", "compute"))})
    assert rows["groups_header"][:4] == ["arm", "seeds", "compute", "x base"]
    assert rows["groups"][0][:4] == ["base (baseline)", "2", "3.10e13", "1.00"]
    assert rows["groups"][1][:4] == ["anm4", "2", "1.09e14", "3.52"]
    assert not any("compute is unknown" in n for n in rep["notes"])


def test_an_arm_off_the_baseline_compute_is_warned_about_unless_declared():
    gs = [arm("base", [resolved()] * 2, flops=[3.1e13] * 2),
          arm("anm4", [resolved(negatives="anm")] * 2, flops=[1.09e14] * 2)]
    d = config_diff(gs, "base")
    assert WARN_352 in d["warnings"]
    assert d["compute_matched"] is False
    declared = config_diff(gs, "base", ("compute",))  # a known key for --vary, although not a config key
    assert declared["warnings"] == [confound("anm4", "base", "compute", "negatives")]
    assert config_diff(gs, "base", ("compute", "negatives"))["warnings"] == []
    with pytest.raises(InputError, match="no such configuration key .*compute"):
        config_diff(gs, "base", ("computer",))


@pytest.mark.parametrize("variant_flops, warned", [(3.1e13 * 1.09, False), (3.1e13 * 0.91, False),
                                                   (3.1e13 * 1.11, True), (3.1e13 * 0.89, True)])
def test_compute_tolerance_is_ten_percent_either_way(variant_flops, warned):
    gs = [arm("base", [resolved()], flops=[3.1e13]), arm("v", [resolved(lr=2e-3)], flops=[variant_flops])]
    warnings = [w for w in config_diff(gs, "base")["warnings"] if w.startswith("arm v used")]
    ratio = variant_flops / 3.1e13
    assert warnings == ([f"arm v used {ratio:.2f}x the baseline's compute (matched-compute comparisons need a "
                         "ratio within 10 %; declare an intended difference with --vary compute)"] if warned else [])


def test_runs_without_compute_metadata_get_one_note_and_no_warning():
    gs = [arm("base", [resolved()] * 2, flops=[3.1e13] * 2), arm("old", [resolved(lr=2e-3)] * 2)]
    errs = errors_for(gs, {"base": 0.0, "old": 0.0})
    rep = analyse(gs, errs, "mse", "lower", n_boot=200, n_perm=200)
    unknown = [n for n in rep["notes"] if "compute is unknown" in n]
    assert unknown == ["compute is unknown for old/seed-0, old/seed-1: no ebmtool.compute_flops in the checkpoint "
                       "(written before ebmtool recorded training FLOPs), so matched compute cannot be checked"]
    old = rep["groups"][1]
    assert old["compute_flops"] == [None, None] and old["compute_flops_mean"] is None and old["compute_ratio"] is None
    d = config_diff(gs, "base")
    assert d["warnings"] == [] and d["compute_matched"] is False
    rows = summary_lines({**rep, "config_diff": d})
    assert rows["groups"][1][2:4] == ["n/a", "n/a"]
    none = [arm("a", [resolved()]), arm("b", [resolved(lr=2e-3)])]
    rep = analyse(none, errors_for(none, {"a": 0.0, "b": 0.0}), "mse", "lower", n_boot=200, n_perm=200)
    assert [n for n in rep["notes"] if "compute is unknown" in n][0].startswith("compute is unknown for every run:")


def test_malformed_compute_metadata_is_an_input_error():
    g = arm("base", [resolved()], flops=[1.0])
    g.runs[0].ckpt.meta[COMPUTE_META] = '"lots"'
    with pytest.raises(InputError, match=r"/x/base/0: metadata ebmtool.compute_flops is '\"lots\"', not a number"):
        g.runs[0].compute_flops


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
    gs = [arm("base", [resolved(k=2)]), arm("sans", [resolved(sans=True, k=2)]),
          arm("hot", [resolved(sans=True, k=2, alpha=2.0)])]
    assert gs[1].runs[0].ckpt.config["alpha"] == 1.0 and gs[0].runs[0].ckpt.config["alpha"] is None
    d = config_diff(gs, "base", ("sans",))
    assert set(d["keys"]) == {"sans", "alpha"}
    assert d["keys"]["alpha"] == {"base": "1.0", "sans": "1.0", "hot": "2.0"}
    assert d["warnings"] == [confound("hot", "base", "sans", "alpha")]


def test_a_different_keep_is_cadence_and_derived_keys_are_documented():
    gs = [arm("base", [resolved()]), arm("v", [resolved(keep=3, lr=2e-3)])]
    d = config_diff(gs, "base")
    assert set(d["cadence"]) == {"keep"} and set(d["keys"]) == {"lr"} and d["warnings"] == []
    assert set(DERIVED_KEYS) == {"curriculum_total", "trained_steps", "budget_flops", "budget_of", "init_sha256", "init_steps",
                                 "offline_negatives_sha256", "offline_weights_sha256", "compute"}
    replicates = [arm("base", [resolved(), {**resolved(), "init_sha256": "ab" * 32}])]
    assert config_diff(replicates, "base")["warnings"] == []  # a derived key never splits replicates either


def test_steps_are_a_difference_unless_compute_is_matched():
    """Matched compute: a cheaper step buys more of them, by design. Otherwise more steps is more training."""
    def arms(flops):
        return [arm("base", [resolved(steps=100)] * 2, flops=None if flops is None else [3.0e13] * 2),
                arm("anm", [resolved(steps=40, negatives="anm")] * 2, flops=None if flops is None else [flops] * 2)]

    matched = config_diff(arms(3.2e13), "base", ("negatives",))
    assert matched["warnings"] == [] and matched["compute_matched"] is True
    assert "steps" in matched["keys"] and matched["steps_follow_compute"] is True
    unknown = config_diff(arms(None), "base", ("negatives",))
    assert unknown["warnings"] == [confound("anm", "base", "negatives", "steps")]
    off = config_diff(arms(6.0e13), "base", ("negatives",))
    assert off["warnings"] == [
        "arm anm used 2.00x the baseline's compute (matched-compute comparisons need a ratio within 10 %; declare "
        "an intended difference with --vary compute)", confound("anm", "base", "negatives", "steps")]


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
