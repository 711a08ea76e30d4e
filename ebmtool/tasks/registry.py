"""The task registry: every task a run can name, built-in or from a plugin, is registered here.

`register(task)` adds a task instance (its reference size) under `task.name`; `get_task(name, size)` returns it
at a size through `Task.at_size`, so a family stays its own class at every size. `register(name, make)` adds a
factory instead: `make(size)` (size None = the reference size) returns the task. The CLI's task choices and help,
`data`, `eval`, `compare` and the study read `names()`; nothing outside a task's own module names it.

The built-in families declare their tasks (each module's TASKS), registered here in the order of
BUILTIN_FAMILIES; plugins (ebmtool.plugins, EBMTOOL_PLUGINS) import this module and call `register` in theirs.
"""

from __future__ import annotations

from collections.abc import Callable

from ebmtool.runtime.errors import InputError
from ebmtool.tasks import connectivity, continuous, shortest_path, sudoku
from ebmtool.tasks.problems import Task

DEFAULT_TASK = "inverse"  # the task a run trains when none is named (declared by ebmtool.tasks.continuous)
BUILTIN_FAMILIES = (continuous, sudoku, connectivity, shortest_path)  # in the order `names()` lists their tasks

_FACTORIES: dict[str, Callable[[int | None], Task]] = {}
_MODULES: dict[str, str] = {}  # name -> the module that registered it


def register(task_or_name: Task | str, make: Callable[[int | None], Task] | None = None):
    """Register a task: `register(task)` (a Task instance at its reference size, named by `task.name`), or
    `register(name, make)` with make(size) -> Task. Returns its argument. A name registered twice, or a name that
    reads as a data file, is an InputError."""
    if isinstance(task_or_name, Task):
        if make is not None:
            raise InputError("register(task) takes the task alone; register(name, make) takes a factory")
        name, make, module = task_or_name.name, task_or_name.at_size, type(task_or_name).__module__
    else:
        name, module = task_or_name, getattr(make, "__module__", "?")
        if not callable(make):
            raise InputError(f"register({name!r}, make) needs a callable make(size) that returns the task")
    if not isinstance(name, str) or not name or name.endswith((".h5", ".hdf5")):
        raise InputError(f"a task's name must be a non-empty string that does not end in .h5/.hdf5, got {name!r}")
    if name in _FACTORIES:
        raise InputError(f"the task {name!r} is registered twice (by {_MODULES[name]} and by {module})")
    _FACTORIES[name] = make
    _MODULES[name] = module
    return task_or_name


def names() -> tuple[str, ...]:
    """Every registered task's name: the built-in ones in the order of BUILTIN_FAMILIES, then plugins' tasks in
    the order they were registered."""
    return tuple(_FACTORIES)


def get_task(name: str, size: int | None = None) -> Task:
    """A registered task at `size` (None = its reference size: 20 for the matrix tasks, the graph tasks' node
    counts; Sudoku takes no other size). An unknown name is an InputError listing the known ones."""
    if name not in _FACTORIES:
        raise InputError(f"unknown task {name!r}; built-in tasks are {', '.join(names())}, or give an HDF5 file")
    return _FACTORIES[name](size)


def builtin_task(name: str | None) -> Task | None:
    """The registered task `name` at its reference size, or None for anything else (a data file): lets the
    configuration and the CLI ask a task what it accepts without opening files."""
    return get_task(name, None) if name in _FACTORIES else None


def dataset_task(name: str | None, size: int | None) -> Task | None:
    """The registered task that problems written by `ebmtool data` for task `name` stand for, when it must be kept
    (`Task.files_read_as_task`: the discrete tasks' negatives, masks and metrics); None when the file is plain
    data (the continuous tasks)."""
    task = builtin_task(name)
    return get_task(name, size) if task is not None and task.files_read_as_task else None


for _family in BUILTIN_FAMILIES:
    for _task in _family.TASKS:
        register(_task)
