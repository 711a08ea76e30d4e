"""`ebmtool export`: weights only, config.json and a model card; read back it gives the run's numbers exactly."""

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

import ebmtool
from ebmtool.io.checkpoints import load_checkpoint
from ebmtool.cli import cli

from helpers import TINY_FLAGS


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from click.testing import CliRunner

    out = tmp_path_factory.mktemp("export") / "run"
    r = CliRunner().invoke(cli, ["train", *TINY_FLAGS, "--steps", "12", "--seed", "0", "-o", str(out)])
    assert r.exit_code == 0, r.output
    return out


def eval_json(runner, target, *args):
    r = runner.invoke(cli, ["eval", str(target), "-n", "32", "--json", *args])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


@pytest.mark.parametrize("weights", ["ema", "model"])
def test_eval_of_an_export_equals_eval_of_the_run(run, tmp_path, runner, weights):
    out = tmp_path / "m"
    r = runner.invoke(cli, ["export", str(run), "-o", str(out), "--weights", weights, "--eval-n", "32"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    exported = eval_json(runner, out)  # the default --weights both: the one set the export holds
    original = eval_json(runner, run, "--weights", weights)
    assert exported["results"] == original["results"] == {weights: original["results"][weights]}
    assert exported["baselines"] == original["baselines"] and exported["problems"] == original["problems"]
    config = json.loads((out / "config.json").read_text())
    assert config["evaluation"]["results"] == original["results"][weights]  # the card's numbers are eval's
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: ebmtool\n") and "inverse 4x4" in card
    assert f"| {original['results'][weights]['mse']:.4g} |" in card and "baseline: zeros" in card


def test_weights_only_under_plain_names_with_the_run_described(run, tmp_path):
    ex = ebmtool.export_model(run, tmp_path / "m", eval_n=0)
    ckpt = load_checkpoint(run / "ckpt.safetensors")
    with safe_open(str(tmp_path / "m" / "model.safetensors"), framework="pt") as f:
        names, meta = set(f.keys()), f.metadata()
        for k in names:
            assert torch.equal(f.get_tensor(k), ckpt.group("model")[k]), k
    assert names == set(ckpt.group("model")) and not any("/" in n for n in names)  # no optimiser, RNG or EMA copy
    assert meta["ebmtool.kind"] == "model" and meta["ebmtool.weights"] == "model" and meta["format"] == "pt"
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["architecture"] == ckpt.dims and config["train_config"] == ckpt.config
    assert config["step"] == 12 and config["seed"] == 0 and config["task"]["x_dim"] == 16
    assert config["compute_flops"] == json.loads(ckpt.meta["ebmtool.compute_flops"]) > 0
    assert config["provenance"]["source_checkpoint"]["sha256"] == ex.config["provenance"]["source_checkpoint"]["sha256"]
    assert config["evaluation"] is None and "Not evaluated at export" in (tmp_path / "m" / "README.md").read_text()


def test_round_trip_gives_identical_energies_and_answers(run, tmp_path):
    ebmtool.export_model(run, tmp_path / "m", eval_n=0)
    a, b = ebmtool.load_model(run), ebmtool.load_model(tmp_path / "m")
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 16, generator=g), torch.randn(64, 16, generator=g)
    t = torch.randint(0, 10, (64,), generator=g)
    assert torch.equal(a(x, y, t), b(x, y, t))
    assert not torch.equal(a(x, y, t), ebmtool.load_model(run, "ema")(x, y, t))  # the raw set, not the EMA one
    problems = x[:8].numpy()
    np.testing.assert_array_equal(ebmtool.sample(tmp_path / "m", problems), ebmtool.sample(run, problems))


def test_refusals_are_one_sentence(run, tmp_path, runner):
    out = tmp_path / "m"
    assert runner.invoke(cli, ["export", str(run), "-o", str(out), "--eval-n", "0"]).exit_code == 0
    cases = [
        (["export", str(run), "-o", str(out)], f"{out}/model.safetensors already exists; pass --overwrite"),
        (["export", str(run), "-o", str(run)], "is the run's own directory; export into another one"),
        (["eval", str(out), "--weights", "ema"], "holds only its model weights (an exported model)"),
        (["train", "--resume", str(out)], "is an exported model (one weight set, from ebmtool export), not a "
                                          "checkpoint"),
        (["mine-negatives", str(out), "-o", str(tmp_path / "n.h5")], "is an exported model"),
    ]
    for args, message in cases:
        r = runner.invoke(cli, args)
        assert r.exit_code == 2 and message in r.output, (args, r.output)
    data = bytearray((out / "model.safetensors").read_bytes())
    data[-3] ^= 0xFF  # one flipped byte in the tensors
    (out / "model.safetensors").write_bytes(bytes(data))
    r = runner.invoke(cli, ["eval", str(out)])
    assert r.exit_code == 2 and "is corrupted (checksum mismatch" in r.output
