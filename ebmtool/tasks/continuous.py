"""The continuous matrix tasks of the reference: inverse, addition and low-rank completion, one class each on a
common base (`ContinuousTask`: --size is the matrix side, MSE is the primary metric, the reference MLP).
The harder split is an evaluation split only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ebmtool.method.diffusion import SamplerSettings, cosine_schedule
from ebmtool.runtime.errors import InputError
from ebmtool.method.models import DEFAULT_WIDTH
from ebmtool.tasks.problems import Problems, Task, split_seed, stream


@dataclass(frozen=True)
class ContinuousTask(Task):
    """A continuous task on size x size matrices. Primary metric: per-problem MSE (mean over answer elements);
    lower = better. A family draws its problems (`draw`) and may add baselines of its own."""

    name: str
    size: int = 20
    metric: str = "mse"
    size_unit = "matrix"  # --size: the matrix side
    inputs_per_answer = 1  # matrices of x per matrix of y
    energy_weight: float = 0.5  # λ of the energy-landscape term, the reference value
    sampler: SamplerSettings = SamplerSettings()
    higher_is_better: bool = False  # the primary metric is an error
    discrete: bool = False

    @property
    def x_dim(self) -> int:
        return self.inputs_per_answer * self.size * self.size

    @property
    def y_dim(self) -> int:
        return self.size * self.size

    @property
    def label(self) -> str:
        return f"{self.name} {self.size}x{self.size}"

    def at_size(self, size: int | None) -> "ContinuousTask":
        if size is None or size == self.size:
            return self
        if size < 2:
            raise InputError(f"--size must be at least 2, got {size}")
        return replace(self, size=size)

    def draw(self, rng: np.random.Generator, n: int, harder: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """n problems (x, y) from a given random stream: fixed splits and fresh training batches alike."""
        raise NotImplementedError(f"{self.label} problems are read from a file, not drawn")

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
        return {"zeros": (problems.y.astype(np.float64) ** 2).mean(axis=1)}


@dataclass(frozen=True)
class InverseTask(ContinuousTask):
    """The inverse of a random symmetric positive-definite matrix (harder: closer to singular)."""

    name: str = "inverse"

    def draw(self, rng, n, harder=False):
        a = rng.uniform(-1, 1, (n, self.size, self.size))
        m = 2 * a @ a.transpose(0, 2, 1) + (0.1 if harder else 0.5) * np.eye(self.size)
        return m.reshape(n, -1), np.linalg.inv(m).reshape(n, -1)

    def baselines(self, problems):
        out = super().baselines(problems)
        y = problems.y.astype(np.float64)
        eye = np.eye(self.size).reshape(1, -1)
        c = (y * eye).sum() / (len(y) * self.size)  # best c for c * Id on this very set (optimistic)
        out["scaled identity"] = ((y - c * eye) ** 2).mean(axis=1)
        return out


@dataclass(frozen=True)
class AdditionTask(ContinuousTask):
    """The sum of two matrices given side by side (harder: entries 2.5 times as large)."""

    name: str = "addition"
    inputs_per_answer = 2

    def draw(self, rng, n, harder=False):
        r = 2.5 if harder else 1.0
        a = rng.uniform(-r, r, (n, self.size * self.size))
        b = rng.uniform(-r, r, (n, self.size * self.size))
        return np.concatenate([a, b], axis=1), a + b


@dataclass(frozen=True)
class LowRankTask(ContinuousTask):
    """A noisy low-rank matrix completed from half of its entries (harder: a larger low-rank part)."""

    name: str = "lowrank"

    def draw(self, rng, n, harder=False):
        size = self.size
        rank = max(1, size // 2)
        u = rng.standard_normal((n, size, rank))
        v = rng.standard_normal((n, size, rank))
        scale = size / 4 if harder else size  # /20 in distribution, /5 harder, for the reference's 20x20
        r = u @ v.transpose(0, 2, 1) / scale + 0.1 * rng.standard_normal((n, size, size))
        mask = rng.random((n, size, size)) < 0.5
        return (r * mask).reshape(n, -1), r.reshape(n, -1)

    def baselines(self, problems):
        out = super().baselines(problems)
        out["copy observed"] = ((problems.y.astype(np.float64) - problems.x) ** 2).mean(axis=1)
        return out


TASKS = (InverseTask(), AdditionTask(), LowRankTask())  # registered by ebmtool.tasks.registry
