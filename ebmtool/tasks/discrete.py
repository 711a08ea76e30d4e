"""The common base of the discrete tasks (Sudoku, connectivity, shortest path): what they share behind `Task`.

A discrete task generates Problems deterministically from (split, seed, harder) with the streams of
ebmtool.tasks.problems (evaluation splits use the fixed EVAL_SEED). Answers are one-hot +-1, so negatives stay in
[-1, 1]; the `ired` source is the task's own corruption of the answer (`reference_negative`, with duplicates
re-drawn); problems are generated once, not per step. Each family (one module each) draws its problems, scores
them and names its network.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, replace

import numpy as np

from ebmtool.method.diffusion import SamplerSettings
from ebmtool.runtime.errors import InputError
from ebmtool.negatives import DISCRETE_CLAMP
from ebmtool.tasks.problems import Problems, Task, split_seed, stream

DISCRETE = SamplerSettings(inner_steps=5, x0_clamp=1.0, opt_clamp=1.0, opt_multiplier=1.0, post_clamp=1.0)


@dataclass(frozen=True)
class DiscreteTask(Task):
    """A discrete task. `size` is the node count of graph tasks (9 for Sudoku); `harder_size` the node count of
    the harder split."""

    needs_fixed_training_set = True  # puzzles are generated once, not per step
    clean_box = DISCRETE_CLAMP
    reference_negative_source = True
    files_read_as_task = True  # an `ebmtool data` file keeps the task's negatives, masks and metrics
    size_unit = "nodes"  # --size: the graph's node count

    name: str
    size: int
    metric: str
    energy_weight: float
    sampler: SamplerSettings
    harder_size: int
    higher_is_better: bool = True
    discrete: bool = True

    @property
    def label(self) -> str:
        return f"{self.name} ({self.size} nodes)"

    def at_size(self, size: int | None) -> "DiscreteTask":
        """A graph task at `size` nodes (at least 3); its harder split has at least as many."""
        if size is None or size == self.size:
            return self
        if size < 3:
            raise InputError(f"a graph task needs at least 3 nodes, got --size {size}")
        return replace(self, size=size, harder_size=max(size, self.harder_size))

    def generate(self, n: int, split: str = "train", seed: int | None = None, harder: bool = False,
                 size: int | None = None) -> Problems:
        """n problems; the harder split uses more nodes (`harder_size`, or `size`) or fewer Sudoku givens."""
        seed = split_seed(split, seed)
        nodes = size or (self.harder_size if harder else self.size)
        desc = {"task": self.name, "size": nodes, "split": split, "seed": seed, "harder": harder, "n": n}
        x, y, mask = self.draw_problems(stream(seed, split, harder), n, nodes, harder, desc)
        return Problems(x, y, mask, desc)

    @abc.abstractmethod
    def draw_problems(self, rng: np.random.Generator, n: int, nodes: int, harder: bool, desc: dict):
        """(x, y, mask-or-None) of n problems from a random stream; may add to the description `desc`."""

    @abc.abstractmethod
    def reference_negative(self, y, mask, gen, connectivity_form: str = "reference"):
        """(y_neg, n_identical_redrawn): the task's reference negative in clean space, duplicates re-drawn;
        `connectivity_form` is the form a run chose among `negative_forms` (tasks without forms ignore it)."""
