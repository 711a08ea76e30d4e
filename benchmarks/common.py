"""Helpers shared by the benchmarks: timing, machine description, the matmul limit of this machine."""

from __future__ import annotations

import os
import platform
import statistics
import time

import torch


def machine() -> dict:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


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


def matmul_flops(m: int, k: int, n: int, repeats: int = 10, device="cpu") -> float:
    """Achieved dense fp32 matmul FLOP/s at shape (m, k) x (k, n): the machine's limit at those shapes."""
    a = torch.randn(m, k, device=device)
    b = torch.randn(k, n, device=device)
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else None
    r = timeit(lambda: a @ b, repeats=repeats, warmup=3, sync=sync)
    return 2.0 * m * k * n / r["median_s"]
