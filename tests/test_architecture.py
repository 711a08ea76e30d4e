"""The shape of the library, as docs/architecture.md states it: short functions, modules of one concern, imports
at the top (the layer contract itself is checked by lint-imports in `make test`)."""

import ast
from pathlib import Path

import pytest

from ebmtool.tasks.registry import names as task_names

LIBRARY = Path(__file__).parent.parent / "ebmtool"
FILES = sorted(LIBRARY.rglob("*.py"))
# imports inside a function: the optional dependencies (tensorboard, mlflow), and matplotlib and scipy, which every process
# (torchrun's training workers too) would otherwise load at start-up through the CLI, imported when first used
LAZY_ALLOWED = {("training/trackers.py", "torch.utils.tensorboard"),
                ("training/trackers.py", "torch.utils.tensorboard.summary"), ("training/trackers.py", "mlflow"),
                ("training/trackers.py", "mlflow.entities"), ("training/trackers.py", "mlflow.exceptions"),
                ("training/trackers.py", "mlflow.tracking"), ("analysis/plots.py", "matplotlib"),
                ("analysis/plots.py", "matplotlib.pyplot"), ("analysis/stats.py", "scipy")}


def _functions(tree):
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(LIBRARY)))
def test_functions_are_at_most_80_lines_and_modules_500(path):
    tree = ast.parse(path.read_text())
    long = [f"{f.name} ({f.end_lineno - f.lineno + 1} lines)" for f in _functions(tree)
            if f.end_lineno - f.lineno + 1 > 80]
    assert not long, f"{path.name}: {long}"
    assert len(path.read_text().splitlines()) <= 500, path.name


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(LIBRARY)))
def test_imports_are_at_module_level(path):
    rel = str(path.relative_to(LIBRARY))
    lazy = []
    for f in _functions(ast.parse(path.read_text())):
        for node in ast.walk(f):
            if isinstance(node, ast.ImportFrom):
                lazy.append(node.module)
            elif isinstance(node, ast.Import):
                lazy += [a.name for a in node.names]
    assert [m for m in lazy if (rel, m) not in LAZY_ALLOWED] == [], rel


def test_no_private_name_is_imported_across_modules():
    bad = []
    for path in FILES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ebmtool"):
                bad += [f"{path.name}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")
                        and not a.name.startswith("__")]
    assert bad == []


def _subject(node) -> str:
    """What an expression names: `task`, `self.task`, `cfg["task"]` and `values.get("task")` all name `task`."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
        return str(node.slice.value)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
            and node.args and isinstance(node.args[0], ast.Constant):
        return str(node.args[0].value)
    return ""


def task_identity_checks(source: str) -> list[str]:
    """Comparisons that ask which task this is: a task's name compared with a string (`task == "..."`,
    `self.task != "..."`, `cfg["task"] == "..."`, `x.name == "<a task's name>"`) or membership in
    DISCRETE_TASK_NAMES. Such a question belongs behind the Task interface."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare):
            continue
        sides = [node.left, *node.comparators]
        strings = {s.value for s in sides if isinstance(s, ast.Constant) and isinstance(s.value, str)}
        subjects = {_subject(s) for s in sides}
        by_task = bool(strings) and any("task" in n.lower() for n in subjects)
        by_name = "name" in subjects and bool(strings & set(task_names()))
        category = "DISCRETE_TASK_NAMES" in subjects
        if by_task or by_name or category:
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_the_task_check_catches_the_checks_it_replaced():
    """The comparisons the Task interface replaced (config, cli/data, cli/core, evaluate) are each flagged."""
    old = ['if self.task == "connectivity": pass', 'if task != "sudoku": pass',
           'if self.name == "shortest-path": pass', 'if self.task not in DISCRETE_TASK_NAMES: pass',
           'x = 1 if task in DISCRETE_TASK_NAMES else 2', 'ok = values.get("task") in DISCRETE_TASK_NAMES',
           'ok = cfg["task"] not in TASK_NAMES and ckpt.task in DISCRETE_TASK_NAMES']
    assert [s for s in old if not task_identity_checks(s)] == []
    fine = ['ok = path.name != "ckpt.safetensors"', 'ok = ctx.get_parameter_source("n").name == "COMMANDLINE"',
            'ok = ctx.get_parameter_source("task").name == "COMMANDLINE"', 'ok = cfg["task"] not in TASK_NAMES']
    assert [s for s in fine if task_identity_checks(s)] == []


def test_tasks_are_only_asked_what_they_are_inside_the_task_modules():
    """Outside the tasks package nothing asks whether a task is discrete; nowhere, the task modules included
    (one class per family), is a task's name compared with a string."""
    bad = []
    for path in FILES:
        rel = str(path.relative_to(LIBRARY))
        text = path.read_text()
        if not rel.startswith("tasks/"):
            asks = [n for n in ast.walk(ast.parse(text)) if isinstance(n, ast.Attribute) and n.attr == "discrete"]
            if asks or '"discrete"' in text or '"shortest-path"' in text:
                bad.append(rel)
        bad += [f"{rel} {c}" for c in task_identity_checks(text)]
    assert bad == []


def test_only_the_file_format_modules_import_h5py_or_safetensors():
    """artifacts.py, checkpoints.py and negatives_file.py own the file formats: nothing else imports h5py or
    safetensors."""
    owners = {"io/artifacts.py", "io/checkpoints.py", "io/negatives_file.py"}
    bad = []
    for path in FILES:
        rel = str(path.relative_to(LIBRARY))
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            bad += [f"{rel}: {n}" for n in names if n.split(".")[0] in ("h5py", "safetensors") and rel not in owners]
    assert bad == []


def test_metrics_h5_has_one_reader():
    """training/metrics.py's read_metrics is the only place that opens a metrics.h5: info, compare and report read
    its columns, so the layout is known once."""
    bad = []
    for path in FILES:
        rel = str(path.relative_to(LIBRARY))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "open_h5" \
                    and any(isinstance(a, ast.Constant) and a.value == "metrics" for a in node.args):
                bad.append(rel)
    assert bad == ["training/metrics.py"]
