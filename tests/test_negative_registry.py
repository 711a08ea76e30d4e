"""The registry of negative sources: a source from a module outside the package (named in EBMTOOL_PLUGINS) trains
through the CLI (alone and in a curriculum) and mines under mine-negatives, touching no file of the package; bad
names are one sentence; no source name is a string literal outside its own module and the registry."""

import ast
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

import ebmtool
from ebmtool.runtime.errors import InputError
from ebmtool.negatives import curriculum, registry

from helpers import TINY_FLAGS

PACKAGE = Path(ebmtool.__file__).parent

TOY = '''
"""A toy negative source: the positive plus scaled noise, shifted by a constant."""
import torch

from ebmtool.negatives.common import repeat_rows
from ebmtool.negatives.registry import NegativeSource, Setting, register

SCALE = Setting("toy_scale", 0.5, "Toy noise scale.", minimum=0, exclusive=True)


def draw(n, k, d, settings, gen):
    return {"toy": torch.randn((n, k, d), generator=gen)}


def generate(model, x, y, t, eps, sched, k, s, gen, mask=None, noise=None):
    yr = repeat_rows(y, k)
    return (yr + 0.1 + s.toy_scale * noise["toy"].reshape(yr.shape).to(y.device)).clamp(-s.clean_clamp,
                                                                                      s.clean_clamp), {}


register(NegativeSource("toy", generate, draw, settings=(SCALE,)))
'''


def _ebmtool(tmp_path, *args, plugin="toy_negatives"):
    env = {**os.environ, "EBMTOOL_PLUGINS": plugin,
           "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "ebmtool", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=600)


@pytest.fixture
def toy(tmp_path):
    (tmp_path / "toy_negatives.py").write_text(TOY)
    return tmp_path


def test_a_plugin_source_trains_in_a_curriculum_and_mines_through_the_cli(toy):
    before = {p: p.stat().st_mtime_ns for p in PACKAGE.rglob("*.py")}
    help_text = _ebmtool(toy, "train", "--help").stdout
    assert "--toy-scale" in help_text and "toy" in help_text.split("--negatives-from")[1].split("--anm")[0]
    run = toy / "run"
    r = _ebmtool(toy, "train", *TINY_FLAGS, "--steps", "4", "--negatives-from", "toy", "--toy-scale", "0.3",
                 "--k", "2", "-o", run)
    assert r.returncode == 0, r.stderr
    with h5py.File(run / "metrics.h5") as f:
        assert "source/toy/fraction" in f and f["source/toy/fraction"][-1] == 1.0
    r = _ebmtool(toy, "info", run / "ckpt.safetensors", "--json")
    assert r.returncode == 0, r.stderr
    config = json.loads(r.stdout)["config"]
    assert config["negatives"] == "toy" and config["source_settings"] == {"toy_scale": 0.3}

    r = _ebmtool(toy, "train", *TINY_FLAGS, "--steps", "4", "--curriculum", "0:ired,0.5:ired=0.5+toy=0.5",
                 "-o", toy / "cur")
    assert r.returncode == 0, r.stderr
    with h5py.File(toy / "cur" / "metrics.h5") as f:
        assert f["source/toy/configured"][-1] == 0.5  # the second stage's mix
        assert f["source/toy/fraction"][0] == 0.0  # the first stage had no toy negatives

    r = _ebmtool(toy, "mine-negatives", run / "ckpt.safetensors", "--negatives-from", "toy", "--toy-scale", "0.2",
                 "--k", "2", "--limit", "32", "-o", toy / "negs.h5", "--json")
    assert r.returncode == 0, r.stderr
    with h5py.File(toy / "negs.h5") as f:
        assert f["negatives"].shape == (32, 2, 16) and f["valid"][()].all()
        assert (f["start_level"][()] == -1).all()  # the toy source reports no start level
    assert "toy" in (toy / "negs.h5").read_bytes().decode("latin-1")  # its name is in the file's provenance
    assert {p: p.stat().st_mtime_ns for p in PACKAGE.rglob("*.py")} == before  # no file of the package touched


def test_unknown_and_unloaded_sources_are_one_sentence(toy):
    r = _ebmtool(toy, "train", *TINY_FLAGS, "--steps", "2", "--negatives-from", "toy", "-o", toy / "a", plugin="")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "unknown negative source 'toy'; known sources are ired, anm, hnm, gaussian" in r.stderr
    r = _ebmtool(toy, "mine-negatives", toy / "missing.safetensors", "--negatives-from", "nope", plugin="")
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_a_failing_or_clashing_plugin_is_one_sentence_exit_2(toy):
    (toy / "clash.py").write_text(TOY.replace('"toy"', '"hnm"').replace('"toy_scale"', '"clash_scale"'))
    r = _ebmtool(toy, "train", "--steps", "1", plugin="clash")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "a negative source named 'hnm' is already registered" in r.stderr
    (toy / "broken.py").write_text("raise RuntimeError('no GPU here')\n")
    r = _ebmtool(toy, "info", "x", plugin="broken")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "the plugin module 'broken' failed while loading: RuntimeError: no GPU here" in r.stderr


def test_register_get_and_names():
    src = registry.get(registry.names()[0])
    with pytest.raises(InputError, match="already registered; known sources are"):
        registry.register(src)
    with pytest.raises(InputError, match="unknown negative source 'nope'; known sources are"):
        registry.get("nope")
    with pytest.raises(InputError, match="unknown negative source 'nope'"):
        curriculum.parse_mix("nope")  # a name no module registered cannot be mixed in
    assert registry.names() == tuple(s.name for s in registry.sources())
    assert sum(s.reference for s in registry.sources()) == 1


def _modules_of(source) -> set[Path]:
    return {Path(inspect.getfile(f)).resolve() for f in (source.generate, source.draw)}


def test_no_source_name_is_a_string_literal_outside_its_module_and_the_registry():
    allowed = {name: _modules_of(registry.get(name)) | {(PACKAGE / "negatives" / "registry.py").resolve()}
               for name in registry.names()}
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and node.value in allowed and path.resolve() not in allowed[node.value]:
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {node.value!r}")
    assert not found, "source names written outside their modules:\n" + "\n".join(found)


@pytest.mark.parametrize("flags, named", [
    (["--negatives-from", "ired", "--candidates", "3"], "--candidates does not apply to mining with ired"),
    (["--negatives-from", "gaussian", "--lambda", "2", "--select", "sample"],
     "--lambda, --select do not apply to mining with gaussian"),
    (["--anm-steps", "3"], "--anm-steps does not apply to mining with hnm"),
])
def test_mine_negatives_refuses_a_flag_its_source_would_ignore(tmp_path, flags, named):
    """A flag of another source (or hnm's mining options under another source) is one sentence and exit 2, before
    the checkpoint is read and with nothing written."""
    from click.testing import CliRunner

    from ebmtool.cli import cli

    out = tmp_path / "negs.h5"
    r = CliRunner().invoke(cli, ["mine-negatives", str(tmp_path / "none.safetensors"), "-o", str(out), *flags])
    assert r.exit_code == 2 and named in r.output, r.output
    assert not out.exists() and not (tmp_path / "negs.h5.partial").exists()
