"""Training throughput under torchrun: 1 process against N processes at the same per-process batch.

Setting: the real CLI, `python -m torch.distributed.run --nproc-per-node N -m ebmtool train`, inverse 20x20, the
paper's MLP (width 512), default ired negatives, per-process batch b (global batch N*b: that is how ebmtool
splits work, so `--batch-size N*b` keeps each process's share fixed), one intra-op thread per process
(OMP_NUM_THREADS=1), no validation, no periodic checkpoints. Each step is one metrics row (--log-every 1);
`step_seconds` is process 0's wall time of the step, which includes waiting for the others at the all-reduces,
so it is the step time of the job. The first WARMUP steps are dropped; throughput = N*b / median step time.

Process counts: EBMTOOL_BENCH_NPROCS (comma-separated, default 1,2). The machine's core count and load average
are recorded: on a machine with fewer free cores than processes the figure measures oversubscription.

Also measured: the work every process repeats for the whole global batch (the batch's rows, levels and noises
are drawn for all N*b rows, then sliced), against the step time, to check that this replication is negligible.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
WARMUP = 5


def _nprocs() -> list[int]:
    spec = os.environ.get("EBMTOOL_BENCH_NPROCS", "1,2")
    return [int(v) for v in spec.split(",") if v.strip()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(nproc: int, per_process: int, size: int, width: int, steps: int, out: Path) -> dict:
    global_batch = nproc * per_process
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-port",
           str(_free_port()), "-m", "ebmtool", "train", "--task", "inverse", "--size", str(size), "--width",
           str(width), "--batch-size", str(global_batch), "--train-size", str(2 * global_batch), "--steps",
           str(steps), "--seed", "0", "--log-every", "1", "--eval-every", "0", "--ckpt-every", "0", "--val-size",
           "0", "--device", "cpu", "-o", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"torchrun with {nproc} processes failed:\n{done.stderr[-3000:]}")
    with h5py.File(out / "metrics.h5", "r") as f:
        sec = f["step_seconds"][()][WARMUP:]
        world = int(f.attrs["world_size"])
    assert world == nproc, (world, nproc)
    med = float(np.median(sec))
    return {"nproc": nproc, "per_process_batch": per_process, "global_batch": global_batch,
            "timed_steps": int(sec.size), "step_s_median": med, "step_s_p10": float(np.percentile(sec, 10)),
            "step_s_p90": float(np.percentile(sec, 90)), "examples_per_s": global_batch / med,
            "launch_wall_s": wall}


def replicated_work(global_batch: int, size: int, repeats: int = 20) -> float:
    """Seconds per step of what every process does for the whole global batch before slicing: the batch's rows,
    levels t, and the two noises eps, eps' (the default source draws nothing more)."""
    from ebmtool.config import TrainConfig
    from ebmtool.tasks.data import TrainingData
    from ebmtool.runtime.rng import step_generator

    torch.set_num_threads(1)
    cfg = TrainConfig(task="inverse", size=size, batch_size=global_batch, train_size=2 * global_batch, seed=0,
                      val_size=0).validate()
    data = TrainingData(cfg)
    times = []
    for step in range(repeats):
        t0 = time.perf_counter()
        gen = step_generator(0, step)
        x, y, _ = data.batch_with_mask(step, "cpu")
        torch.randint(0, 10, (global_batch,), generator=gen)
        torch.randn(y.shape, generator=gen)
        torch.randn(y.shape, generator=gen)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def run(quick: bool = False) -> dict:
    size, width, per_process, timed = (8, 128, 64, 10) if quick else (20, 512, 256, 30)
    steps = WARMUP + timed
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in _nprocs():
            rows.append(_run(n, per_process, size, width, steps, Path(tmp) / f"n{n}"))
    base = next((r for r in rows if r["nproc"] == 1), None)
    for r in rows:
        r["speedup_vs_1"] = r["examples_per_s"] / base["examples_per_s"] if base else None
        r["efficiency"] = r["speedup_vs_1"] / r["nproc"] if base else None
        r["replicated_s"] = replicated_work(r["global_batch"], size)
        r["replicated_share"] = r["replicated_s"] / r["step_s_median"]
    return {"topic": "distributed", "quick": quick, "size": size, "width": width, "per_process_batch": per_process,
            "warmup_steps": WARMUP, "timed_steps": timed, "nprocs": _nprocs(), "rows": rows,
            "load_before": load_before, "load_after": os.getloadavg(), "cores": os.cpu_count(), "threads_per_process": 1}


def markdown(result: dict) -> str:
    lines = [f"# Distributed training throughput (torchrun, gloo, CPU){' — quick' if result['quick'] else ''}", "",
             f"inverse {result['size']}x{result['size']}, MLP width {result['width']}, per-process batch "
             f"{result['per_process_batch']} (global = N x that), 1 thread per process, "
             f"{result['timed_steps']} timed steps after {result['warmup_steps']} warm-up steps, median of process "
             f"0's step time (all-reduce waits included). Machine: {result['cores']} cores; load average (1/5/15 "
             f"min) {_load(result['load_before'])} before, {_load(result['load_after'])} after.", "",
             "| processes | global batch | step time (median, p10-p90) | examples/s | speed-up vs 1 | efficiency | "
             "replicated whole-batch draws per step |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        sp = f"{r['speedup_vs_1']:.2f}x" if r["speedup_vs_1"] is not None else "-"
        ef = f"{r['efficiency']:.0%}" if r["efficiency"] is not None else "-"
        lines.append(f"| {r['nproc']} | {r['global_batch']} | {r['step_s_median'] * 1e3:.1f} ms "
                     f"({r['step_s_p10'] * 1e3:.1f}-{r['step_s_p90'] * 1e3:.1f}) | {r['examples_per_s']:.0f} | {sp} | "
                     f"{ef} | {r['replicated_s'] * 1e3:.2f} ms ({r['replicated_share']:.1%} of the step) |")
    lines += ["", "Speed-up = examples/s against 1 process at the same per-process batch (ideal: N). "
              "Process counts: EBMTOOL_BENCH_NPROCS (default 1,2). Where the machine has fewer idle cores than "
              "processes, processes share cores and the figure measures that, not the method."]
    return "\n".join(lines)


def _load(v) -> str:
    return "/".join(f"{x:.2f}" for x in v)
