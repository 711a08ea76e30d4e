"""Every artifact records the command line, library versions, the device and the machine; info shows them and
compare names runs trained with other torch versions or devices."""

import json

import h5py
import pytest
import torch

from ebmtool.checkpoints import load_checkpoint, save_checkpoint
from ebmtool.cli import cli
from ebmtool.confounds import environment_warnings
from ebmtool.arms import load_groups
from ebmtool.training.loop import train

from helpers import tiny


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("prov")
    train(tiny(seed=1, steps=2), d / "r", log=lambda m: None)
    return d / "r"


def test_checkpoint_and_metrics_record_the_environment(run):
    env = json.loads(load_checkpoint(run / "ckpt.safetensors").meta["ebmtool.environment"])
    assert env["versions"]["torch"] == torch.__version__ and set(env["versions"]) >= {
        "python", "torch", "numpy", "h5py", "safetensors", "scipy"}
    assert env["device"] == "cpu" and env["threads"] == torch.get_num_threads() and env["host"]
    assert isinstance(env["argv"], list) and env["argv"]
    with h5py.File(run / "metrics.h5", "r") as f:
        prov = json.loads(f.attrs["provenance"])
    assert prov["environment"]["versions"] == env["versions"] and prov["environment"]["device"] == "cpu"


def test_info_prints_command_versions_and_device(run, runner):
    r = runner.invoke(cli, ["info", str(run / "ckpt.safetensors")])
    assert r.exit_code == 0
    lines = r.output.splitlines()
    assert any(ln.startswith("command   ") for ln in lines)
    assert f"torch {torch.__version__}" in next(ln for ln in lines if ln.startswith("versions  "))
    assert next(ln for ln in lines if ln.startswith("made on   ")).startswith("made on   cpu (")
    r = runner.invoke(cli, ["info", str(run / "metrics.h5")])
    versions = next(ln for ln in r.output.splitlines() if ln.startswith("versions  "))
    assert f"torch {torch.__version__}" in versions and "python 3." in versions


def test_compare_names_runs_of_another_torch_version_or_device(run, tmp_path):
    ck = load_checkpoint(run / "ckpt.safetensors")
    env = json.loads(ck.meta["ebmtool.environment"])
    other = {**env, "versions": {**env["versions"], "torch": "9.9.9"}, "device": "cuda:0", "device_name": "GPU X"}
    save_checkpoint(tmp_path / "other.safetensors", ck.tensors, {**ck.meta, "ebmtool.environment": json.dumps(other)})
    same = load_groups([("a", [run / "ckpt.safetensors"]), ("b", [run / "ckpt.safetensors"])])
    assert environment_warnings(same) == []
    mixed = load_groups([("a", [run / "ckpt.safetensors"]), ("b", [tmp_path / "other.safetensors"])])
    warns = environment_warnings(mixed)
    assert warns[0] == f"the runs were trained with different torch versions: {torch.__version__} (a); 9.9.9 (b)"
    assert warns[1].startswith("the runs were trained with different devices: ") and "cuda:0 (GPU X) (b)" in warns[1]
