"""What `--help` shows as the default of an option that stays unset when not given (click's `show_default` text),
read from the library so that the help never drifts from what a run uses.

Options of `train` are unset (None) unless given, so that a resumed run can tell a given flag from an omitted
one; the library resolves them: TrainConfig's field defaults, and the settings of negative sources, SANS and
offline negatives that TrainConfig.validate fills in when they are used (ebmtool.analysis.confounds.unset_defaults).
Per-task defaults (sizes, widths, energy weights) come from the tasks themselves.
"""

from __future__ import annotations

import dataclasses

from ebmtool.config import TrainConfig
from ebmtool.analysis.confounds import unset_defaults
from ebmtool.tasks.registry import get_task, names as task_names


def _train_defaults() -> dict:
    fields = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}
    return {**fields, **unset_defaults()}


TRAIN_DEFAULTS = _train_defaults()


def train_default(name: str) -> str:
    """The show_default text of a train flag: the value of TrainConfig field `name` when the flag is not given."""
    return str(TRAIN_DEFAULTS[name])


def per_task(value_of, tasks=None) -> str:
    """A per-task default as text, tasks with the same value together: '512: inverse, addition; 384: sudoku'.
    `value_of(task)` returns the value, or None for a task it does not apply to."""
    groups: dict[str, list[str]] = {}
    for name in task_names() if tasks is None else tasks:
        v = value_of(get_task(name, None))
        if v is not None:
            groups.setdefault(f"{v:g}" if isinstance(v, float) else str(v), []).append(name)
    return "; ".join(f"{v}: {', '.join(names)}" for v, names in groups.items())


def task_width(task) -> int:
    """The reference network width of a task: the MLP's for continuous tasks, Sudoku CNN channels, graph hidden
    size."""
    dims = task.model_dims(None, None)
    return dims.get("width", dims.get("hidden"))


def task_blocks(task) -> int | None:
    """The reference depth of a discrete task's network (Sudoku residual blocks, connectivity layers); None where
    --blocks does not apply."""
    dims = task.model_dims(None, None)  # continuous tasks and shortest-path have no depth to set
    return dims.get("blocks", dims.get("depth"))
