"""A training batch's negatives, assembled from the curriculum stage's sources, the offline file's rows and,
under several processes, this process's shard of the batch: one helper, so the loss never sees where a
negative came from.

Every example is assigned one source (a loop over sources, never over examples). Source assignment, offline
rows and every random draw are made for the global batch, exactly as one process makes them, and sliced.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from ebmtool.negatives import curriculum as curriculum_mod
from ebmtool.runtime import distributed as dist
from ebmtool.negatives import (
    NegativeBatch,
    draw_noise,
    floor_kappa,
    generate,
    noise_to_signal,
    registry,
    repeat_rows,
)


@dataclass(frozen=True)
class Shard:
    """This process's rows [start, stop) of a global batch of `total` rows (distributed training).

    Every random draw of a step is made for the whole batch, exactly as one process makes it, and each process
    keeps its rows; `y` and `mask` are the global batch's, for the draws that depend on every row's data (the
    discrete tasks' reference negatives, which re-draw duplicates: cheap, no network call)."""

    start: int
    stop: int
    total: int
    y: torch.Tensor | None = None
    mask: torch.Tensor | None = None

    def rows(self, v: torch.Tensor) -> torch.Tensor:
        return v[self.start:self.stop]


@dataclass
class Negatives:
    """One step's negatives (B, K, D) with what the diagnostics need to describe them."""

    y_neg: torch.Tensor
    valid: torch.Tensor  # (B, K): not a near-duplicate of its positive
    level: torch.Tensor | None  # (B, K): a source's per-negative value (hnm's start level; NaN elsewhere); None
    # when no source of the stage reports one (NegativeSource.per_negative)
    counts: torch.Tensor  # (sources, 4) on the device: candidates, duplicates, accepted and attempted steps
    stages: list
    stage: curriculum_mod.Stage
    names: list[str]  # the stage's sources
    total: int  # rows of the global batch
    source_rows: dict = field(default_factory=dict)  # source -> its global rows (None: the whole batch)
    seconds: dict = field(default_factory=dict)  # source -> seconds spent generating
    offline_pos: torch.Tensor | None = None  # rows of this process's slice that took the file's negatives
    offline_file: torch.Tensor | None = None  # their rows in the file
    floored: torch.Tensor | None = None  # (B, K): moved out to the kappa floor (None without a floor)
    floor_dropped: torch.Tensor | None = None  # (B, K): moved, but the clean box kept them below it: dropped
    diag: dict = field(default_factory=dict)  # stage, k, offline_fraction


def counts_row(*values, device) -> torch.Tensor:
    """A row of Negatives.counts from ints the host knows and counts still on the device, without reading
    the latter back (the logger reads them once per row)."""
    return torch.stack([torch.as_tensor(v, device=device).to(torch.float64) for v in values])


def discrete_reference(task, y, mask, k, gen, connectivity_form: str | None = None) -> NegativeBatch:
    """The discrete tasks' reference negative (re-drawn cells, flipped entries, a re-drawn first step), which the
    `ired` source means for them; K independent draws per positive. Negatives identical to the positive are
    re-drawn by the task and counted as near-duplicates, so every negative is valid."""
    b, d = y.shape
    y_neg, redrawn = task.reference_negative(repeat_rows(y, k), None if mask is None else repeat_rows(mask, k),
                                             gen, connectivity_form or "reference")
    return NegativeBatch(y_neg.view(b, k, d), torch.ones(b, k, dtype=torch.bool, device=y.device), b * k,
                         int(redrawn))


def _per_negative(names) -> bool:
    """Whether a source of the stage reports a per-negative value (hnm's selected start level)."""
    return any(registry.get(n).per_negative for n in names)


def assemble(model, batch, obj, eps) -> Negatives:
    """The negatives of `batch` (a training.step.Batch) under `obj` (a training.losses.Objective), with the
    positive's shared noise eps."""
    cfg, shard = obj.cfg, batch.shard
    b, d, k = batch.y.shape[0], batch.y.shape[1], cfg.k
    start, total = (0, b) if shard is None else (shard.start, shard.total)
    dev = batch.x.device
    stages = cfg.stages()
    si = curriculum_mod.stage_at(stages, batch.step, cfg.curriculum_total or cfg.steps) if batch.progress is None \
        else curriculum_mod.stage_at_fraction(stages, batch.progress)
    stage = stages[si]
    names = [n for n, _ in stage.mix]
    neg = Negatives(torch.empty(b, k, d, device=dev), torch.empty(b, k, dtype=torch.bool, device=dev),
                    torch.full((b, k), math.nan, device=dev) if _per_negative(names) else None,
                    torch.zeros(len(names), 4, dtype=torch.float64, device=dev), stages, stage, names, total,
                    diag={"stage": float(si), "k": float(k)})
    assign = curriculum_mod.assign(stage, total, batch.neg_gen)  # global, on the CPU
    online = torch.ones(total, dtype=torch.bool)
    if obj.offline is not None:
        pos_g, file_g = obj.offline.rows_for(batch.offline_rows, cfg.offline_fraction)
        online[pos_g] = False
        here = (pos_g >= start) & (pos_g < start + b)
        neg.offline_pos, neg.offline_file = (pos_g[here] - start).to(dev), file_g[here].to(dev)
        neg.y_neg[neg.offline_pos] = obj.offline.y_neg[neg.offline_file].to(dev)
        neg.valid[neg.offline_pos] = obj.offline.valid[neg.offline_file].to(dev)
        neg.diag["offline_fraction"] = pos_g.numel() / total
    for j, name in enumerate(names):
        rows_g = None if len(names) == 1 and obj.offline is None else torch.nonzero((assign == j) & online).squeeze(1)
        if rows_g is not None and rows_g.numel() == 0:
            continue
        neg.source_rows[name] = rows_g
        t0 = time.perf_counter()
        _from_source(model, batch, obj, eps, neg, j, name, rows_g, start)
        neg.seconds[name] = time.perf_counter() - t0
    if obj.settings.kappa_floor > 0:
        apply_floor(neg, batch, obj, eps)
    return neg


def apply_floor(neg: Negatives, batch, obj, eps) -> None:
    """Every negative of the batch, whatever its source (offline rows included), kept at kappa >= the floor;
    negatives the clean box pulls back below it are dropped (invalid). No network call, no random draw."""
    s = obj.settings
    c = noise_to_signal(obj.sched, batch.t)
    neg.y_neg, neg.floored, neg.floor_dropped = floor_kappa(neg.y_neg, batch.y, eps, c, s.kappa_floor, s.clean_clamp,
                                                            batch.mask)
    neg.valid = neg.valid & ~neg.floor_dropped


def _from_source(model, batch, obj, eps, neg: Negatives, j: int, name: str, rows_g, start: int) -> None:
    """Fill `neg` with source `name`'s negatives for its global rows `rows_g` (None: every row)."""
    cfg, shard, task = obj.cfg, batch.shard, obj.task
    b, d, k, dev = batch.y.shape[0], batch.y.shape[1], cfg.k, batch.x.device
    # pos: this process's rows among the source's (global) rows; loc: the same rows in this process's slice
    if rows_g is None:
        pos, loc = (None, None) if shard is None else (torch.arange(start, start + b), None)
    else:
        here = (rows_g >= start) & (rows_g < start + b)
        pos, loc = torch.nonzero(here).squeeze(1), (rows_g[here] - start).to(dev)
    source = registry.get(name)
    if source.reference and task is not None and task.reference_negative_source:
        # no network call: drawn for all of the source's rows (duplicates are re-drawn, a data-dependent number
        # of draws), then sliced; the counts are global, so only the main process adds them
        yy, mm = (batch.y, batch.mask) if shard is None else (shard.y, shard.mask)
        if rows_g is not None:
            rg = rows_g.to(dev)
            yy, mm = yy[rg], None if mm is None else mm[rg]
        nb = discrete_reference(task, yy, mm, k, batch.neg_gen, cfg.connectivity_negative)
        if dist.is_main():
            neg.counts[j, :2] += counts_row(nb.candidates, nb.duplicates, device=dev)
        if pos is not None:
            p = pos.to(dev)
            nb = NegativeBatch(nb.y_neg[p], nb.valid[p], 0, 0, nb.info)
    else:
        noise = draw_noise(name, neg.total if rows_g is None else rows_g.numel(), k, d, obj.settings, batch.neg_gen)
        if pos is not None:
            noise = {key: v[pos] for key, v in noise.items()}
        if loc is not None and loc.numel() == 0:
            return  # none of the source's rows is this process's (the draws were still made)
        x, y, t, m = batch.x, batch.y, batch.t, batch.mask
        sx, sy, st_, se, sm = (x, y, t, eps, m) if loc is None else \
            (x[loc], y[loc], t[loc], eps[loc], None if m is None else m[loc])
        nb = generate(name, model, sx, sy, st_, se, obj.sched, k, obj.settings, batch.neg_gen, mask=sm, noise=noise)
        neg.counts[j] += counts_row(nb.candidates, nb.duplicates, nb.info.get("accepted", 0),
                                    nb.info.get("attempted", 0), device=dev)
    if loc is None:
        neg.y_neg, neg.valid = nb.y_neg, nb.valid
    else:
        neg.y_neg[loc], neg.valid[loc] = nb.y_neg, nb.valid
    if neg.level is not None and source.per_negative in nb.info:
        if loc is None:
            neg.level = nb.info[source.per_negative].float()
        else:
            neg.level[loc] = nb.info[source.per_negative].float()
