"""The task registry: built-in continuous families, the discrete ones (ebmtool.discrete.tasks) and user HDF5
data, all behind the `Task` interface (ebmtool.problems). The harder split is an evaluation split only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ebmtool.artifacts import read_dataset
from ebmtool.diffusion import SamplerSettings, cosine_schedule
from ebmtool.discrete.tasks import get_discrete_task
from ebmtool.errors import InputError
from ebmtool.models import DEFAULT_WIDTH
from ebmtool.problems import EVAL_SEED, PURPOSES, SPLITS, Problems, Task, split_seed, stream  # noqa: F401

DISCRETE_TASK_NAMES = ("sudoku", "connectivity", "connectivity-2", "shortest-path")  # ebmtool.discrete.tasks


@dataclass(frozen=True)
class ContinuousTask(Task):
    """A built-in continuous task. Primary metric: per-problem MSE (mean over answer elements); lower = better."""

    name: str
    size: int = 20
    metric: str = "mse"
    size_unit = "matrix"  # --size: the matrix side
    energy_weight: float = 0.5  # λ of the energy-landscape term, the reference value
    sampler: SamplerSettings = SamplerSettings()
    higher_is_better: bool = False  # the primary metric is an error
    discrete: bool = False

    @property
    def x_dim(self) -> int:
        return 2 * self.size * self.size if self.name == "addition" else self.size * self.size

    @property
    def y_dim(self) -> int:
        return self.size * self.size

    @property
    def label(self) -> str:
        return f"{self.name} {self.size}x{self.size}"

    def draw(self, rng: np.random.Generator, n: int, harder: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """n problems (x, y) from a given random stream: fixed splits and fresh training batches alike."""
        return GENERATORS[self.name](rng, n, self.size, harder)

    def generate(self, n: int, split: str = "train", seed: int | None = None, harder: bool = False,
                 size: int | None = None) -> Problems:
        seed = split_seed(split, seed)
        x, y = self.draw(stream(seed, split, harder), n, harder)
        desc = {"task": self.name, "size": self.size, "split": split, "seed": seed, "harder": harder, "n": n}
        return Problems(x.astype(np.float32), y.astype(np.float32), None, desc)

    def model_dims(self, width: int | None = None, blocks: int | None = None, time_dim: int = 128) -> dict:
        if blocks is not None:
            raise InputError("--blocks applies to the discrete tasks' networks; the MLP has a fixed depth")
        return {"arch": "mlp", "x_dim": self.x_dim, "y_dim": self.y_dim, "width": width or DEFAULT_WIDTH,
                "time_dim": time_dim}

    def metrics(self, problems: Problems, y_hat: np.ndarray) -> dict[str, np.ndarray]:
        """`mse` of y_hat and `mse_ref_scaled`, the mse of sqrt(ab_0) * y_hat (the reference's reporting)."""
        y = problems.y.astype(np.float64)
        pred = y_hat.astype(np.float64)
        scale = float(cosine_schedule().sqrt_ab[0])
        return {"mse": ((pred - y) ** 2).mean(axis=1), "mse_ref_scaled": ((scale * pred - y) ** 2).mean(axis=1)}

    def baselines(self, problems: Problems) -> dict[str, np.ndarray]:
        """Per-problem errors of trivial predictors: the numbers a model must beat to have learnt anything."""
        y = problems.y.astype(np.float64)
        out = {"zeros": (y**2).mean(axis=1)}
        if self.name == "inverse":
            eye = np.eye(self.size).reshape(1, -1)
            c = (y * eye).sum() / (len(y) * self.size)  # best c for c * Id on this very set (optimistic)
            out["scaled identity"] = ((y - c * eye) ** 2).mean(axis=1)
        if self.name == "lowrank":
            out["copy observed"] = ((y - problems.x) ** 2).mean(axis=1)
        return out


def _inverse(rng, n, size, harder):
    a = rng.uniform(-1, 1, (n, size, size))
    m = 2 * a @ a.transpose(0, 2, 1) + (0.1 if harder else 0.5) * np.eye(size)
    return m.reshape(n, -1), np.linalg.inv(m).reshape(n, -1)


def _addition(rng, n, size, harder):
    r = 2.5 if harder else 1.0
    a = rng.uniform(-r, r, (n, size * size))
    b = rng.uniform(-r, r, (n, size * size))
    return np.concatenate([a, b], axis=1), a + b


def _lowrank(rng, n, size, harder):
    rank = max(1, size // 2)
    u = rng.standard_normal((n, size, rank))
    v = rng.standard_normal((n, size, rank))
    scale = size / 4 if harder else size  # /20 in distribution, /5 harder, for the reference's 20x20
    r = u @ v.transpose(0, 2, 1) / scale + 0.1 * rng.standard_normal((n, size, size))
    mask = rng.random((n, size, size)) < 0.5
    return (r * mask).reshape(n, -1), r.reshape(n, -1)


GENERATORS = {"inverse": _inverse, "addition": _addition, "lowrank": _lowrank}
TASK_NAMES = tuple(GENERATORS) + DISCRETE_TASK_NAMES


def builtin_task(name: str | None) -> Task | None:
    """The built-in task `name` at its reference size, or None for anything else (a data file): lets the
    configuration and the CLI ask a task what it accepts without opening files."""
    return get_task(name, None) if name in TASK_NAMES else None


def dataset_task(name: str | None, size: int | None) -> Task | None:
    """The built-in task that problems written by `ebmtool data` for task `name` stand for, when it must be kept
    (discrete tasks: their negatives, masks and metrics); None when the file is plain data (continuous tasks)."""
    return get_task(name, size) if name in DISCRETE_TASK_NAMES else None


def get_task(name: str, size: int | None = None):
    """A built-in task. Continuous: `size` is the matrix size (20 when None). Discrete: None = the reference
    size; graph tasks take a node count, Sudoku rejects any size but 9."""
    if name in DISCRETE_TASK_NAMES:
        return get_discrete_task(name, size)
    size = 20 if size is None else size
    if name not in GENERATORS:
        raise InputError(f"unknown task {name!r}; built-in tasks are {', '.join(TASK_NAMES)}, or give an HDF5 file")
    if size < 2:
        raise InputError(f"--size must be at least 2, got {size}")
    return ContinuousTask(name, size)


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
    """A built-in task by name, or (FileTask, Problems) for an HDF5 file. Returns (task, problems-or-None)."""
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
