"""One weight-set default: eval, compare, report, mine-negatives and score use the raw weights unless told
otherwise, and compare warns where EMA weights would mislead (an EMA that never averaged, step counts far apart)."""

import json

import pytest

from ebmtool.cli import cli
from ebmtool.training.loop import train

from helpers import SMALL, tiny

FAST = ["-n", "16", "--bootstrap", "200", "--permutations", "200", "--batch-size", "16", "--device", "cpu"]


def invoke(runner, args):
    return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)


def default_of(command: str, flag: str):
    return next(p.default for p in cli.commands[command].params if flag in getattr(p, "opts", ()))


def test_every_command_defaults_to_the_raw_weights():
    from ebmtool.analysis.evaluate import weight_sets
    from ebmtool.io.checkpoints import Checkpoint
    # eval's option is unset by default: a training checkpoint then gets DEFAULT_WEIGHTS, an export the set it holds
    assert default_of("eval", "--weights") is None
    held = Checkpoint.__new__(Checkpoint)
    held.tensors, held.path = {"model/w": None, "ema/w": None}, "ckpt"
    defaults = {"eval": weight_sets(held, None)[0], "compare": default_of("compare", "--weights"),
                "report": default_of("report", "--verdict-weights"),
                "mine-negatives": default_of("mine-negatives", "--weights"), "score": default_of("score", "--weights")}
    assert set(defaults.values()) == {"model"}, defaults


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A run whose EMA averaged (12 steps, first average after update 4) and one that stopped before it did."""
    root = tmp_path_factory.mktemp("ema")
    for name, steps, seed in (("long", 12, 0), ("short", 3, 1)):
        train(tiny(**{**SMALL, "steps": steps, "seed": seed, "ema_start": 2, "ema_every": 2, "log_every": 1}),
              root / name, log=lambda m: None)
    return root


def test_eval_and_compare_use_raw_weights_by_default(runs, runner):
    r = invoke(runner, ["eval", runs / "long", "-n", "8", "--device", "cpu", "--json"])
    assert r.exit_code == 0 and list(json.loads(r.stdout)["results"]) == ["model"]
    r = invoke(runner, ["compare", *FAST, runs / "long", runs / "short", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["weights"] == "model"
    assert "EMA" not in r.stderr  # raw weights: nothing to warn about the EMA


def test_compare_with_ema_weights_warns_where_the_ema_misleads(runs, runner):
    r = invoke(runner, ["compare", *FAST, runs / "long", runs / "short", "--weights", "ema"])
    assert r.exit_code == 0, r.output
    assert "WARNING: short: the EMA of 1 of its 1 run(s) never averaged (they stopped at step 3 or before" in r.stdout
    assert "WARNING: long: the EMA" not in r.stdout
    assert "WARNING: the runs trained from 3 to 12 steps" in r.stdout
