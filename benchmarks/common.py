"""Helpers shared by the benchmarks: timing, machine description, the matmul limit of this machine, the FLOP
rule of the energy network, training-step setup, peak memory and a linear fit.

FLOP rule (stated, not measured; `flop_rule`, cross-checked against torch.profiler's matmul count in
tests/test_bench_common.py). Only matrix products are counted. For the MLP energy, F = 2 * (weights of the Linear
layers that run on every row: fc1..fc4) per row; the time MLP and FiLM layers run once per distinct level in a
call (at most 10 rows, under 1% of a call at batch >= 256) and are left out. F1 = 2 * (fc1's weights). Per row:
    forward-only call (scoring, the last descent step)           F
    call with an input gradient (descent steps, the sampler)     2F   (forward + the input-only backward; autograd
                                                                       computes no weight gradients for it)
    training's scoring call (forward, then backward to weights)  3F - F1  (fc1's input needs no gradient)
    training's denoising call (input gradient with create_graph,
        then the parameter backward through it: double backward)  6F
Rows of each kind come from the model's call counter (`rows`, `grad_rows`), never from a formula.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time

import torch

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

def forward_flops_per_row(model) -> float:
    """2 * (weights of every Linear layer): the forward FLOPs of a network that runs all its Linears per row."""
    return 2.0 * sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def flop_rule(model) -> dict:
    """F (forward FLOPs per row of the per-row Linears fc1..fc4) and F1 (fc1's share); see the module docstring."""
    per_row = [model.fc1, model.fc2, model.fc3, model.fc4]
    return {"F": 2.0 * sum(m.weight.numel() for m in per_row), "F1": 2.0 * model.fc1.weight.numel()}


def counted_flops(rule: dict, counter, *, denoise_rows: int = 0, train_score_rows: int = 0) -> float:
    """FLOPs of the work the counter saw, by the rule: `denoise_rows` of its input-gradient rows are training's
    denoising call (6F) and `train_score_rows` of its forward-only rows are training's scoring call (3F - F1)."""
    f, f1 = rule["F"], rule["F1"]
    grad_rows = counter.grad_rows - denoise_rows
    fwd_rows = counter.rows - counter.grad_rows - train_score_rows
    assert grad_rows >= 0 and fwd_rows >= 0, "counter rows do not fit the stated call kinds"
    return 6 * f * denoise_rows + 2 * f * grad_rows + f * fwd_rows + (3 * f - f1) * train_score_rows


def profiled_matmul_flops(fn) -> float:
    """Matrix-product FLOPs of fn() as counted by torch.profiler (with_flops), forward and backward."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        fn()
    return float(sum(e.flops for e in prof.key_averages() if e.key in MATMUL_OPS and e.flops))


# ------------------------------------------------------------------------------------------------ training setup

def setup_training(size: int, batch: int, width: int, device="cpu", **over):
    """(cfg, data, model, optimiser) for an inverse size x size training run at `batch`, the paper's MLP."""
    from ebmtool.models import EnergyMLP
    from ebmtool.train import TrainConfig, TrainingData

    cfg = TrainConfig(task="inverse", size=size, seed=0, train_size=batch * 8, batch_size=batch, width=width,
                      **over)
    cfg.curriculum_total = 100
    cfg.validate()
    data = TrainingData(cfg)
    torch.manual_seed(0)
    model = EnergyMLP(data.task.x_dim, data.task.y_dim, width, cfg.time_dim).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.99))
    return cfg, data, model, opt


def make_train_step(cfg, model, opt, data, sched, device="cpu"):
    """One full optimiser step (denoise + negatives + energy term + backward + clip + Adam) per call, cycling
    over 8 batches; generators on the CPU, tensors moved to `device` as train.py does."""
    from ebmtool.train import ired_losses, step_generator

    state = {"step": 0}

    def step():
        s = state["step"] % 8
        gen = step_generator(0, s)
        x, y = data.batch(s, device)
        t = torch.randint(0, 10, (cfg.batch_size,), generator=gen).to(device)
        parts = ired_losses(model, x, y, t, gen, sched, cfg, 0.5, step=s, neg_gen=step_generator(0, s, 3))
        opt.zero_grad()
        parts["loss_total"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        state["step"] += 1
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
