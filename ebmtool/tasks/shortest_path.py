"""Shortest path: the node reached after each of PATH_STEPS steps on a shortest path of a random directed graph
(ebmtool.tasks.graphs)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ebmtool.method.diffusion import SamplerSettings
from ebmtool.runtime.errors import InputError
from ebmtool.tasks import graphs
from ebmtool.tasks.discrete import DiscreteTask
from ebmtool.tasks.problems import Problems
from ebmtool.tasks.reference_negatives import path_negative


@dataclass(frozen=True)
class ShortestPathTask(DiscreteTask):
    """The path from a start to a goal node, one one-hot node per step, padded with the goal."""

    name: str = "shortest-path"
    size: int = 20
    metric: str = "success_rate"
    energy_weight: float = 0.5
    sampler: SamplerSettings = SamplerSettings(inner_steps=5, x0_clamp=1.0, opt_clamp=1.0, opt_multiplier=1.0,
                                               post_clamp=0.1)
    harder_size: int = 25

    @property
    def x_dim(self) -> int:
        return 4 * self.size ** 2

    @property
    def y_dim(self) -> int:
        return graphs.PATH_STEPS * self.size

    def model_dims(self, width: int | None = None, blocks: int | None = None, time_dim: int = 128) -> dict:
        """The path network (ebmtool.method.models' path_gnn): `width` its hidden size; its two blocks are fixed."""
        if blocks is not None:
            raise InputError("--blocks does not apply to shortest-path (its network has two fixed blocks)")
        return {"arch": "path_gnn", "hidden": width or 64, "steps": graphs.PATH_STEPS, "time_dim": 512}

    def draw_problems(self, rng, n, nodes, harder, desc):
        x, y, _ = graphs.shortest_path(rng, n, nodes)
        return x, y, None

    def reference_negative(self, y, mask, gen, connectivity_form: str = "reference"):
        return path_negative(y, mask, gen, graphs.PATH_STEPS)

    def denoise_weights(self, y):
        """The path's entries weigh 10 and the rest 0.5 (the reference's element weights)."""
        return torch.where(y > 0, 10.0, 0.5)

    def metrics(self, problems: Problems, y_hat: np.ndarray) -> dict[str, np.ndarray]:
        nodes = problems.y.shape[1] // graphs.PATH_STEPS
        return graphs.path_metrics(problems.x, problems.y, y_hat, nodes)

    def baselines(self, problems: Problems) -> dict[str, np.ndarray]:
        """Primary metric of trivial predictors: the numbers a model must beat to have learnt anything."""
        return {"stay at start": self.metrics(problems, _path_stay(problems))[self.metric]}


def _path_stay(problems):
    nodes = problems.y.shape[1] // graphs.PATH_STEPS
    _, start, _ = graphs.decode_condition(problems.x, nodes)
    y = -np.ones((len(problems), graphs.PATH_STEPS, nodes), dtype=np.float32)
    y[np.arange(len(problems)), :, start] = 1
    return y.reshape(len(problems), -1)


TASKS = (ShortestPathTask(),)  # registered by ebmtool.tasks.registry
