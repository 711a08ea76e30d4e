"""User data files as tasks: an HDF5 file of problems (`inputs`, `targets`, optional `mask`) trains and evaluates
like a task. A file written by `ebmtool data` for a task whose files are read as the task (the discrete tasks)
stands for that task; any other file is plain data (`FileTask`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ebmtool.io.artifacts import read_dataset
from ebmtool.runtime.errors import InputError
from ebmtool.tasks.continuous import ContinuousTask
from ebmtool.tasks.problems import Problems
from ebmtool.tasks.registry import dataset_task, get_task


@dataclass(frozen=True)
class FileTask(ContinuousTask):
    """A user data set from HDF5 (`inputs`, `targets`, optional `mask`); first 90 % train, last 10 % validation."""

    path: str = ""
    x_dim_: int = 0
    y_dim_: int = 0

    @property
    def x_dim(self):
        return self.x_dim_

    @property
    def y_dim(self):
        return self.y_dim_

    @property
    def label(self):
        return f"data file {Path(self.path).name}"

    def baselines(self, problems):
        return {"zeros": (problems.y.astype(np.float64) ** 2).mean(axis=1)}


def is_data_file(name: str) -> bool:
    return name.endswith((".h5", ".hdf5")) or Path(name).is_file()


def resolve_task(name: str, size: int | None = 20):
    """A registered task by name, or (FileTask, Problems) for an HDF5 file. Returns (task, problems-or-None)."""
    if is_data_file(name):
        problems = read_dataset(Path(name))
        task = dataset_task(problems.description.get("task"), problems.description.get("size"))
        if task is not None:  # a cache written by `ebmtool data` for a discrete task
            if problems.x.shape[1] != task.x_dim or problems.y.shape[1] != task.y_dim:
                raise InputError(f"{name}: arrays of width {problems.x.shape[1]} -> {problems.y.shape[1]} do not "
                                 f"fit {task.label} ({task.x_dim} -> {task.y_dim})")
            return task, problems
        task = FileTask(name="file", size=0, path=str(name), x_dim_=problems.x.shape[1], y_dim_=problems.y.shape[1])
        return task, problems
    return get_task(name, size), None


def split_user_data(problems: Problems) -> tuple[Problems, Problems]:
    """First 90 % for training, last 10 % (at least one row) for validation, as the reference does."""
    n = len(problems)
    if n < 2:
        raise InputError(f"a data file needs at least 2 rows to hold out validation problems, it has {n}")
    cut = n - max(1, n // 10)

    def part(sl):
        return Problems(problems.x[sl], problems.y[sl], None if problems.mask is None else problems.mask[sl],
                        dict(problems.description))

    return part(slice(0, cut)), part(slice(cut, n))
