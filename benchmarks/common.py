"""Helpers shared by the benchmarks: timing, machine description, the matmul limit of this machine, the FLOP
rule of the energy network, training-step setup, peak memory and a linear fit.

FLOP rule: the library's (`ebmtool.method.compute`, which states it and which the training loop uses to count every
run's compute), on the rows the model's counter saw; cross-checked against torch.profiler's matmul count in
tests/test_bench_common.py.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time

import torch

from ebmtool.method.compute import counted_flops as library_counted_flops, flop_rule  # noqa: F401 (re-exported)
from ebmtool.config import TrainConfig
from ebmtool.tasks.data import TrainingData
from ebmtool.method.diffusion import cosine_schedule
from ebmtool.training import draw_batch, train_step
from ebmtool.training.losses import Objective
from ebmtool.training.state import RunState

MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::convolution", "aten::_convolution")


def machine() -> dict:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def sync_for(device):
    """A function that waits for the device (CUDA), or None (CPU: calls are synchronous)."""
    return torch.cuda.synchronize if str(device).startswith("cuda") else None


def timeit(fn, repeats: int = 5, warmup: int = 2, sync=None) -> dict:
    """Median (and min/max) seconds of fn() over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if sync:
            sync()
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "repeats": repeats}


def matmul_flops(m: int, k: int, n: int, repeats: int = 10, device="cpu", dtype=torch.float32) -> float:
    """Achieved dense matmul FLOP/s at shape (m, k) x (k, n) (fp32 unless `dtype`): the machine's limit there."""
    a = torch.randn(m, k, device=device, dtype=dtype)
    b = torch.randn(k, n, device=device, dtype=dtype)
    r = timeit(lambda: a @ b, repeats=repeats, warmup=3, sync=sync_for(device))
    return 2.0 * m * k * n / r["median_s"]


# ------------------------------------------------------------------------------------------------ FLOP rule

def counted_flops(rule: dict, counter, *, denoise_rows: int = 0, train_score_rows: int = 0) -> float:
    """FLOPs of the work `counter` saw, by the library's rule (ebmtool.method.compute.counted_flops)."""
    return library_counted_flops(rule, counter.rows, counter.grad_rows, denoise_rows=denoise_rows,
                                 train_score_rows=train_score_rows)


def profiled_matmul_flops(fn) -> float:
    """Matrix-product FLOPs of fn() as counted by torch.profiler (with_flops), forward and backward."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        fn()
    return float(sum(e.flops for e in prof.key_averages() if e.key in MATMUL_OPS and e.flops))


# ------------------------------------------------------------------------------------------------ training setup

def setup_training(size: int, batch: int, width: int, device="cpu", **over):
    """(cfg, data, state) for an inverse size x size training run at `batch`, the paper's MLP: the state is the
    training loop's own RunState (model, EMA, Adam at lr 1e-4, the objective), so a benchmark steps it with
    ebmtool.training.train_step, the loop's real step. No logging rows: the bare step is measured."""
    cfg = TrainConfig(task="inverse", size=size, seed=0, train_size=batch * 8, batch_size=batch, width=width,
                      lr=1e-4, log_every=10**9, **over)
    cfg.curriculum_total = 100
    cfg.validate()
    data = TrainingData(cfg)
    st = RunState(cfg, data, device)
    st.objective = Objective(cfg, cosine_schedule().to(device), data.task, energy_weight=0.5)
    return cfg, data, st


def make_train_step(st):
    """One full optimiser step per call (train_step: denoise + negatives + energy term + agreement + backward +
    clip + Adam + EMA), cycling over 8 batches."""
    def step():
        train_step(st, draw_batch(st, st.step % 8))
    return step


# ------------------------------------------------------------------------------------------------ memory, fits

def peak_memory_bytes(device="cpu") -> int:
    """Peak memory of this process so far: CUDA's max allocated bytes on a GPU, else the peak RSS (ru_maxrss)."""
    if str(device).startswith("cuda"):
        return int(torch.cuda.max_memory_allocated())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def linear_fit(xs, ys) -> dict:
    """Least-squares y = a + b x, its R^2, and the ratio of y/x at the largest x to y/x at the smallest."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    a = my - b * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys))
    i, j = xs.index(max(xs)), xs.index(min(xs))
    return {"intercept_s": a, "slope_s": b, "r2": 1 - ss_res / ss_tot if ss_tot else 1.0,
            "per_unit_ratio_largest_to_smallest": (ys[i] / xs[i]) / (ys[j] / xs[j])}
