"""Graph connectivity: the transitive closure of a random k-nearest-neighbour graph (ebmtool.tasks.graphs).

One family, two registered variants that differ in a parameter: `connectivity` (k up to 10 % of the nodes; its
reference negative comes in two forms) and `connectivity-2` (k up to 20 %, denser graphs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ebmtool.method.diffusion import SamplerSettings
from ebmtool.tasks import graphs
from ebmtool.tasks.discrete import DISCRETE, DiscreteTask
from ebmtool.tasks.problems import Problems
from ebmtool.tasks.reference_negatives import CONNECTIVITY_NEGATIVES, connectivity_negative


@dataclass(frozen=True)
class ConnectivityTask(DiscreteTask):
    """Which node pairs are connected, given the adjacency. `p`: each node links to k ~ U{1..floor(N p)} nearest
    nodes; `negative_forms`: the forms of the reference negative a run may choose (--connectivity-negative)."""

    name: str = "connectivity"
    size: int = 12
    metric: str = "accuracy"
    energy_weight: float = 0.05
    sampler: SamplerSettings = DISCRETE
    harder_size: int = 20
    p: float = 0.1
    negative_forms: tuple[str, ...] = CONNECTIVITY_NEGATIVES

    @property
    def x_dim(self) -> int:
        return self.size ** 2

    @property
    def y_dim(self) -> int:
        return self.size ** 2

    def model_dims(self, width: int | None = None, blocks: int | None = None, time_dim: int = 128) -> dict:
        """The connectivity network (ebmtool.method.models' graph_nlm): `width` its hidden size, `blocks` its layers."""
        return {"arch": "graph_nlm", "hidden": width or 32, "depth": 2 if blocks is None else blocks,
                "time_dim": 512, "x_channels": 1}

    def draw_problems(self, rng, n, nodes, harder, desc):
        x, y = graphs.connectivity(rng, n, nodes, self.p)
        return x, y, None

    def reference_negative(self, y, mask, gen, connectivity_form: str = "reference"):
        return connectivity_negative(y, mask, gen, form=connectivity_form)

    def metrics(self, problems: Problems, y_hat: np.ndarray) -> dict[str, np.ndarray]:
        return graphs.connectivity_metrics(problems.y, y_hat)

    def baselines(self, problems: Problems) -> dict[str, np.ndarray]:
        """Primary metric of trivial predictors: the numbers a model must beat to have learnt anything."""
        y = problems.y
        nodes = int(round(np.sqrt(y.shape[1])))
        diag = np.broadcast_to(2 * np.eye(nodes, dtype=np.float32).reshape(1, -1) - 1, y.shape)
        return {"all connected": self.metrics(problems, np.ones_like(y))[self.metric],
                "only self-connected (majority class)": self.metrics(problems, diag)[self.metric],
                "copy adjacency (+ diagonal)": self.metrics(problems, _adjacency_guess(problems))[self.metric]}


def _adjacency_guess(problems):
    n, d = problems.x.shape
    nodes = int(round(np.sqrt(d)))
    a = problems.x.reshape(n, nodes, nodes).copy()
    a[:, np.arange(nodes), np.arange(nodes)] = 1
    return a.reshape(n, -1)


TASKS = (ConnectivityTask(), ConnectivityTask(name="connectivity-2", p=0.2, negative_forms=()))  # registered
