"""Pre-flight of a negative source: run it, with the user's settings, against the exact energy of a task whose
answer is known, without training, and measure how many of its negatives are positives in disguise.

For the built-in tasks the answer y is a function of the problem x, so the true density of the noisy answer at
level t is N(sqrt(ab_t) y, (1 - ab_t) I), and

    E*(x, z, t) = ||z - sqrt(ab_t) y(x)||^2 / (2 sqrt(1 - ab_t))

is an energy whose input gradient at z = sqrt(ab_t) y + sqrt(1 - ab_t) eps is exactly eps: the perfect denoiser.
A source that descends an energy collapses toward that energy's minimiser, the noisy mode, under a perfect
energy. That is what the pre-flight measures: the false-negative fraction P(kappa < 1) per level tells whether a
trained model would be asked to rank more probable answers above their positives. Under E* a pair's p_hard
P(E- < E+) equals its false-negative fraction exactly (E* is monotone in the distance to the mode).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ebmtool.config import TrainConfig
from ebmtool.method.diffusion import Schedule, cosine_schedule
from ebmtool.runtime.errors import InputError
from ebmtool.negatives import kappa, noise_to_signal
from ebmtool.tasks.problems import Problems
from ebmtool.tasks.registry import get_task
from ebmtool.training.losses import Batch, Objective, standard_normal
from ebmtool.training.negatives import assemble

PREFLIGHT_COLUMNS = ("level", "false_negative_fraction", "near_duplicate_fraction", "kappa", "floored_fraction",
                     "dropped_fraction")


class ExactEnergy(torch.nn.Module):
    """E*(x, z, t) of a fixed set of problems: each row's answer is looked up by its problem x (exact match), so
    the sources see an energy network's interface, (x, z, t) -> E (B,), and nothing else."""

    explicit_grad = False  # sources take its input gradient with autograd

    def __init__(self, sched: Schedule, problems: Problems):
        super().__init__()
        self.sched = sched
        self.y = torch.from_numpy(np.ascontiguousarray(problems.y, dtype=np.float32))
        self.row_of = {r.tobytes(): i for i, r in enumerate(np.ascontiguousarray(problems.x, dtype=np.float32))}
        if len(self.row_of) != len(problems):
            raise InputError("the pre-flight problems repeat an input: the answer of a row is not known")

    def answers(self, x: torch.Tensor) -> torch.Tensor:
        rows = [self.row_of[r.tobytes()] for r in x.detach().cpu().numpy()]
        return self.y[rows].to(x.device)

    def forward(self, x, z, t):
        mode = self.sched.sqrt_ab[t][:, None] * self.answers(x)
        return ((z - mode) ** 2).sum(dim=1) / (2 * self.sched.sqrt_1mab[t])


@dataclass
class PreflightResult:
    rows: list[dict]  # one per level: PREFLIGHT_COLUMNS
    source: str  # the negatives' configuration, as the run would log it
    k: int
    n: int
    task: str

    def as_dict(self) -> dict:
        return {"task": self.task, "source": self.source, "k": self.k, "n": self.n, "levels": self.rows}


def preflight(cfg: TrainConfig, n: int = 512, seed: int = 0) -> PreflightResult:
    """The source(s) of `cfg` (validated) run on n test problems of its task at every level, each level one batch
    with its own noise (drawn from `seed`), against ExactEnergy. Only the first curriculum stage is used."""
    task = get_task(cfg.task, cfg.size)
    size = cfg.size if cfg.size is not None or not task.recipe_size_applies else TrainConfig.size
    cfg = TrainConfig(**{**cfg.to_dict(), "seed": seed, "size": size}).validate()
    if not cfg.supervise_energy:
        raise InputError("the pre-flight measures negatives: it needs energy supervision (no --no-supervise-energy)")
    if cfg.offline_negatives:
        raise InputError("the pre-flight runs online sources; an offline file's negatives were mined against a "
                         "model, not the exact energy")
    task = get_task(cfg.task, cfg.size)
    if task.has_mask:
        raise InputError(f"the pre-flight needs a task without given entries; {task.label} has them")
    problems = task.generate(n, split="test")
    sched = cosine_schedule()
    oracle = ExactEnergy(sched, problems)
    obj = Objective(cfg, sched, task)
    x, y = torch.from_numpy(problems.x).float(), torch.from_numpy(problems.y).float()
    rows = []
    for level in range(sched.levels):
        gen = torch.Generator().manual_seed(seed * 1000 + level)
        t = torch.full((n,), level, dtype=torch.long)
        batch = Batch(x, y, t, gen, torch.Generator().manual_seed(seed * 1000 + level + 500))
        eps = standard_normal(y, batch.gen, None)
        neg = assemble(oracle, batch, obj, eps)
        rows.append(_level_row(level, neg, kappa(neg.y_neg, y, eps, noise_to_signal(sched, t))))
    stage = cfg.stages()[0]
    source = "+".join(f"{name}:{frac:g}" if len(stage.mix) > 1 else name for name, frac in stage.mix)
    return PreflightResult(rows, source, cfg.k, n, task.label)


def _level_row(level: int, neg, kap: torch.Tensor) -> dict:
    valid = neg.valid
    cand, dups = neg.counts[:, 0].sum().item(), neg.counts[:, 1].sum().item()
    kv = kap[valid]
    floored = neg.floored
    return {"level": level,
            "false_negative_fraction": float((kv < 1).float().mean()) if kv.numel() else math.nan,
            "near_duplicate_fraction": dups / cand if cand else math.nan,
            "kappa": float(kv.mean()) if kv.numel() else math.nan,
            "floored_fraction": float(floored.float().mean()) if floored is not None else 0.0,
            "dropped_fraction": float(neg.floor_dropped.float().mean()) if floored is not None else 0.0}
