"""The explicit input gradient of EnergyMLP (models.mlp_energy_and_grad) against autograd's double backward.

In one run, at 2 torch threads, the paper's MLP (width 512, time_dim 128) on inverse 8x8 and 20x20:

* the denoising loss, forward + backward to the parameters (training's eps_hat = dE/dy at x_t with
  create_graph=True, then mean squared error against eps), batch 64 and 256: autograd (double backward), the
  explicit form, the explicit form with only fc1's y columns (`y_columns_only`, not used by the library), and
  the explicit form under torch.compile (`compile_explicit`, inductor; dynamo's caches are reset per setting
  and the first call's time is reported as compile time);
* the sampler (no-grad, 10 levels x (2 + 5 inner steps) calls), batch 256: autograd vs explicit (and compiled);
* one full IRED training step (benchmarks.common.make_train_step: denoise + negatives + energy term + Adam),
  batch 256: autograd vs explicit (and compiled).

The arms are timed interleaved (one call of each per round), median over rounds, so a change of the machine's
load hits them alike. Each arm's parameter gradients are compared with autograd's (largest relative difference).
"""

from __future__ import annotations

import copy
import datetime
import functools
import os
import statistics
import tempfile
import time

import torch

from benchmarks.common import make_train_step, setup_training
from ebmtool.method.diffusion import SamplerSettings, cosine_schedule, energy_and_grad, noised, sample
from ebmtool.method.models import EnergyMLP, compile_explicit, mlp_energy_and_grad

THREADS = 2
WIDTH, TIME_DIM = 512, 128  # the default model config (TrainConfig: width None = 512, time_dim 128)


def _arm(model: EnergyMLP, name: str) -> EnergyMLP:
    m = copy.deepcopy(model)
    if name == "autograd":
        m.explicit_grad = False
    elif name == "explicit_y_columns":
        m.__dict__["_explicit_core"] = functools.partial(mlp_energy_and_grad, y_columns_only=True)
    elif name == "compiled":
        compile_explicit(m)
    return m


def _interleaved(fns: dict, rounds: int, warmup: int = 2) -> dict:
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: {"median_ms": 1e3 * statistics.median(v), "min_ms": 1e3 * min(v), "max_ms": 1e3 * max(v),
                "rounds": rounds} for k, v in times.items()}


def _first_call(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def denoise_cost(size: int, batch: int, rounds: int, arms: list[str]) -> dict:
    d = size * size
    torch.manual_seed(0)
    base = EnergyMLP(d, d, WIDTH, TIME_DIM)
    sched = cosine_schedule()
    g = torch.Generator().manual_seed(1)
    x, y0, eps = (torch.randn(batch, d, generator=g) for _ in range(3))
    t = torch.randint(0, 10, (batch,), generator=g)
    x_t = noised(sched, y0, t, eps)
    models = {a: _arm(base, a) for a in arms}

    def step(m):
        _, eps_hat = energy_and_grad(m, x, x_t, t, create_graph=True)
        m.zero_grad(set_to_none=True)
        ((eps_hat - eps) ** 2).mean(dim=1).mean().backward()

    out = {}
    if "compiled" in models:
        torch._dynamo.reset()
        out["compile_s"] = _first_call(lambda: step(models["compiled"]))
    fns = {a: functools.partial(step, m) for a, m in models.items()}
    out["time"] = _interleaved(fns, rounds)
    for m in models.values():
        step(m)
    ref = [p.grad for p in models["autograd"].parameters()]
    out["max_rel_grad_diff"] = {a: max(float((p.grad - r).abs().max() / r.abs().max())
                                       for p, r in zip(m.parameters(), ref)) for a, m in models.items()}
    return out


def sampler_cost(size: int, batch: int, rounds: int, arms: list[str]) -> dict:
    d = size * size
    torch.manual_seed(0)
    base = EnergyMLP(d, d, WIDTH, TIME_DIM)
    sched = cosine_schedule()
    x = torch.randn(batch, d, generator=torch.Generator().manual_seed(1))
    models = {a: _arm(base, a) for a in arms}

    def run(m):
        return sample(m, x, sched, d, SamplerSettings(), torch.Generator().manual_seed(0))

    out = {}
    if "compiled" in models:
        torch._dynamo.reset()
        out["compile_s"] = _first_call(lambda: run(models["compiled"]))
    fns = {a: functools.partial(run, m) for a, m in models.items()}
    out["time"] = _interleaved(fns, rounds, warmup=1)
    answers = {a: run(m) for a, m in models.items()}
    out["max_abs_answer_diff"] = {a: float((v - answers["autograd"]).abs().max()) for a, v in answers.items()}
    return out


def train_step_cost(size: int, batch: int, rounds: int, arms: list[str]) -> dict:
    """The loop's own step (train_step on a fresh RunState per arm, same seed, so the same initial weights),
    its network switched to the arm's form."""
    steps = {}
    for a in arms:
        _, _, st = setup_training(size, batch, WIDTH)
        st.model = _arm(st.model, a)
        st.meter.counter = st.model.counter  # the copy counts its own calls
        st.opt = torch.optim.Adam(st.model.parameters(), lr=st.cfg.lr, betas=(st.cfg.beta1, st.cfg.beta2),
                                  fused=True)
        steps[a] = make_train_step(st)
    out = {}
    if "compiled" in steps:
        torch._dynamo.reset()
        out["compile_s"] = _first_call(steps["compiled"])
    out["time"] = _interleaved(steps, rounds)
    return out


def run(quick: bool = False) -> dict:
    """Compilation uses a temporary inductor cache, fresh at the start: the first setting's `compile_s` is a cold
    compile (torch's compiler already imported by the check that inductor builds here); later settings reuse
    what earlier ones compiled, as a training run's later shapes would."""
    from torch._inductor.runtime.cache_dir_utils import temporary_cache_dir

    with tempfile.TemporaryDirectory() as cache, temporary_cache_dir(cache):
        return _run(quick)


def _run(quick: bool) -> dict:
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    t0 = time.time()
    load0 = os.getloadavg()
    try:
        sizes = (8,) if quick else (8, 20)
        batches = (64,) if quick else (64, 256)
        r_den, r_samp, r_train = (3, 2, 3) if quick else (15, 5, 9)
        compiled = ["compiled"]
        try:  # does inductor build here? (a C compiler and torch's codegen)
            torch._dynamo.reset()
            f = torch.compile(lambda a: torch.nn.functional.silu(a) * 2)
            f(torch.randn(4, 4))
            inductor = {"works": True}
        except Exception as exc:  # noqa: BLE001 (reported, and the compiled arms skipped)
            inductor = {"works": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
            compiled = []
        arms = ["autograd", "explicit", "explicit_y_columns", *compiled]
        res = {"date": datetime.date.today().isoformat(), "threads": THREADS, "width": WIDTH, "time_dim": TIME_DIM,
               "inductor": inductor, "denoise": {}, "sampler": {}, "train_step": {}}
        for size in sizes:
            for b in batches:
                res["denoise"][f"inverse {size}x{size}, batch {b}"] = denoise_cost(size, b, r_den, arms)
        for size in sizes:
            res["sampler"][f"inverse {size}x{size}, batch 256"] = sampler_cost(
                size, 256, r_samp, ["autograd", "explicit", *compiled])
        for size in sizes:
            res["train_step"][f"inverse {size}x{size}, batch 256"] = train_step_cost(
                size, 256, r_train, ["autograd", "explicit", *compiled])
    finally:
        torch.set_num_threads(before)
    res["load_average_start_end"] = [load0[0], os.getloadavg()[0]]
    res["wall_seconds"] = time.time() - t0
    return res


def _ms(v: dict, arm: str) -> str:
    return f"{v['time'][arm]['median_ms']:.2f}" if arm in v["time"] else "—"


def _x(v: dict, arm: str) -> str:
    return f"{v['time']['autograd']['median_ms'] / v['time'][arm]['median_ms']:.2f}x" if arm in v["time"] else "—"


def markdown(r: dict) -> str:
    comp = r["inductor"]["works"]
    lines = [f"## Explicit input gradient of EnergyMLP ({r['date']})", "",
             f"Width {r['width']}, time_dim {r['time_dim']}, {r['threads']} torch threads, fp32. Medians of "
             "interleaved rounds; speed-up = autograd / arm. `explicit_y_columns` multiplies by fc1's y columns "
             "only (not used by the library: the FLOP rule does not describe it). "
             + ("`compiled` = `compile_explicit(model)` (inductor); compile s = its first call. The inductor cache is "
                "fresh at the start of the run, so the first setting's compile is cold; later settings reuse "
                "what earlier ones compiled."
                if comp else f"torch.compile (inductor) does not work here: {r['inductor'].get('error')}"), "",
             "Denoising loss, forward + backward to the parameters (ms):", "",
             "| setting | autograd (double backward) | explicit | explicit, y columns | compiled | speed-up "
             "explicit / y columns / compiled | compile s | max rel. grad diff (explicit, compiled) |",
             "|---|---|---|---|---|---|---|---|"]
    for k, v in r["denoise"].items():
        diff = v["max_rel_grad_diff"]
        lines.append(f"| {k} | {_ms(v, 'autograd')} | {_ms(v, 'explicit')} | {_ms(v, 'explicit_y_columns')} | "
                     f"{_ms(v, 'compiled')} | {_x(v, 'explicit')} / {_x(v, 'explicit_y_columns')} / "
                     f"{_x(v, 'compiled')} | {v.get('compile_s', float('nan')):.1f} | "
                     f"{diff['explicit']:.1e}, {diff.get('compiled', float('nan')):.1e} |")
    lines += ["", "Sampler (no grad; 10 levels x 7 calls), whole batch (ms):", "",
              "| setting | autograd | explicit | compiled | speed-up explicit / compiled | compile s "
              "| max answer diff (explicit, compiled) |", "|---|---|---|---|---|---|---|"]
    for k, v in r["sampler"].items():
        diff = v["max_abs_answer_diff"]
        lines.append(f"| {k} | {_ms(v, 'autograd')} | {_ms(v, 'explicit')} | {_ms(v, 'compiled')} | "
                     f"{_x(v, 'explicit')} / {_x(v, 'compiled')} | {v.get('compile_s', float('nan')):.1f} | "
                     f"{diff['explicit']:.1e}, {diff.get('compiled', float('nan')):.1e} |")
    lines += ["", "Full IRED training step (denoise + negatives + energy term + Adam; ms):", "",
              "| setting | autograd | explicit | compiled | speed-up explicit / compiled | compile s |",
              "|---|---|---|---|---|---|"]
    for k, v in r["train_step"].items():
        lines.append(f"| {k} | {_ms(v, 'autograd')} | {_ms(v, 'explicit')} | {_ms(v, 'compiled')} | "
                     f"{_x(v, 'explicit')} / {_x(v, 'compiled')} | {v.get('compile_s', float('nan')):.1f} |")
    m = r.get("machine", {})
    la = r.get("load_average_start_end", [float("nan")] * 2)
    lines += ["", f"Machine: {m.get('cores')} cores, torch {m.get('torch')}; 1-minute load average "
              f"{la[0]:.2f} at the start, {la[1]:.2f} at the end (the CPU is shared); {r['wall_seconds']:.0f} s. "
              f"Reproduce: `{r.get('command')}`."]
    return "\n".join(lines)
