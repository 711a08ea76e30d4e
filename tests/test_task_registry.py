"""The task and model registries: every task a run can name comes from the registry (built-in or a plugin's), each
family keeps its class at every size, a task's name is written only in its own module and the registry, and a
task from outside the package (docs/architecture.md's worked example, loaded through EBMTOOL_PLUGINS) makes data,
trains, evaluates and compares through the CLI."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ebmtool.method import models
from ebmtool.io.artifacts import read_dataset
from ebmtool.runtime.errors import InputError
from ebmtool.tasks import registry
from ebmtool.tasks.registry import get_task, names, register

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = ROOT / "ebmtool"


# ------------------------------------------------------------------------------------------------ names in the code

def name_literals(source: str, task_names) -> list[str]:
    """String constants equal to a task's name (docstrings are constants too, but never a bare name)."""
    return [f"line {n.lineno}: {n.value!r}" for n in ast.walk(ast.parse(source))
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value in task_names]


def test_the_literal_check_finds_a_name_and_ignores_prose():
    assert name_literals('if cfg.task == "sudoku": pass', {"sudoku"}) == ["line 1: 'sudoku'"]
    assert name_literals('TASKS = ("inverse", "addition")', {"inverse"}) == ["line 1: 'inverse'"]
    assert name_literals('help = "Sudoku CNN channels; connectivity layers"', {"sudoku", "connectivity"}) == []


def test_no_task_name_is_written_outside_its_own_module_and_the_registry():
    owner = {n: Path(sys.modules[type(get_task(n)).__module__].__file__).resolve() for n in names()}
    bad = []
    for path in sorted(LIBRARY.rglob("*.py")):
        if path.resolve() == Path(registry.__file__).resolve():
            continue
        foreign = {n for n, own in owner.items() if own != path.resolve()}
        bad += [f"{path.relative_to(LIBRARY)} {hit}" for hit in name_literals(path.read_text(), foreign)]
    assert bad == []


# ------------------------------------------------------------------------------------------------ the task registry

@pytest.mark.parametrize("name", names())
def test_every_task_keeps_its_class_and_name_at_every_size(name):
    task = get_task(name)
    assert get_task(name, task.size) is task and task.name == name
    if task.size_unit is None:  # a task of one fixed size refuses any other
        with pytest.raises(InputError, match="does not apply"):
            get_task(name, task.size + 1)
        return
    other = get_task(name, task.size + 1)
    assert type(other) is type(task) and other.name == name and other.size == task.size + 1
    assert other.x_dim > task.x_dim and other.y_dim > task.y_dim
    assert other.generate(2, "val").x.shape == (2, other.x_dim)


@pytest.mark.parametrize("name", names())
def test_every_task_is_deterministic_and_its_answers_beat_its_baselines(name):
    task = get_task(name)
    a, b = task.generate(3, "val"), task.generate(3, "val")
    assert a.fingerprint == b.fingerprint and a.description["task"] == name
    assert task.generate(3, "train", seed=1).fingerprint != task.generate(3, "train", seed=2).fingerprint
    best = task.metrics(a, a.y)[task.metric]
    for baseline, score in task.baselines(a).items():
        worse = score <= best if task.higher_is_better else score >= best
        assert worse.all(), baseline
    assert task.model_dims()["arch"] in models.MODEL_BUILDERS


def test_an_unknown_task_is_one_error_listing_the_registered_ones():
    with pytest.raises(InputError) as e:
        get_task("no-such-task")
    assert str(e.value) == (f"unknown task 'no-such-task'; built-in tasks are {', '.join(names())}, "
                            "or give an HDF5 file")


@pytest.fixture
def scratch_registry(monkeypatch):
    """The task registry as it is, restored after the test."""
    monkeypatch.setattr(registry, "_FACTORIES", dict(registry._FACTORIES))
    monkeypatch.setattr(registry, "_MODULES", dict(registry._MODULES))


def test_register_adds_a_task_or_a_factory_and_refuses_a_name_twice(scratch_registry):
    first = names()[0]
    with pytest.raises(InputError, match=f"the task '{first}' is registered twice"):
        register(get_task(first))
    with pytest.raises(InputError, match="does not end in .h5"):
        register("mine.h5", lambda size: get_task(first))
    made = []
    register("alias", lambda size: made.append(size) or get_task(first, size))
    assert names()[-1] == "alias" and get_task("alias") is get_task(first) and made == [None]
    assert registry.builtin_task("alias") is get_task(first) and registry.builtin_task("x.h5") is None


# ------------------------------------------------------------------------------------------------ the model registry

def test_an_unknown_architecture_is_one_error_listing_the_known_ones():
    with pytest.raises(InputError) as e:
        models.build_model({"arch": "resnet"})
    assert str(e.value) == f"unknown model architecture 'resnet'; the known ones are {', '.join(models.MODEL_BUILDERS)}"
    assert {"mlp", "sudoku_cnn", "graph_nlm", "path_gnn"} <= set(models.MODEL_BUILDERS)


def test_register_model_builds_what_it_registers_and_refuses_an_arch_twice(monkeypatch):
    monkeypatch.setattr(models, "MODEL_BUILDERS", dict(models.MODEL_BUILDERS))
    with pytest.raises(InputError, match="'mlp' is registered twice"):
        models.register_model("mlp", lambda dims: None)
    models.register_model("linear", lambda dims: torch.nn.Linear(dims["n"], 1))
    net = models.build_model({"arch": "linear", "n": 3})
    assert isinstance(net, torch.nn.Linear) and net.in_features == 3


# ------------------------------------------------------------------------------------------------ a plugin's task

def toy_module(tmp_path: Path) -> Path:
    """docs/architecture.md's "Add a task" example, written outside the package as toy_task.py."""
    doc = (ROOT / "docs" / "architecture.md").read_text()
    section = doc.split("## Add a task", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    (tmp_path / "toy_task.py").write_text(code)
    return tmp_path


def test_the_worked_example_registers_a_task_of_its_own_class(tmp_path, monkeypatch, scratch_registry):
    monkeypatch.syspath_prepend(str(toy_module(tmp_path)))
    monkeypatch.delitem(sys.modules, "toy_task", raising=False)
    import toy_task

    task = get_task("toy", 6)
    assert type(task) is toy_task.NegationTask and names()[-1] == "toy" and task.x_dim == 6
    p = task.generate(5, "test")
    assert np.array_equal(p.y, -p.x) and task.metrics(p, p.y)["max_error"].max() == 0
    sys.modules.pop("toy_task", None)


def _ebmtool(args, cwd, plugin_dir=None, timeout=300):
    env = dict(os.environ)
    env.pop("EBMTOOL_PLUGINS", None)
    if plugin_dir is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(plugin_dir), env.get("PYTHONPATH", "")])
        env["EBMTOOL_PLUGINS"] = "toy_task"
    return subprocess.run([sys.executable, "-m", "ebmtool", *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_a_plugin_task_makes_data_trains_evaluates_and_compares_through_the_cli(tmp_path):
    (tmp_path / "plugin").mkdir()
    plugin = toy_module(tmp_path / "plugin")
    work = tmp_path / "work"
    work.mkdir()
    unknown = _ebmtool(["data", "toy", "-n", "4", "-o", "toy.h5"], work)
    assert unknown.returncode == 2 and "'toy' is not one of" in unknown.stderr  # without the plugin: no such task

    assert "toy" in _ebmtool(["train", "--help"], work, plugin).stdout.replace("\n", " ")
    r = _ebmtool(["data", "toy", "-n", "32", "--seed", "0", "-o", "toy.h5"], work, plugin)
    assert r.returncode == 0, r.stderr
    data = read_dataset(work / "toy.h5")
    assert data.description["task"] == "toy" and data.x.shape == (32, 4) and np.array_equal(data.y, -data.x)

    for seed in (0, 1):
        r = _ebmtool(["train", "--task", "toy", "--steps", "20", "--train-size", "64", "--batch-size", "16",
                      "--val-size", "8", "--width", "16", "--eval-every", "0", "--log-every", "10", "--device", "cpu",
                      "--seed", seed, "-o", f"run{seed}"], work, plugin)
        assert r.returncode == 0, r.stderr
    r = _ebmtool(["eval", "run0/ckpt.safetensors", "-n", "16", "--device", "cpu", "--json"], work, plugin)
    assert r.returncode == 0, r.stderr
    text = json.dumps(json.loads(r.stdout))
    assert "max_error" in text and "copy x" in text  # the toy task's own metric and baselines
    r = _ebmtool(["compare", "run0/ckpt.safetensors", "run1/ckpt.safetensors", "-n", "16", "--permutations", "100",
                  "--bootstrap", "100"], work, plugin)
    assert r.returncode == 0, r.stderr
    assert "max_error" in r.stdout
