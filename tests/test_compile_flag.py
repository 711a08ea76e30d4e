"""`train --compile`: the MLP's explicit input gradient runs through torch.compile, to the eager run's numbers
within float tolerance; other networks are refused with one sentence."""

import h5py
import numpy as np

from ebmtool.io.checkpoints import load_checkpoint
from ebmtool.cli import cli
from ebmtool.method.models import compile_explicit
from ebmtool.training import loop as train_loop
from ebmtool.training import train

from helpers import TINY_FLAGS, tiny


def quiet(msg):
    pass


def test_compiled_training_matches_eager(tmp_path, monkeypatch):
    compiled = []

    def fast_compile(model):  # aot_eager: the same graph capture without inductor's C++ build (seconds)
        compiled.append(model)
        return compile_explicit(model, backend="aot_eager")

    monkeypatch.setattr(train_loop, "compile_explicit", fast_compile)
    train(tiny(seed=0, steps=6, log_every=2), tmp_path / "eager", log=quiet)
    train(tiny(seed=0, steps=6, log_every=2, compile=True), tmp_path / "compiled", log=quiet)
    assert len(compiled) == 2  # the model and its EMA copy
    losses = []
    for run in ("eager", "compiled"):
        with h5py.File(tmp_path / run / "metrics.h5", "r") as f:
            losses.append(f["loss_total"][()])
    assert np.allclose(losses[0], losses[1], rtol=1e-5, atol=0)
    a, b = (load_checkpoint(tmp_path / r / "ckpt.safetensors") for r in ("eager", "compiled"))
    for k, v in a.group("model").items():
        assert np.allclose(v.numpy(), b.group("model")[k].numpy(), rtol=1e-4, atol=1e-6), k
    assert b.config["compile"] is True and a.config["compile"] is False
    for model in compiled:
        compile_explicit(model, enable=False)


def test_compile_is_refused_for_networks_without_an_explicit_gradient(tmp_path, runner):
    r = runner.invoke(cli, ["train", "--task", "connectivity", "--train-size", "64", "--batch-size", "32",
                            "--steps", "1", "--compile", "-o", str(tmp_path / "r")])
    assert r.exit_code == 2
    assert "--compile compiles the MLP's explicit input gradient; connectivity (12 nodes) trains a graph_nlm " \
           "network, which has none" in r.output


def test_the_flag_reaches_the_configuration(tmp_path, runner, monkeypatch):
    monkeypatch.setattr(train_loop, "compile_explicit", lambda m: compile_explicit(m, backend="aot_eager"))
    r = runner.invoke(cli, ["train", *TINY_FLAGS, "--steps", "2", "--compile", "-o", str(tmp_path / "r")])
    assert r.exit_code == 0, r.output
    assert load_checkpoint(tmp_path / "r" / "ckpt.safetensors").config["compile"] is True
