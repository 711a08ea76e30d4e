"""Built-in problem families and user HDF5 data behind one interface.

A task turns (split, seed, n) into Problems deterministically. Streams are keyed by purpose with NumPy's
SeedSequence: training draws come from (seed, "train"); validation and test sets from fixed seeds of their own
("val", "test", and the harder variants), so they never share a stream with any training seed and are the same
for every model. Generation follows the reference; the harder split is an evaluation split only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ebmtool.diffusion import SamplerSettings
from ebmtool.errors import InputError

# Fixed seed of every evaluation split (the date of the reference release). Part of each set's identity.
EVAL_SEED = 20240614
PURPOSES = {"train": 1, "val": 2, "test": 3}

SPLITS = ("train", "val", "test")


@dataclass
class Problems:
    """A set of problems: inputs x (N, x_dim), targets y (N, y_dim), optional mask of given entries."""

    x: np.ndarray
    y: np.ndarray
    mask: np.ndarray | None = None
    description: dict = field(default_factory=dict)

    def __len__(self):
        return self.x.shape[0]

    @property
    def fingerprint(self) -> str:
        """sha256 of the contents; identifies a data set across files and runs."""
        h = hashlib.sha256()
        for a in (self.x, self.y, self.mask):
            if a is not None:
                a = np.ascontiguousarray(a, dtype=np.float32)
                h.update(str(a.shape).encode())
                h.update(a.tobytes())
        return h.hexdigest()

    def subset(self, n: int) -> "Problems":
        return Problems(self.x[:n], self.y[:n], None if self.mask is None else self.mask[:n], dict(self.description))


def split_seed(split: str, seed: int | None) -> int:
    """The seed of a split: the caller's for train (required), the fixed EVAL_SEED for val and test."""
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if split != "train":
        seed = EVAL_SEED if seed is None else seed
    if seed is None:
        raise ValueError("a training split needs a seed")
    return seed


def stream(seed: int, purpose: str, harder: bool = False) -> np.random.Generator:
    code = PURPOSES[purpose] + (10 if harder else 0)
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(code,)))


@dataclass(frozen=True)
class Task:
    """A built-in continuous task. Primary metric: per-problem MSE (mean over answer elements); lower = better."""

    name: str
    size: int = 20
    metric: str = "mse"
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

    def generate(self, n: int, split: str = "train", seed: int | None = None, harder: bool = False) -> Problems:
        seed = split_seed(split, seed)
        rng = stream(seed, split, harder)
        x, y = GENERATORS[self.name](rng, n, self.size, harder)
        desc = {"task": self.name, "size": self.size, "split": split, "seed": seed, "harder": harder, "n": n}
        return Problems(x.astype(np.float32), y.astype(np.float32), None, desc)

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
DISCRETE_TASK_NAMES = ("sudoku", "connectivity", "connectivity-2", "shortest-path")  # ebmtool.discrete.tasks
TASK_NAMES = tuple(GENERATORS) + DISCRETE_TASK_NAMES


def get_task(name: str, size: int | None = None):
    """A built-in task. Continuous: `size` is the matrix size (20 when None). Discrete: None = the reference
    size; graph tasks take a node count, Sudoku rejects any size but 9."""
    if name in DISCRETE_TASK_NAMES:
        from ebmtool.discrete.tasks import get_discrete_task

        return get_discrete_task(name, size)
    size = 20 if size is None else size
    if name not in GENERATORS:
        raise InputError(f"unknown task {name!r}; built-in tasks are {', '.join(TASK_NAMES)}, or give an HDF5 file")
    if size < 2:
        raise InputError(f"--size must be at least 2, got {size}")
    return Task(name, size)


@dataclass(frozen=True)
class FileTask(Task):
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
        from ebmtool.artifacts import read_dataset

        problems = read_dataset(Path(name))
        cached = problems.description.get("task")
        if cached in DISCRETE_TASK_NAMES:  # a cache written by `ebmtool data` for a discrete task
            task = get_task(cached, problems.description.get("size"))
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
