"""The training loop, top to bottom: resolve the configuration, build the run's state, then per step
batch -> train_step -> log -> evaluate / checkpoint -> stop, and a final evaluation and checkpoint.

Randomness is a pure function of (seed, step) (ebmtool.runtime.rng): a resumed run replays exactly what an
uninterrupted run would have done, and evaluation or diagnostics can never shift the training stream.

Under torchrun (WORLD_SIZE > 1) every process runs `train`: the global batch (--batch-size) is split evenly,
gradients are averaged by one all-reduce per step, and process 0 alone logs and writes files (the others wait
where it matters). The result equals a one-process run with the same seed and batch up to float reduction
order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ebmtool import __version__
from ebmtool.runtime import distributed as dist
from ebmtool.io.checkpoints import Checkpoint, load_checkpoint
from ebmtool.io.artifacts import open_h5
from ebmtool.method.compute import RULE, combined_rule, rule_label
from ebmtool.config import CADENCE_FIELDS, NO_STEP_CAP, TrainConfig, beside_defaults, format_settings
from ebmtool.tasks.data import TrainingData
from ebmtool.runtime.devices import check_precision, resolve_device
from ebmtool.method.diffusion import cosine_schedule
from ebmtool.runtime.errors import InputError, Interrupted, RunError
from ebmtool.analysis.evaluate import evaluate_model
from ebmtool.method.models import EnergyMLP, compile_explicit
from ebmtool.offline.inputs import OfflineNegatives
from ebmtool.runtime.progress import progress_bar
from ebmtool.training.diagnostics import nanmean, to_host
from ebmtool.training.losses import Objective
from ebmtool.training.metrics import LIVE_LOG, LiveLog, metric_columns, read_metric_rows, write_metrics
from ebmtool.training.signals import StopFlag
from ebmtool.training.state import (RunLock, RunState, checkpoint_compute, checkpoint_compute_rule,
                                   write_snapshot)
from ebmtool.training.step import draw_batch, train_step
from ebmtool.training.trackers import open_trackers

POSTFIX = ("loss_denoise", "loss_energy", "p_hard", "stage", "dup_fraction", "weight_ess", "grad_share_energy")


@dataclass
class TrainResult:
    out_dir: Path
    step: int  # the run's step at the end
    seconds: float  # wall time of this call (a resumed run's earlier sessions are in metrics' wall_time)
    final_eval: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    start_step: int = 0  # the step this call started at: a resume trains step - start_step steps


def prepare(cfg: TrainConfig, resume: Path | None = None,
            overrides: dict | None = None) -> tuple[TrainConfig, Checkpoint | None]:
    """Resolve the seed and, for a resume, take the configuration from the checkpoint.

    On resume only the cadence fields in `overrides` (steps, log/eval/checkpoint periods, device) may change.
    A budgeted run (budget_flops) lays its curriculum out over the budget, so it has no curriculum_total.
    """
    ckpt = None
    if resume is not None:
        ckpt = load_checkpoint(resume)
        stored = TrainConfig.from_dict(ckpt.config, where=str(resume))
        if stored.checksum() != ckpt.meta.get("ebmtool.config_sha256"):
            raise InputError(f"{resume}: configuration checksum mismatch; the checkpoint was altered")
        bad = sorted(set(overrides or {}) - set(CADENCE_FIELDS))
        if bad:
            raise InputError(f"{bad[0]} cannot change on resume: a resumed run keeps its configuration")
        cfg = dataclasses.replace(stored, **(overrides or {}))
    elif cfg.init and cfg.init_steps is None:
        init = load_checkpoint(Path(cfg.init))  # total training shows in the config: the init's steps and its own
        cfg.init_steps = init.step + (json.loads(init.meta.get("ebmtool.config", "{}")).get("init_steps") or 0)
    if cfg.seed is None:
        cfg.seed = dist.broadcast_json(secrets.randbelow(2**31))  # one seed for every process
    if cfg.curriculum_total is None and cfg.supervise_energy and cfg.budget_flops is None:
        cfg.curriculum_total = cfg.steps  # fixed now, so a resume that extends --steps keeps the stage boundaries
    cfg.validate()
    check_world(cfg)
    return cfg, ckpt


def inherited_compute(cfg: TrainConfig) -> tuple[float, str]:
    """Compute a new run starts with, and the rule label of its count with this run's steps added: its --init
    checkpoint's and the mining of its --offline-negatives file, so a refined run is charged for everything that
    produced it."""
    total, rules = 0.0, [RULE]
    if cfg.init:
        init = load_checkpoint(Path(cfg.init))
        if checkpoint_compute(init) is not None:
            total += checkpoint_compute(init)
            rules.append(checkpoint_compute_rule(init))
    if cfg.offline_negatives:
        with open_h5(Path(cfg.offline_negatives), "negatives") as f:
            if "compute_flops" in f.attrs:
                total += float(f.attrs["compute_flops"])
                rules.append(rule_label(f.attrs.get("compute_rule")))
    return total, combined_rule(*rules)


def check_world(cfg: TrainConfig) -> None:
    """Settings that cannot be split across processes are refused with one sentence (exit 2)."""
    n = dist.world_size()
    if n == 1:
        return
    if cfg.batch_size % n:
        lo, hi = (cfg.batch_size // n) * n, (cfg.batch_size // n + 1) * n
        raise InputError(f"--batch-size {cfg.batch_size} cannot be split across {n} processes: the global batch "
                         f"is divided evenly among them, so give a multiple of {n} (e.g. "
                         f"{hi if lo == 0 else f'{lo} or {hi}'})").on_every_process()
    if cfg.clamp_mode == "first-example":
        raise InputError("--clamp-mode first-example bounds the whole batch by its first example's level, which "
                         "only one process sees; train it with one process").on_every_process()


def start_run(cfg: TrainConfig, out_dir: Path, resume: Path | None, overrides: dict | None, force: bool,
              log) -> RunState:
    """The run's state, ready for its first step: configuration resolved, weights initialised or loaded (resume,
    or --init), metric rows and compute carried over, offline negatives loaded."""
    cfg, resume_ckpt = prepare(cfg, resume, overrides)
    device = resolve_device(cfg.device)
    check_precision(cfg.precision, device)
    data = TrainingData(cfg)
    st = RunState(cfg, data, device)
    if cfg.compile:
        if not isinstance(st.model, EnergyMLP):
            raise InputError(f"--compile compiles the MLP's explicit input gradient; {data.task.label} trains a "
                             f"{st.model.dims['arch']} network, which has none")
        compile_explicit(st.model)
        compile_explicit(st.ema.model)  # the EMA copy: validation samples through it
    if resume_ckpt is not None:
        if resume_ckpt.meta.get("ebmtool.data_fingerprint") != data.fingerprint:
            raise InputError(f"{resume}: the training data differ from the data this checkpoint was trained on")
        st.load(resume_ckpt, full=True)
        if dist.is_main():
            st.rows, st.eval_rows = read_metric_rows(Path(out_dir) / "metrics.h5", st.step, metric_columns(cfg))
    elif cfg.init:
        init = load_checkpoint(Path(cfg.init))
        if init.dims != st.model.dims:
            raise InputError(f"{cfg.init}: its model ({init.dims}) does not match this run's ({st.model.dims})")
        st.load(init, full=False)
    if resume_ckpt is None:
        st.compute, st.compute_rule = inherited_compute(cfg)
    offline = OfflineNegatives.load(cfg, data, st.model.dims, force=force, log=log) if cfg.offline_negatives \
        else None
    energy_weight = data.task.energy_weight if cfg.energy_weight is None else cfg.energy_weight
    st.objective = Objective(cfg, cosine_schedule().to(device), data.task, energy_weight, offline)
    return st


def announce(st: RunState, out_dir: Path, log) -> None:
    """The run's first lines: what trains, on what, until when, and the resolved configuration."""
    cfg, world = st.cfg, dist.world_size()
    until = f"steps {st.step} -> {cfg.steps}" if cfg.budget_flops is None else \
        f"step {st.step}, compute {st.compute:.3e} -> budget {cfg.budget_flops:.3e} FLOPs" + \
        (f" (at most {cfg.steps} steps)" if cfg.steps < NO_STEP_CAP else "")
    log(f"ebmtool {__version__} train: {st.data.task.label}, seed {cfg.seed}, device {st.device}, "
        f"{until}, output {out_dir}"
        + (f", {world} processes x {cfg.batch_size // world} examples (global batch {cfg.batch_size})"
           if world > 1 else ""))
    changed, _ = beside_defaults(cfg.to_dict())
    log(f"config beside the defaults: {format_settings(changed, cfg.to_dict())} "
        f"(ebmtool info {out_dir / 'ckpt.safetensors'} shows the rest)")
    if st.objective.offline is not None:
        st.objective.offline.announce(cfg, log)
    if cfg.supervise_energy:
        total = cfg.curriculum_total or cfg.steps
        log("negatives " + "; ".join(
            (f"from step {round(s.start * total)}: " if cfg.budget_flops is None else
             f"from {s.start:.0%} of the budget: ") + " + ".join(f"{n} {f:g}" for n, f in s.mix)
            for s in cfg.stages()) + f"; K = {cfg.k}" + (f"; SANS {cfg.sans_loss}, alpha {cfg.alpha:g} "
                                                         f"({cfg.alpha_schedule})" if cfg.sans else ""))


class RowLogger:
    """A row of metrics.h5 is the mean of its window of steps. Each row goes to the run's rows (metrics.h5 at
    checkpoints), the live log metrics.jsonl and the run's trackers (--tracker csv|tensorboard|mlflow; process 0
    only), which are closed with the run's status."""

    def __init__(self, st: RunState, out_dir: Path, bar, trackers=()):
        self.st, self.bar, self.window = st, bar, []
        self.started = time.perf_counter() - (st.rows[-1]["wall_time"] if st.rows else 0.0)
        self.live, self.sinks = None, []
        if dist.is_main():
            cfg = st.cfg
            header = {"task": st.data.task.label, "seed": cfg.seed, "steps": cfg.steps, "start_step": st.step,
                      "budget_flops": cfg.budget_flops, "pid": os.getpid()}
            self.live = LiveLog(out_dir / LIVE_LOG, st.rows, st.eval_rows, header)
            self.sinks = [self.live, *open_trackers(trackers, out_dir, cfg.to_dict(), st.rows, st.eval_rows)]

    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def add_step(self, row: dict) -> None:
        self.window.append(row)

    def flush_if_due(self, finished: bool) -> None:
        st, w = self.st, self.window
        if not w or not (st.step % st.cfg.log_every == 0 or finished):
            return
        w = to_host(w)  # the window's device values, read in one transfer
        row = {k: nanmean([r.get(k, float("nan")) for r in w]) for k in {k for r in w for k in r}}
        row.update(step=st.step, lr=st.cfg.lr, energy_weight=st.objective.energy_weight, skipped_steps=st.skipped,
                   wall_time=self.seconds(), compute_flops=st.compute)
        if "stage" in w[-1]:
            row["stage"] = w[-1]["stage"]  # the stage at the row's last step, not a mean
        st.rows.append(row)
        self.window = []
        for sink in self.sinks:
            sink.append(row)
        self.bar.set_postfix({k: f"{row[k]:.3g}" for k in POSTFIX if k in row and row[k] == row[k]}, refresh=False)

    def add_eval(self, row: dict) -> None:
        self.st.eval_rows = [r for r in self.st.eval_rows if r["step"] != row["step"]] + [row]
        for sink in self.sinks:
            sink.append(row, "eval")

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        status = "FINISHED" if exc_type is None else "KILLED" if issubclass(exc_type, Interrupted) else "FAILED"
        for sink in self.sinks:
            sink.close() if sink is self.live else sink.close(status)


def evaluate_now(st: RunState) -> dict:
    """The validation row at the current step: the task's primary metric (and MSE) of the raw and EMA weights."""
    row = {"step": st.step}
    task = st.data.task
    for name, m in (("model", st.model), ("ema", st.ema.model)):
        errs = evaluate_model(m, task, st.data.val, device=st.device, precision=st.cfg.precision)
        row[f"metric_{name}"] = float(errs[task.metric].mean())
        for column in ("mse", "mse_ref_scaled"):  # where the task reports them (a task need not report both)
            if column in errs:
                row[f"{column}_{name}"] = float(errs[column].mean())
    return row


def save(st: RunState, out_dir: Path, periodic: bool = False) -> None:
    """Process 0 writes metrics.h5, then the checkpoint (if the run dies between the two, the resume drops the
    rows past the checkpoint); every process first checks that the model copies are identical (a collective)."""
    dist.check_replicas(st.model)
    if not dist.is_main():
        return
    write_metrics(out_dir / "metrics.h5", st)
    st.save(out_dir / "ckpt.safetensors")
    if periodic and st.cfg.keep:
        write_snapshot(out_dir / "ckpt.safetensors", st.step, st.cfg.keep)


def on_fault(st: RunState, out_dir: Path, fault: str, bar) -> None:
    """--on-nan stop: raise (the last good checkpoint stays); skip: drop the batch, count it, move on. Every
    process calls it at the same step (the fault is agreed)."""
    if st.cfg.on_nan == "skip":
        st.skipped += 1
        st.step += 1
        bar.update(1)
        return
    bar.close()
    if dist.is_main():
        write_metrics(out_dir / "metrics.h5", st)  # the curve up to the fault; the checkpoint is untouched
    dist.barrier()  # nobody exits while process 0 writes (torchrun stops the others when one exits)
    ckpt = out_dir / "ckpt.safetensors"
    kept = f"the last good checkpoint {ckpt} is kept" if ckpt.exists() else "no checkpoint had been written yet"
    raise RunError(f"non-finite {fault} at step {st.step}; training stopped and {kept} "
                   "(--on-nan skip drops such batches instead)").on_every_process()


def interrupt(st: RunState, out_dir: Path, signum: int, bar):
    """Save a resumable checkpoint and raise Interrupted (exit 128 + the signal number)."""
    bar.close()
    save(st, out_dir)
    dist.barrier()  # nobody exits while process 0 writes
    ckpt = out_dir / "ckpt.safetensors"
    saved = f"{signal.Signals(signum).name}: saved a resumable checkpoint at step {st.step} in {ckpt}"
    raise Interrupted(f"{saved}; continue with: ebmtool train --resume {ckpt}", 128 + int(signum),
                      saved=saved).on_every_process()


def finished(st: RunState) -> bool:
    """The run's end: its steps, or its compute budget."""
    return st.step >= st.cfg.steps or (st.cfg.budget_flops is not None and st.compute >= st.cfg.budget_flops)


def train(cfg: TrainConfig, out_dir: Path, resume: Path | None = None, overrides: dict | None = None,
          log=print, force: bool = False, trackers=()) -> TrainResult:
    """Train (or resume) and write out_dir/ckpt.safetensors, metrics.h5 and the live log metrics.jsonl, and send
    the logged rows to `trackers` (names from ebmtool.training.trackers.TRACKERS: csv, tensorboard, mlflow).

    For a resume, `cfg` is ignored: the checkpoint's configuration is used, with `overrides` (cadence only)."""
    dist.init_from_env()
    main = dist.is_main()
    log = log if main else quiet
    out_dir = Path(out_dir)
    st = start_run(cfg, out_dir, resume, overrides, force, log)
    cfg, data, start_step, t0 = st.cfg, st.data, st.step, time.perf_counter()
    announce(st, out_dir, log)
    bar = progress_bar(cfg.steps if cfg.budget_flops is None else None, initial=st.step, desc="train", unit="step")
    with RunLock(out_dir) if main else contextlib.nullcontext(), StopFlag() as stop, \
            RowLogger(st, out_dir, bar, trackers) as rows:
        while not finished(st):
            result = train_step(st, draw_batch(st, st.step), stop.signum)
            if result.fault is not None:
                on_fault(st, out_dir, result.fault, bar)
            else:
                bar.update(1)
                rows.add_step(result.row)
            rows.flush_if_due(finished(st))
            if main and cfg.eval_every and st.step % cfg.eval_every == 0 and not finished(st) \
                    and data.val is not None:  # process 0 only; the others wait at the next collective
                rows.add_eval(evaluate_now(st))
                bar.write(f"step {st.step}: val {data.task.metric} {st.eval_rows[-1]['metric_model']:.4g} "
                          f"(ema {st.eval_rows[-1]['metric_ema']:.4g})", file=sys.stderr)
            if cfg.ckpt_every and st.step % cfg.ckpt_every == 0:
                save(st, out_dir, periodic=True)
            signum = stop.signum if dist.world_size() == 1 else result.agreed.signal()
            if signum is not None:
                interrupt(st, out_dir, signum, bar)
        bar.close()
        final = {}
        if main and data.val is not None:
            rows.add_eval(evaluate_now(st))
            final = {**st.eval_rows[-1], "metric_name": data.task.metric}
        save(st, out_dir)
        dist.barrier()  # the files exist before any process returns
    return TrainResult(out_dir, st.step, time.perf_counter() - t0, final, cfg.to_dict(), start_step)


def quiet(msg: str) -> None:
    """The log of processes other than 0 (process 0 speaks for the run)."""
