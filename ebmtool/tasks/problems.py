"""Problems and the Task interface: what every built-in task and user data file provides.

A task turns (split, seed, n) into Problems deterministically. Streams are keyed by purpose with NumPy's
SeedSequence: training draws come from (seed, "train"); validation and test sets from fixed seeds of their own
("val", "test", and the harder variants), so they never share a stream with any training seed and are the same
for every model.

The training loop, the negatives, evaluation and mining talk to a task only through `Task`: they never ask
which task it is. A new task implements this interface and registers an instance with
ebmtool.tasks.registry.register (see docs/architecture.md, "Add a task").
"""

from __future__ import annotations

import abc
import hashlib
from dataclasses import dataclass, field

import numpy as np

from ebmtool.runtime.errors import InputError

# Fixed seed of every evaluation split (the date of the reference release). Part of each set's identity.
EVAL_SEED = 20240614
PURPOSES = {"train": 1, "val": 2, "test": 3}

SPLITS = ("train", "val", "test")  # the first, train, is what `ebmtool data` writes unless told otherwise


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


class Task(abc.ABC):
    """The interface of a task. Subclasses are frozen dataclasses with at least these fields:

    name, size, metric (the primary per-problem metric), energy_weight (the reference λ of the energy term),
    sampler (SamplerSettings), higher_is_better (the primary metric's direction).
    """

    size_unit: str | None = None  # what --size counts ("matrix" side, graph "nodes"); None: fixed size
    path: str = ""  # the data file of a user task ("" for built-in tasks)
    has_mask: bool = False  # some entries of y are given (Sudoku's clues): imposed while sampling, not learnt
    needs_fixed_training_set: bool = False  # problems are generated once (--train-size > 0), never per step
    clean_box: float | None = None  # negatives are clamped to [-box, box] in clean space (None: unbounded)
    reference_negative_source: bool = False  # the `ired` source is reference_negative, not an energy descent
    negative_forms: tuple[str, ...] = ()  # forms of reference_negative a run may choose (--connectivity-negative)
    converts_files: bool = False  # `ebmtool data --from` converts the user's own files (problems_from_files)
    files_read_as_task: bool = False  # problems written by `ebmtool data` are read back as this task (its
    # negatives, masks and metrics), not as a plain data file

    def at_size(self, size: int | None) -> "Task":
        """This task at `size` (--size; None = its reference size): the same family, a new size. A task of one
        fixed size accepts only that size."""
        if size is None or size == self.size:
            return self
        raise InputError(f"{self.name} has a fixed size; --size {size} does not apply")

    @property
    @abc.abstractmethod
    def x_dim(self) -> int: ...

    @property
    @abc.abstractmethod
    def y_dim(self) -> int: ...

    @property
    @abc.abstractmethod
    def label(self) -> str: ...

    @abc.abstractmethod
    def generate(self, n: int, split: str = "train", seed: int | None = None, harder: bool = False,
                 size: int | None = None) -> Problems:
        """n problems of a split; `size` (graph tasks) overrides the harder split's node count."""

    @abc.abstractmethod
    def model_dims(self, width: int | None = None, blocks: int | None = None, time_dim: int = 128) -> dict:
        """The `dims` of this task's reference energy network (ebmtool.method.models.build_model); width and
        blocks scale it."""

    def draw(self, rng: np.random.Generator, n: int, harder: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """n fresh problems (x, y) from a random stream: a run's training batches under --train-size 0."""
        raise NotImplementedError(f"{self.label} problems are generated once (--train-size > 0), not per step")

    def reference_negative(self, y, mask, gen, form: str):
        """(y_neg, n_identical_redrawn): the task's own corruption of the answer (reference_negative_source)."""
        raise NotImplementedError(f"{self.label} has no reference negative: its ired negatives descend the energy")

    @property
    def recipe_size_applies(self) -> bool:
        """The recipes' `size` is a matrix side: it sizes tasks whose --size counts one, not graphs or Sudoku."""
        return self.size_unit == "matrix"

    def problems_from_files(self, source, labels=None) -> Problems:
        """The user's own problems from files on disk (`converts_files`), for `ebmtool data --from`."""
        raise NotImplementedError(f"{self.label} problems are generated, not converted from files")

    def denoise_weights(self, y):
        """Per-element weights of the denoising loss (a tensor like y), or None for a plain mean."""
        return None

    @abc.abstractmethod
    def metrics(self, problems: Problems, y_hat: np.ndarray) -> dict[str, np.ndarray]:
        """Per-problem metrics of predicted answers; `self.metric` among them."""

    @abc.abstractmethod
    def baselines(self, problems: Problems) -> dict[str, np.ndarray]:
        """The primary metric of trivial predictors: the numbers a model must beat to have learnt anything."""
