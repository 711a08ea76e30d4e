"""Offline negatives: mine (HNM, or any registered source: `negatives`) into a file, score a file under any
checkpoint, turn scores into SANS weights.

Files (HDF5, one JSON provenance attribute each; see README "Offline negatives"):
- negatives: rows into the checkpoint's training set, with positives, inputs, K clean-space negatives, the level t
  and noise eps each row was mined at, energies, clean-space distances and a validity mask.
- scores:    energies of positives and negatives under a checkpoint (at the mined level, optionally every level).
- weights:   SANS weights per row over K from a scores file, with entropy and effective sample size.

Determinism: row i's level t_i and noise eps_i are a pure function of (seed, i) (`row_noise`), and the candidates
of the batch starting at row r come from `batch_generator(seed, r)`; with the same options (batch size included)
a resumed mine therefore writes exactly what an uninterrupted one writes. eps is also stored, so `score` re-noises
every negative exactly as the miner did, and scoring with the mining checkpoint reproduces the mined energies.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ebmtool.io.negatives_file import PartialNegatives, read_negatives
from ebmtool.io.checkpoints import load_checkpoint
from ebmtool.io.artifacts import open_h5, provenance, read_dataset, sha256_file, write_h5
from ebmtool.method.diffusion import condition, cosine_schedule, energy, impose_mask, noised, raw, repeat_condition
from ebmtool.runtime import distributed as dist
from ebmtool.runtime import rng
from ebmtool.runtime.progress import progress_bar
from ebmtool.analysis.evaluate import DEFAULT_WEIGHTS, checkpoint_task, load_model
from ebmtool.config import TrainConfig
from ebmtool.tasks.data import TrainingData
from ebmtool.runtime.errors import InputError
from ebmtool.offline.inputs import family
from ebmtool.method.compute import RULE, ComputeMeter
from ebmtool.negatives import (
    DUP_THRESHOLD,
    NegativeSettings,
    floor_kappa,
    generate,
    noise_to_signal,
    registry,
    renoise,
    rms,
)
from ebmtool.negatives import hnm
from ebmtool.negatives import sans as sans_mod

SELECT = hnm.SELECT
DEFAULT_SOURCE = hnm.SOURCE.name  # what mine-negatives mines unless --negatives-from names another source
SCORE_LEVELS = ("mined", "all")  # score at each negative's mined level (the default), or at every level


@dataclass(frozen=True)
class MineOptions:
    k: int = 4
    candidates: int = 10
    refine_steps: int = 5
    lam: float = 1.0
    absolute_margin: float | None = None  # keep only E- >= E+ + m
    relative_margin: float | None = None  # keep only E- >= E+ + |E+| m
    max_energy: float | None = None  # keep only E- <= max
    select: str = "top"
    seed: int = 0
    batch_size: int = 256
    limit: int | None = None
    dup_threshold: float = DUP_THRESHOLD
    weights: str = DEFAULT_WEIGHTS
    kappa_floor: float = 0.0  # negatives kept at kappa >= this (ebmtool.negatives.floor_kappa); 0 = off
    negatives: str = DEFAULT_SOURCE  # the registered source that mines
    settings: tuple = ()  # (setting, value) pairs of that source's settings (its declared defaults otherwise)

    def record(self) -> dict:
        """The options as a negatives file's provenance records them: the source and its settings only when
        they are not the default's (so a default mine records exactly what it always did)."""
        out = asdict(self)
        if self.negatives == DEFAULT_SOURCE and not self.settings:
            del out["negatives"], out["settings"]
        else:
            out["settings"] = dict(self.settings)
        return out

    def negative_settings(self, clean_box: float | None = None) -> NegativeSettings:
        """The mining source's settings: its mine-negatives options (hnm's --candidates, ...), then `settings`."""
        source = registry.get(self.negatives)
        values = {name: getattr(self, option) for option, name in source.mining_options}
        return NegativeSettings(**values, **dict(self.settings), dup_threshold=self.dup_threshold,
                                **({"clean_clamp": clean_box} if clean_box is not None else {}))

    def validate(self):
        for name in ("k", "candidates", "batch_size"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1")
        if self.refine_steps < 0:
            raise InputError("--refine-steps must be non-negative")
        if self.select not in SELECT:
            raise InputError(f"--select must be one of {', '.join(SELECT)}")
        if self.limit is not None and self.limit < 1:
            raise InputError("--limit must be at least 1")
        source = registry.get(self.negatives)
        for name, value in self.settings:
            st = registry.setting(name)
            if st is None or st not in source.settings:
                raise InputError(f"--{name.replace('_', '-')} is not a setting of the negative source "
                                 f"{self.negatives!r}")
            st.check(value)
        if not (self.kappa_floor == 0 or (self.kappa_floor >= 1 and math.isfinite(self.kappa_floor))):
            raise InputError(f"--kappa-floor must be 0 (off) or at least 1, got {self.kappa_floor}")
        return self


def checkpoint_family(ckpt) -> str:
    return family(checkpoint_task(ckpt).label, ckpt.dims, ckpt.meta.get("ebmtool.data_fingerprint", ""))


def training_problems(ckpt, data: Path | None = None):
    """(task, problems, fingerprint) a checkpoint was trained on (rebuilt from its config), or a --data file."""
    cfg = TrainConfig.from_dict(ckpt.config)
    td = TrainingData(cfg)
    if data is not None:
        problems = read_dataset(data)
        if problems.x.shape[1] != td.task.x_dim or problems.y.shape[1] != td.task.y_dim:
            raise InputError(f"{data}: problems of shape {problems.x.shape[1]} -> {problems.y.shape[1]} do not fit "
                             f"the checkpoint's model ({td.task.x_dim} -> {td.task.y_dim})")
        return td.task, problems, problems.fingerprint
    if td.train is None:
        raise InputError(f"{ckpt.path} was trained on fresh problems every step (--train-size 0): there is no "
                         "training set to mine; give one with --data")
    return td.task, td.train, td.fingerprint


def row_noise(seed: int, rows: np.ndarray, dim: int, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Level t (B,) and noise eps (B, D) of each row: a pure function of (seed, row index)."""
    ts, eps = [], []
    for i in rows.tolist():
        stream = rng.numpy_stream(seed, *rng.MINING_ROWS, i)
        ts.append(int(stream.integers(0, levels)))
        eps.append(stream.standard_normal(dim, dtype=np.float32))
    return torch.tensor(ts, dtype=torch.long), torch.from_numpy(np.stack(eps))


def batch_generator(seed: int, start: int) -> torch.Generator:
    """The candidate draws of the mining batch whose first row is `start`."""
    return rng.step_generator(seed, start, rng.MINING)


@torch.no_grad()
def score_rows(model, sched, x, y, t, eps, y_neg, mask=None):
    """E+ (B,) at the re-noised positive and E- (B, K) at each negative re-noised with the positive's eps;
    given entries (mask = 1) are re-imposed in both, as training does, so only the free entries differ. x may be
    a Condition (`score` prepares a batch's once for all its levels)."""
    b, k, d = y_neg.shape
    cond = condition(model, x)  # x's projection once, its rows repeated for the negatives
    x = raw(cond)
    e_pos = energy(model, cond, impose_mask(sched, noised(sched, y, t, eps), t, x, mask), t)
    xs, ts = x.repeat_interleave(k, 0), t.repeat_interleave(k, 0)
    x_neg = renoise(sched, y_neg, t, eps).reshape(b * k, d)
    if mask is not None:
        x_neg = impose_mask(sched, x_neg, ts, xs, mask.repeat_interleave(k, 0))
    e_neg = energy(model, repeat_condition(cond, k), x_neg, ts).view(b, k)
    return e_pos, e_neg


COUNTS = ("candidates", "duplicates", "dup_negatives", "filtered_absolute_margin", "filtered_relative_margin",
          "filtered_max_energy", "rows_not_enough", "flops", "accepted_steps", "attempted_steps", "floored",
          "floor_dropped")


def mine_batch(model, sched, x, y, rows, opts: MineOptions, device, *, mask=None, clean_box: float | None = None):
    """Mine one batch of rows: the source's negatives (HNM by default), energies, distances, window filters.
    Returns arrays and counts.

    Discrete tasks: negatives stay in the box +-1 (as in training) and given entries (mask = 1) are kept."""
    t, eps = row_noise(opts.seed, rows, y.shape[1], sched.levels)
    t, eps = t.to(device), eps.to(device)
    settings = opts.negative_settings(clean_box)
    source = registry.get(opts.negatives)
    meter = ComputeMeter(model, x.shape[1], y.shape[1])
    meter.start()
    nb = generate(source.name, model, x, y, t, eps, sched, opts.k, settings, batch_generator(opts.seed, int(rows[0])),
                  mask=mask)
    floored = short = torch.zeros_like(nb.valid)
    if opts.kappa_floor:  # positive-aware: no negative more probable than its positive at (t, eps); no network call
        y_neg, floored, short = floor_kappa(nb.y_neg, y, eps, noise_to_signal(sched, t), opts.kappa_floor,
                                            settings.clean_clamp, mask)
        nb = replace(nb, y_neg=y_neg, valid=nb.valid & ~short)
    e_pos, e_neg = score_rows(model, sched, x, y, t, eps, nb.y_neg, mask)
    flops = meter.flops()
    dist = rms(nb.y_neg - y[:, None, :])
    valid = nb.valid.clone()
    counts = {"candidates": nb.candidates, "duplicates": nb.duplicates, "dup_negatives": int((~nb.valid).sum())}
    ep = e_pos[:, None]
    for name, bad in (("filtered_absolute_margin", None if opts.absolute_margin is None else
                       e_neg < ep + opts.absolute_margin),
                      ("filtered_relative_margin", None if opts.relative_margin is None else
                       e_neg < ep + ep.abs() * opts.relative_margin),
                      ("filtered_max_energy", None if opts.max_energy is None else e_neg > opts.max_energy)):
        counts[name] = 0 if bad is None else int((bad & valid).sum())
        if bad is not None:
            valid &= ~bad
    counts["rows_not_enough"] = int((valid.sum(dim=1) < opts.k).sum())
    counts["flops"] = int(round(flops))  # the network work of this batch (ebmtool.method.compute), summed into the file
    counts["accepted_steps"] = int(nb.info.get("accepted", 0))
    counts["attempted_steps"] = int(nb.info.get("attempted", 0))
    # the start level of each negative (hnm's); -1 for a source that reports none
    start = nb.info.get(source.per_negative) if source.per_negative else None
    start = torch.full(nb.valid.shape, -1) if start is None else start
    counts["floored"], counts["floor_dropped"] = int(floored.sum()), int(short.sum())
    out = {"index": rows.astype(np.int64), "level": t.cpu().numpy().astype(np.int64),
           "eps": eps.cpu().numpy(), "positives": y.cpu().numpy(), "inputs": x.cpu().numpy(),
           "negatives": nb.y_neg.cpu().numpy(), "start_level": start.cpu().numpy().astype(np.int64),
           "energy_pos": e_pos.cpu().numpy(), "energy": e_neg.cpu().numpy(), "distance": dist.cpu().numpy(),
           "valid": valid.cpu().numpy()}
    if mask is not None:
        out["mask"] = mask.cpu().numpy()
    return out, counts


@dataclass
class MineResult:
    path: Path  # the final file when complete, the .partial file otherwise
    complete: bool
    rows: int
    counts: dict
    resumed_from: int = 0


def partial_path(output: Path) -> Path:
    """The directory a mine of `output` builds its file in (ebmtool.io.negatives_file.PartialNegatives)."""
    return PartialNegatives(output).path


def finished_partial(output: Path) -> bool:
    """True when a mine of `output` completed but was killed while removing its partial directory: rerunning
    it only finishes the removal (so `mine-negatives` lets the rerun past its existing-output check)."""
    return PartialNegatives(output).finished()


def mine(checkpoint: Path, output: Path, opts: MineOptions, *, data: Path | None = None, device="cpu",
         overwrite: bool = False, max_batches: int | None = None, log=None) -> MineResult:
    """Mine hard negatives for every training row of `checkpoint` into `output` (resumable through the directory
    OUTPUT.partial; the final name appears only when complete). `max_batches` stops after that many batches
    (leaving the .partial), for tests and budgeted runs.

    Each batch is committed to OUTPUT.partial on its own, crash-safely (ebmtool.io.negatives_file.PartialNegatives): a
    rerun after a kill at any moment continues from the last committed batch and writes exactly the file an
    uninterrupted mine writes.

    Under torchrun the batches are shared out: in each round of N consecutive batches process i mines the i-th
    (its generator is seeded by the batch's first row, as in one process), process 0 gathers them, commits them
    in order and alone writes the file, which is therefore the one-process file."""
    dist.init_from_env()
    main = dist.is_main()
    opts.validate()
    checkpoint, output = Path(checkpoint), Path(output)
    ckpt = load_checkpoint(checkpoint)
    task, problems, fingerprint = training_problems(ckpt, data)
    model = load_model(ckpt, opts.weights, device)
    sched = cosine_schedule().to(device)
    n = len(problems) if opts.limit is None else min(opts.limit, len(problems))
    ident = {"checkpoint_sha256": sha256_file(checkpoint), "data_fingerprint": fingerprint,
             "options": opts.record(), "n": n, "compute_rule": RULE}  # one rule for every batch's count
    store = PartialNegatives(output) if main else None
    try:
        # process 0 opens the partial state; every process gets where to continue (or the reason it cannot)
        state = _partial_state(store, ident, overwrite) if main else None
        state = dist.broadcast_json(state)
        if "error" in state:
            raise InputError(state["error"]).on_every_process()
        if state.get("finished"):  # a completed mine killed while tidying up: finish that, report the file
            if main:
                store.remove()
            dist.barrier()
            return MineResult(output, True, n, state["counts"], n)
        return _mine_rows(store, state, ckpt, checkpoint, output, task, problems, fingerprint, ident, model,
                          sched, n, opts, data, device, max_batches, log)
    finally:
        if store is not None:
            store.close()


def _mine_rows(store, state, ckpt, checkpoint, output, task, problems, fingerprint, ident, model, sched, n, opts,
               data, device, max_batches, log) -> MineResult:
    main, world, rank = dist.is_main(), dist.world_size(), dist.rank()
    done, counts = state["done"], state["counts"]
    part = partial_path(output)
    if log and done and main:
        log(f"resuming {part} at row {done} of {n}")
    resumed_from = done
    k, d, xd = opts.k, problems.y.shape[1], problems.x.shape[1]
    prov = provenance("mine-negatives", opts.record(), inputs={"checkpoint": checkpoint},
                      checkpoint_step=ckpt.step, data_fingerprint=fingerprint,
                      data=str(data) if data is not None else "checkpoint training set", task=task.label,
                      device=device)
    shapes = {"index": ((), np.int64), "level": ((), np.int64), "eps": ((d,), np.float32),
              "positives": ((d,), np.float32), "inputs": ((xd,), np.float32), "negatives": ((k, d), np.float32),
              "start_level": ((k,), np.int64), "energy_pos": ((), np.float32), "energy": ((k,), np.float32),
              "distance": ((k,), np.float32), "valid": ((k,), np.bool_)}
    if problems.mask is not None:
        shapes["mask"] = ((d,), np.float32)  # given entries: kept by every negative, re-imposed when scoring
    starts = list(range(done, n, opts.batch_size))
    if max_batches is not None:
        starts = starts[:max_batches]
    bar = progress_bar(n, initial=done, desc="mine", unit="problem") if main else None
    try:
        for r in range(0, len(starts), world):
            mine_start = starts[r + rank] if r + rank < len(starts) else None
            if mine_start is None:  # the last round has fewer batches than processes
                out = {name: np.zeros((0, *shape), dtype) for name, (shape, dtype) in shapes.items()}
                out["counts"] = np.zeros((0, len(COUNTS)), np.int64)
            else:
                rows = np.arange(mine_start, min(n, mine_start + opts.batch_size))
                x = torch.from_numpy(problems.x[rows]).to(device)
                y = torch.from_numpy(problems.y[rows]).to(device)
                mask = None if problems.mask is None else torch.from_numpy(problems.mask[rows]).float().to(device)
                out, c = mine_batch(model, sched, x, y, rows, opts, device, mask=mask,
                                    clean_box=task.clean_box)
                out["counts"] = np.asarray([[c[key] for key in COUNTS]], np.int64)
            out = dist.gather_arrays(out)  # the round's batches in order (one process: this batch)
            if not main:
                continue
            c = dict(zip(COUNTS, out.pop("counts").sum(axis=0).tolist()))
            out = {name: np.asarray(out[name], dtype) for name, (_, dtype) in shapes.items()}
            store.append(done, out, c)  # committed: a kill from here on keeps these rows
            for key, v in c.items():
                counts[key] += v
            bar.update(len(out["index"]))
            done += len(out["index"])
        if main and done == n:
            attrs = {"task": task.label, "seed": opts.seed, "step": ckpt.step, "k": k, "n": n,
                     "checkpoint_sha256": ident["checkpoint_sha256"], "data_fingerprint": fingerprint,
                     "checkpoint_family": checkpoint_family(ckpt), **{f"count_{c}": counts[c] for c in COUNTS},
                     "compute_flops": float(counts["flops"]),  # charged to runs trained on this file
                     "compute_rule": RULE}
            store.assemble(shapes, attrs, prov, chunk_rows=opts.batch_size)
    finally:
        if bar is not None:
            bar.close()
    complete = dist.broadcast_json(done == n)
    done, counts = dist.broadcast_json([done, counts])  # every process returns the same result
    dist.barrier()  # the file is in place before any process returns
    if not complete:
        return MineResult(part, False, done, counts, resumed_from)
    return MineResult(output, True, n, counts, resumed_from)


def _partial_state(store: PartialNegatives, ident: dict, overwrite: bool) -> dict:
    """{"done", "counts"} of the partial state (nothing done when there is none), {"finished", "counts"} when the
    mine completed but its partial directory is still there, or {"error": sentence}."""
    try:
        if store.open(ident, overwrite=overwrite) == "finished":
            with open_h5(store.output, "negatives") as f:
                counts = {c: int(f.attrs.get(f"count_{c}", 0)) for c in COUNTS}  # older files: no floor counts
            return {"finished": True, "counts": counts}
    except InputError as exc:
        return {"error": str(exc)}
    return {"done": store.rows, "counts": store.counts(COUNTS)}


def _summary(name, a):
    a = np.asarray(a, dtype=np.float64)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return [name, 0, math.nan, math.nan, math.nan, math.nan, math.nan]
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    return [name, int(a.size), float(a.mean()), float(a.std()), float(q1), float(med), float(q3)]


SUMMARY_HEADER = ["", "count", "mean", "std", "q25", "median", "q75"]


def energy_summary(e_pos: np.ndarray, e_neg: np.ndarray, valid: np.ndarray) -> tuple[list[list], dict]:
    """Rows of E+, E- (valid), margin E- - E+; and p_hard = P(E- < E+) over valid pairs."""
    ep = np.broadcast_to(e_pos[:, None], e_neg.shape)
    margin = (e_neg - ep)[valid]
    rows = [_summary("E+", e_pos), _summary("E- (valid)", e_neg[valid]), _summary("E- - E+", margin)]
    p_hard = float((margin < 0).mean()) if margin.size else math.nan
    return rows, {"p_hard": p_hard, "valid_fraction": float(valid.mean()) if valid.size else math.nan}


# ------------------------------------------------------------------------------------------------ score

@torch.no_grad()
def score(checkpoint: Path, negatives: Path, *, levels: str = SCORE_LEVELS[0], weights: str = DEFAULT_WEIGHTS,
          batch_size: int = 1024, device="cpu") -> dict:
    """Energies of every positive and negative of a negatives file under `checkpoint` (same task), at the mined
    level (and at every level with levels='all'). Returns datasets and attributes of a scores file."""
    dist.init_from_env()
    if levels not in SCORE_LEVELS:
        raise InputError(f"--levels must be one of {', '.join(SCORE_LEVELS)}")
    ckpt = load_checkpoint(checkpoint)
    negs = read_negatives(negatives)
    a, attrs = negs["arrays"], negs["attrs"]
    task = checkpoint_task(ckpt)
    if attrs.get("task") != task.label:
        raise InputError(f"{negatives} holds negatives for {attrs.get('task')}, but {checkpoint} was trained on "
                         f"{task.label}")
    model = load_model(ckpt, weights, device)
    sched = cosine_schedule().to(device)
    n, k, _ = a["negatives"].shape
    # under torchrun each process scores a contiguous block of the batches; the rows are gathered in order
    starts = list(range(0, n, batch_size))
    lo, hi = dist.block_range(len(starts))
    r0, r1 = (starts[lo], min(n, starts[hi - 1] + batch_size)) if hi > lo else (0, 0)
    m = r1 - r0
    e_pos, e_neg = np.empty(m, np.float32), np.empty((m, k), np.float32)
    all_pos = np.empty((m, sched.levels), np.float32) if levels == "all" else None
    all_neg = np.empty((m, k, sched.levels), np.float32) if levels == "all" else None
    bar = progress_bar(n, desc="score", unit="problem")
    meter = ComputeMeter(model, a["inputs"].shape[1], a["positives"].shape[1])
    meter.start()
    for s in starts[lo:hi]:
        sl = slice(s, min(n, s + batch_size))
        out = slice(sl.start - r0, sl.stop - r0)
        x, y, yn, eps = (torch.from_numpy(a[name][sl]).to(device) for name in ("inputs", "positives", "negatives",
                                                                               "eps"))
        t = torch.from_numpy(a["level"][sl]).to(device)
        mask = None if a["mask"] is None else torch.from_numpy(a["mask"][sl]).to(device)
        cond = condition(model, x)  # one projection of the batch's x for every level it is scored at
        p, q = score_rows(model, sched, cond, y, t, eps, yn, mask)
        e_pos[out], e_neg[out] = p.cpu().numpy(), q.cpu().numpy()
        if levels == "all":
            for lv in range(sched.levels):
                p, q = score_rows(model, sched, cond, y, torch.full_like(t, lv), eps, yn, mask)
                all_pos[out, lv], all_neg[out, :, lv] = p.cpu().numpy(), q.cpu().numpy()
        bar.update((sl.stop - sl.start) * dist.world_size())
    bar.close()
    flops = float(dist.all_reduce_sum(torch.tensor([meter.flops()], dtype=torch.float64))[0])  # every process's
    mine = {"energy_pos": e_pos, "energy": e_neg}
    if levels == "all":
        mine.update(all_pos=all_pos, all_neg=all_neg)
    mine = dist.gather_arrays(mine)
    e_pos, e_neg, all_pos, all_neg = mine["energy_pos"], mine["energy"], mine.get("all_pos"), mine.get("all_neg")
    datasets = {"index": a["index"], "level": a["level"], "valid": a["valid"], "energy_pos": e_pos, "energy": e_neg}
    if levels == "all":
        datasets.update({"energy_pos_all_levels": all_pos, "energy_all_levels": all_neg})
    out_attrs = {"task": task.label, "step": ckpt.step, "levels": levels, "weights": weights,
                 "checkpoint_sha256": sha256_file(checkpoint), "checkpoint_family": checkpoint_family(ckpt),
                 "negatives_sha256": sha256_file(negatives), "data_fingerprint": attrs.get("data_fingerprint", ""),
                 "mined_checkpoint_sha256": attrs.get("checkpoint_sha256", ""), "compute_flops": flops,
                 "compute_rule": RULE}
    prov = provenance("score", {"levels": levels, "weights": weights, "batch_size": batch_size},
                      inputs={"checkpoint": checkpoint, "negatives": negatives}, checkpoint_step=ckpt.step, device=device)
    return {"datasets": datasets, "attrs": out_attrs, "provenance": prov}


def write_scores(path: Path, result: dict) -> None:
    write_h5(path, "scores", result["datasets"], result["attrs"], result["provenance"])


# ------------------------------------------------------------------------------------------------ weights

def row_weight_stats(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(entropy, ESS) of each row of SANS weights (N, K), by sans.weight_stats itself mapped over the rows, so the
    weights file and the training log compute them one way; NaN for a row without weights."""
    stats = torch.vmap(lambda row: sans_mod.weight_stats(row[None]))(w)
    return stats["weight_entropy"], stats["weight_ess"]


def compute_weights(scores: Path, alpha: float, schedule: str = "constant", floor: float = 0.1) -> dict:
    """SANS weights softmax(-alpha_t E-) per row over the valid negatives, with entropy and ESS per row."""
    if not alpha >= 0:
        raise InputError("--alpha must be non-negative (an inverse temperature)")
    if schedule not in sans_mod.ALPHA_SCHEDULES:
        raise InputError(f"--alpha-schedule must be one of {', '.join(sans_mod.ALPHA_SCHEDULES)}")
    with open_h5(scores, "scores") as f:
        e = torch.from_numpy(f["energy"][()])
        valid = torch.from_numpy(f["valid"][()])
        level = torch.from_numpy(f["level"][()])
        index = f["index"][()]
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    a = sans_mod.alpha_at(level, alpha, schedule, floor, cosine_schedule().levels)
    w = sans_mod.weights(e, a, valid)
    has = w.sum(dim=1) > 0
    ent, ess = row_weight_stats(w)
    ess[~has] = 0.0  # a row without weights: entropy NaN, ESS 0
    datasets = {"index": index, "weights": w.numpy().astype(np.float32), "entropy": ent.numpy().astype(np.float32),
                "ess": ess.numpy().astype(np.float32), "alpha": a.numpy().astype(np.float32)}
    out_attrs = {"task": attrs.get("task", ""), "alpha": float(alpha), "alpha_schedule": schedule,
                 "negatives_sha256": attrs.get("negatives_sha256", ""), "scores_sha256": sha256_file(scores),
                 "checkpoint_family": attrs.get("checkpoint_family", ""),
                 "data_fingerprint": attrs.get("data_fingerprint", ""), "rows_without_weights": int((~has).sum())}
    prov = provenance("weights", {"alpha": alpha, "alpha_schedule": schedule,
                                  "alpha_floor": floor if schedule == "linear" else None},
                      inputs={"scores": scores})
    return {"datasets": datasets, "attrs": out_attrs, "provenance": prov}


def write_weights(path: Path, result: dict) -> None:
    write_h5(path, "weights", result["datasets"], result["attrs"], result["provenance"])
