"""Every artifact records the command line, library versions, the device and the machine; info shows them and
compare names runs trained with other torch versions or devices."""

import json

import h5py
import pytest
import torch

from ebmtool.io.checkpoints import load_checkpoint, save_checkpoint
from ebmtool.cli import cli
from ebmtool.analysis.confounds import environment_warnings
from ebmtool.analysis.arms import load_groups
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


def _git(cwd, *args):
    import subprocess

    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout.strip()


def _package_copy(dest):
    """ebmtool's package folder copied to dest/ebmtool (no caches)."""
    import shutil
    from pathlib import Path

    import ebmtool

    shutil.copytree(Path(ebmtool.__file__).parent, dest / "ebmtool", ignore=shutil.ignore_patterns("__pycache__"))


def _code_version_in(pythonpath, cwd) -> dict:
    """code_version() as a fresh process importing ebmtool from `pythonpath` reports it."""
    import os
    import subprocess
    import sys

    code = "import json; from ebmtool.io.artifacts import code_version; print(json.dumps(code_version()))"
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, env={**os.environ, "PYTHONPATH": str(pythonpath)},
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def test_an_installed_copy_inside_another_repository_records_no_commit(tmp_path):
    """Installed (files copied into site-packages) into a virtual environment inside another git repository, the
    package must not record that repository's commit as its own."""
    import ebmtool

    other = tmp_path / "project"
    site = other / ".venv" / "lib" / "site-packages"
    _package_copy(site)
    _git(other, "init", "-q")
    _git(other, "add", "-A")
    _git(other, "commit", "-q", "-m", "another project, with a copy of ebmtool in it")
    got = _code_version_in(site, tmp_path)
    assert got["git_commit"] == "not a git checkout" and got["git_dirty_hash"] == "clean"
    assert got["ebmtool_version"] == ebmtool.__version__


def test_a_checkout_records_its_own_commit(tmp_path):
    """A checkout of ebmtool (the package at the top of a git repository, as in an editable install) records its
    commit. The checkout is made here, so the test runs however the suite itself was checked out."""
    checkout = tmp_path / "ebmtool-checkout"
    _package_copy(checkout)
    _git(checkout, "init", "-q")
    _git(checkout, "add", "-A")
    _git(checkout, "commit", "-q", "-m", "ebmtool")
    assert _code_version_in(checkout, tmp_path)["git_commit"] == _git(checkout, "rev-parse", "HEAD")
