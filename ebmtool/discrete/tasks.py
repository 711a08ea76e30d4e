"""Discrete tasks behind the same interface as the continuous `Task`.

Each task generates Problems deterministically from (split, seed, harder) with the streams of ebmtool.tasks
(evaluation splits use the fixed EVAL_SEED), and adds what the discrete families need: a mask (Sudoku), the
reference negative with duplicate re-drawing, task metrics per problem, and the energy network's dims.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import torch

from ebmtool.diffusion import SamplerSettings
from ebmtool.discrete import graphs, negatives, sudoku
from ebmtool.errors import InputError
from ebmtool.negatives import DISCRETE_CLAMP
from ebmtool.problems import Problems, Task, split_seed, stream

DISCRETE = SamplerSettings(inner_steps=5, x0_clamp=1.0, opt_clamp=1.0, opt_multiplier=1.0, post_clamp=1.0)


@dataclass(frozen=True)
class DiscreteTask(Task):
    """A built-in discrete task. `size` is the node count of graph tasks (9 for Sudoku). Answers are one-hot +-1,
    so negatives stay in [-1, 1]; the `ired` source is the task's own corruption of the answer."""

    needs_fixed_training_set = True  # puzzles are generated once, not per step
    clean_box = DISCRETE_CLAMP
    reference_negative_source = True

    name: str
    size: int
    metric: str
    energy_weight: float
    sampler: SamplerSettings
    harder_size: int
    higher_is_better: bool = True
    discrete: bool = True

    # -------------------------------------------------------------------------------- shapes
    @property
    def x_dim(self) -> int:
        return {"sudoku": 729, "shortest-path": 4 * self.size ** 2}.get(self.name, self.size ** 2)

    @property
    def y_dim(self) -> int:
        return {"sudoku": 729, "shortest-path": graphs.PATH_STEPS * self.size}.get(self.name, self.size ** 2)

    @property
    def label(self) -> str:
        return "sudoku 9x9" if self.name == "sudoku" else f"{self.name} ({self.size} nodes)"

    @property
    def size_unit(self) -> str | None:
        return None if self.name == "sudoku" else "nodes"  # Sudoku is always 9x9

    @property
    def has_mask(self) -> bool:
        return self.name == "sudoku"  # the clues are given

    @property
    def negative_forms(self) -> tuple[str, ...]:
        """Connectivity's reference negative comes in two forms (the first is the default); no other task's does."""
        return negatives.CONNECTIVITY_NEGATIVES if self.name == "connectivity" else ()

    @property
    def converts_files(self) -> bool:
        return self.name == "sudoku"  # the public Sudoku sets (RRN/Kaggle CSV, SAT-Net .npy)

    def problems_from_files(self, source, labels=None) -> Problems:
        """Sudoku puzzles a user has on disk, checked (sudoku.problems_from_files)."""
        if not self.converts_files:
            return super().problems_from_files(source, labels)
        x, y, mask, desc = sudoku.problems_from_files(source, labels)
        return Problems(x, y, mask, desc)

    def model_dims(self, width: int | None = None, blocks: int | None = None, time_dim: int = 128) -> dict:
        """dims for ebmtool.models.build_model (the reference architecture of this task). `width` and `blocks`
        (None = the reference's) scale it: Sudoku CNN channels / residual blocks, connectivity hidden size /
        layers, shortest-path hidden size (its two temporal blocks are fixed)."""
        if self.name == "sudoku":
            return {"arch": "sudoku_cnn", "x_dim": 729, "y_dim": 729, "width": width or 384,
                    "blocks": 6 if blocks is None else blocks, "time_dim": 128, "time_hidden": 64}
        if self.name == "shortest-path":
            if blocks is not None:
                raise InputError("--blocks does not apply to shortest-path (its network has two fixed blocks)")
            return {"arch": "path_gnn", "hidden": width or 64, "steps": graphs.PATH_STEPS, "time_dim": 512}
        return {"arch": "graph_nlm", "hidden": width or 32, "depth": 2 if blocks is None else blocks,
                "time_dim": 512, "x_channels": 1}

    # -------------------------------------------------------------------------------- data
    def generate(self, n: int, split: str = "train", seed: int | None = None, harder: bool = False,
                 size: int | None = None) -> Problems:
        """n problems; the harder split uses more nodes (`harder_size`, or `size`) or fewer Sudoku givens."""
        seed = split_seed(split, seed)
        nodes = size or (self.harder_size if harder else self.size)
        rng = stream(seed, split, harder)
        desc = {"task": self.name, "size": nodes, "split": split, "seed": seed, "harder": harder, "n": n}
        mask = None
        if self.name == "sudoku":
            puzzles, sols, target = sudoku.generate(n, rng, sudoku.GIVENS_HARDER if harder else sudoku.GIVENS_TRAIN)
            x, y, mask = sudoku.encode(puzzles), sudoku.encode(sols), sudoku.given_mask(puzzles)
            givens = (puzzles > 0).sum(1)
            desc.update(unique=True, givens_min=int(givens.min()), givens_max=int(givens.max()),
                        givens_mean=float(givens.mean()), givens_reached_target=float((givens == target).mean()))
        elif self.name == "shortest-path":
            x, y, _ = graphs.shortest_path(rng, n, nodes)
        else:
            x, y = graphs.connectivity(rng, n, nodes, 0.1 if self.name == "connectivity" else 0.2)
        return Problems(x, y, mask, desc)

    # -------------------------------------------------------------------------------- training pieces
    def reference_negative(self, y, mask, gen, connectivity_form: str = "reference"):
        """(y_neg, n_identical_redrawn): the task's reference negative in clean space, duplicates re-drawn;
        `connectivity_form` chooses connectivity's form (negatives.CONNECTIVITY_NEGATIVES)."""
        if self.name == "sudoku":
            return negatives.sudoku_negative(y, mask, gen)
        if self.name == "shortest-path":
            return negatives.path_negative(y, mask, gen, graphs.PATH_STEPS)
        return negatives.connectivity_negative(y, mask, gen, form=connectivity_form)

    def denoise_weights(self, y):
        """Shortest-path weights the path's entries 10 and the rest 0.5 (the reference's element weights)."""
        return torch.where(y > 0, 10.0, 0.5) if self.name == "shortest-path" else None

    # -------------------------------------------------------------------------------- evaluation
    def metrics(self, problems: Problems, y_hat: np.ndarray) -> dict[str, np.ndarray]:
        """Per-problem metrics; the primary one is `self.metric` (higher is better)."""
        if self.name == "sudoku":
            puzzles = sudoku.puzzles_from_x(problems.x)
            sols = sudoku.decode(problems.y)
            return sudoku.metrics(puzzles, sols, y_hat, unique=bool(problems.description.get("unique", True)))
        if self.name == "shortest-path":
            nodes = problems.y.shape[1] // graphs.PATH_STEPS
            return graphs.path_metrics(problems.x, problems.y, y_hat, nodes)
        return graphs.connectivity_metrics(problems.y, y_hat)

    def baselines(self, problems: Problems) -> dict[str, np.ndarray]:
        """Primary metric of trivial predictors: the numbers a model must beat to have learnt anything."""
        y = problems.y
        if self.name == "sudoku":
            return {"givens only": self.metrics(problems, problems.x)[self.metric]}
        if self.name == "shortest-path":
            return {"stay at start": self.metrics(problems, _path_stay(problems))[self.metric]}
        nodes = int(round(np.sqrt(y.shape[1])))
        diag = np.broadcast_to(2 * np.eye(nodes, dtype=np.float32).reshape(1, -1) - 1, y.shape)
        return {"all connected": self.metrics(problems, np.ones_like(y))[self.metric],
                "only self-connected (majority class)": self.metrics(problems, diag)[self.metric],
                "copy adjacency (+ diagonal)": self.metrics(problems, _adjacency_guess(problems))[self.metric]}


def _path_stay(problems):
    nodes = problems.y.shape[1] // graphs.PATH_STEPS
    _, start, _ = graphs.decode_condition(problems.x, nodes)
    y = -np.ones((len(problems), graphs.PATH_STEPS, nodes), dtype=np.float32)
    y[np.arange(len(problems)), :, start] = 1
    return y.reshape(len(problems), -1)


def _adjacency_guess(problems):
    n, d = problems.x.shape
    nodes = int(round(np.sqrt(d)))
    a = problems.x.reshape(n, nodes, nodes).copy()
    a[:, np.arange(nodes), np.arange(nodes)] = 1
    return a.reshape(n, -1)


TASKS = {
    "sudoku": DiscreteTask("sudoku", 9, "board_solved", 0.05,
                           SamplerSettings(inner_steps=20, x0_clamp=1.0, opt_clamp=1.0, opt_multiplier=1.0,
                                           post_clamp=1.0), harder_size=9),
    "connectivity": DiscreteTask("connectivity", 12, "accuracy", 0.05, DISCRETE, harder_size=20),
    "connectivity-2": DiscreteTask("connectivity-2", 12, "accuracy", 0.05, DISCRETE, harder_size=20),
    "shortest-path": DiscreteTask("shortest-path", 20, "success_rate", 0.5,
                                  SamplerSettings(inner_steps=5, x0_clamp=1.0, opt_clamp=1.0, opt_multiplier=1.0,
                                                  post_clamp=0.1), harder_size=25),
}


def get_discrete_task(name: str, size: int | None = None) -> DiscreteTask:
    """A discrete task; `size` changes the node count of graph tasks (Sudoku is always 9x9)."""
    task = TASKS[name]
    if size is None or size == task.size:
        return task
    if name == "sudoku":
        raise InputError(f"sudoku is always 9x9; --size {size} does not apply")
    if size < 3:
        raise InputError(f"a graph task needs at least 3 nodes, got --size {size}")
    return DiscreteTask(task.name, size, task.metric, task.energy_weight, task.sampler, max(size, task.harder_size))
