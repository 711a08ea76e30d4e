"""`train --init RUN` starts a new run from RUN's weights on RUN's training data: its seed, task, size, training
set and model shape carry over unless given, so negatives mined from RUN fit the new run."""

from ebmtool.io.checkpoints import load_checkpoint
from ebmtool.cli import cli

from helpers import TINY_FLAGS


def _train(runner, *args):
    r = runner.invoke(cli, ["train", *args])
    assert r.exit_code == 0, r.output
    return r


def test_init_keeps_the_seed_data_and_shape_of_its_run(runner, tmp_path):
    _train(runner, *TINY_FLAGS, "--steps", "2", "--seed", "7", "-o", str(tmp_path / "base"))
    _train(runner, "--init", str(tmp_path / "base"), "--steps", "2", "--val-size", "4", "--batch-size", "16",
           "-o", str(tmp_path / "next"))
    base, new = (load_checkpoint(tmp_path / d / "ckpt.safetensors") for d in ("base", "next"))
    assert new.seed == 7
    assert new.meta["ebmtool.data_fingerprint"] == base.meta["ebmtool.data_fingerprint"]
    assert new.dims == base.dims
    for key in ("task", "size", "train_size", "width", "time_dim"):
        assert new.config[key] == base.config[key], key


def test_a_given_seed_still_wins(runner, tmp_path):
    _train(runner, *TINY_FLAGS, "--steps", "2", "--seed", "7", "-o", str(tmp_path / "base"))
    _train(runner, "--init", str(tmp_path / "base"), *TINY_FLAGS, "--steps", "2", "--seed", "8",
           "-o", str(tmp_path / "next"))
    assert load_checkpoint(tmp_path / "next" / "ckpt.safetensors").seed == 8
