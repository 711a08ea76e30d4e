"""Every stage against the machine's limit: time, network evaluations, FLOP/s as a fraction of the dense matmul
rate at the same shapes, and peak memory, per unit of work; and how time grows with batch size, K and C*S.

Stages (inverse 20x20: x_dim = y_dim = 400, the paper's MLP, width 512, fp32; `--quick`: 8x8, width 128):
- train      one full optimiser step (denoise + negatives + energy term + backward + clip + Adam) at batch 256 and
             2048, per negative source: ired (K = 1, 2 descent steps), anm (K = 4, 5 projected steps), hnm (K = 1,
             C = 4 candidates, 2 steps), gaussian (K = 1). Unit: one step.
- sample     the annealed sampler (10 levels, 5 inner steps), batch 256. Unit: one problem.
- mine       offline mining (`ebmtool.offline.mining.mine_batch`: HNM candidates, refinement, scoring, filters), K = 4,
             C = 10, S = 5, batch 32 on a CPU (256 on a GPU), frozen weights. Unit: one problem.
- score      `ebmtool.offline.mining.score_rows` (E+ and the K = 4 re-noised E-), batch 1024. Unit: one negative.
- graph      the connectivity task's GraphEBM (12 nodes, defaults), sampler at batch 64. Unit: one problem.

How each figure is obtained:
- time: median of repeats after warm-up (CUDA synchronised around every repeat), per unit of work.
- network evaluations: the model's call counter (`model.counter`: calls, rows, grad_rows) over one unit's run.
- FLOPs: the rule in benchmarks/common.py (forward F per row, input-gradient call 2F, training's scoring call
  3F - F1, training's denoising double backward 6F; F = 2 * the per-row Linear weights), applied to the counted
  rows of each kind; the same run is also counted by torch.profiler (matrix products only) as a check. GraphEBM
  has no rule: its figure is the profiler's count.
- limit: `matmul_flops` at (m, width) x (width, width) in the same process right after the stage, m = rows of the
  stage's largest network call, fp32 (on CUDA also TF32 and bf16, noted). fraction = achieved / limit.
- peak memory: each stage runs in a fresh subprocess; CPU: peak RSS (ru_maxrss, includes the ~0.3 GiB of Python
  and torch) read before the limit is measured, with the RSS before the stage's first call; CUDA:
  torch.cuda.max_memory_allocated.
- growth: train (ired) and sampling time at 4 batch sizes, train (anm) at K = 1, 4, 16, mining at 4 (C, S), a
  least-squares line time = a + b * size, its R^2, and the ratio of time per unit at the largest to the smallest.

Threads: BENCH_THREADS (default 2 on a CPU). The machine may be shared: compare within one run.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch

from benchmarks.common import (
    counted_flops, flop_rule, linear_fit, make_train_step, matmul_flops, peak_memory_bytes, profiled_matmul_flops,
    setup_training, sync_for, timeit,
)

SOURCES = [  # name, TrainConfig overrides
    ("ired K=1", {}),
    ("anm K=4", {"negatives": "anm", "k": 4}),
    ("hnm K=1 C=4", {"negatives": "hnm", "k": 1}),
    ("gaussian K=1", {"negatives": "gaussian", "k": 1}),
]


def plan(quick: bool, device: str) -> dict:
    """The stages and growth series of one run."""
    size, width = (8, 128) if quick else (20, 512)
    reps = 2 if quick else 5
    big = 512 if quick else 2048
    mine_batch = 8 if quick else (256 if device.startswith("cuda") else 32)
    base = {"size": size, "width": width, "repeats": reps}
    stages = []
    for batch in (256, big):
        for name, over in SOURCES:
            stages.append({"kind": "train", "name": f"train {name}, batch {batch}", "batch": batch, "over": over,
                           **base, "repeats": reps if batch == 256 else max(2, reps - 2)})
    stages += [
        {"kind": "sample", "name": "sample, batch 256", "batch": 256, **base, "repeats": max(2, reps - 2)},
        {"kind": "mine", "name": f"mine C=10 S=5 K=4, batch {mine_batch}", "batch": mine_batch, "k": 4,
         "candidates": 10, "steps": 5, **base},
        {"kind": "score", "name": "score K=4, batch 1024", "batch": 1024, "k": 4, **base},
        {"kind": "graph", "name": "graph (connectivity 12 nodes) sample, batch 64", "batch": 16 if quick else 64,
         "repeats": 1 if quick else 2, "size": 12, "width": 32},
    ]
    growth = [
        {"kind": "train", "name": "train ired K=1 vs batch", "vary": "batch",
         "values": [32, 64, 128, 256] if quick else [64, 256, 1024, 2048], "over": {}, **base},
        {"kind": "sample", "name": "sample vs batch", "vary": "batch",
         "values": [32, 64, 128, 256] if quick else [64, 256, 512, 1024], **base, "repeats": max(2, reps - 2)},
        {"kind": "train", "name": "train anm vs K, batch 256", "vary": "k", "batch": 64 if quick else 256,
         "values": [1, 4, 8, 16], "over": {"negatives": "anm"}, **base, "repeats": max(2, reps - 2)},
        {"kind": "mine", "name": f"mine vs C*(S+1), K=4, batch {mine_batch}", "vary": "cs", "batch": mine_batch,
         "k": 4, "values": [[4, 2], [10, 2], [10, 5], [20, 5]], **base},
    ]
    return {"stages": stages, "growth": growth}


# ------------------------------------------------------------------------------------------------ one stage

def build(spec: dict, device: str):
    """(fn doing one timed batch, units per call, flops kinds for counted_flops (None: no rule), the limit's
    matmul shape (m, k, n) (m = rows of the stage's largest network call), model)."""
    from ebmtool.method.diffusion import SamplerSettings, cosine_schedule, sample
    from ebmtool.tasks.registry import get_task

    sched = cosine_schedule().to(device)
    kind, b, w = spec["kind"], spec["batch"], spec["width"]
    if kind == "train":
        cfg, data, st = setup_training(spec["size"], b, spec["width"], device, **spec["over"])
        model = st.model
        k = cfg.k
        s = cfg.negative_settings()
        cand = s.hnm_candidates if cfg.negatives == "hnm" else 1
        return (make_train_step(st), 1,
                {"denoise_rows": b, "train_score_rows": b * (1 + k)}, (max(b * (1 + k), b * k * cand), w, w), model)
    if kind == "graph":
        from ebmtool.method.models import build_model

        task = get_task("connectivity", spec["size"])
        torch.manual_seed(0)
        model = build_model(task.model_dims()).to(device).eval()
        problems = task.generate(b, "val", seed=0)
        x = torch.from_numpy(problems.x).to(device)
        n, h = task.size, spec["width"]  # largest product: the combine Linear over b*n*n edges, [h, h^T, max, min]
        return (lambda: sample(model, x, sched, task.y_dim, task.sampler, torch.Generator().manual_seed(0)), b,
                None, (b * n * n, 4 * h, h), model)
    from ebmtool.method.models import EnergyMLP

    task = get_task("inverse", spec["size"])
    problems = task.generate(b, "train", seed=0)
    torch.manual_seed(0)
    model = EnergyMLP(task.x_dim, task.y_dim, spec["width"]).to(device).eval().requires_grad_(False)
    x, y = torch.from_numpy(problems.x).to(device), torch.from_numpy(problems.y).to(device)
    if kind == "sample":
        return (lambda: sample(model, x, sched, task.y_dim, SamplerSettings(), torch.Generator().manual_seed(0)), b,
                {}, (b, w, w), model)
    if kind == "mine":
        from ebmtool.offline.mining import MineOptions, mine_batch

        opts = MineOptions(k=spec["k"], candidates=spec["candidates"], refine_steps=spec["steps"], batch_size=b)
        rows = np.arange(b)
        return (lambda: mine_batch(model, sched, x, y, rows, opts, device), b, {},
                (b * spec["k"] * spec["candidates"], w, w), model)
    if kind == "score":
        from ebmtool.offline.mining import score_rows

        k = spec["k"]
        gen = torch.Generator().manual_seed(0)
        t = torch.randint(0, 10, (b,), generator=gen).to(device)
        eps = torch.randn(b, task.y_dim, generator=gen).to(device)
        y_neg = torch.randn(b, k, task.y_dim, generator=gen).clamp(-2, 2).to(device)
        return lambda: score_rows(model, sched, x, y, t, eps, y_neg), b * k, {}, (b * k, w, w), model
    raise ValueError(f"unknown stage kind {kind!r}")


def measure(spec: dict, device: str, memory: bool = True) -> dict:
    """Run one stage in this process: counts, FLOPs (rule and profiler), time, peak memory, the matmul limit."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    fn, units, kinds, shape, model = build(spec, device)
    sync = sync_for(device)
    rss_before = peak_memory_bytes("cpu")
    model.counter.reset()
    fn()  # also the first warm-up
    if sync:
        sync()
    c = copy.copy(model.counter)  # one unit's counts, before the repeats add to the live counter
    counts = {"calls": c.calls, "rows": c.rows, "grad_calls": c.grad_calls, "grad_rows": c.grad_rows}
    t = timeit(fn, repeats=spec["repeats"], warmup=1, sync=sync)
    peak = peak_memory_bytes(device) if memory else None
    profiled = profiled_matmul_flops(fn) if memory or kinds is None else None
    flops = counted_flops(flop_rule(model), c, **kinds) if kinds is not None else profiled
    limit = matmul_flops(*shape, device=device)
    out = {"name": spec["name"], "kind": spec["kind"], "batch": spec["batch"], "units_per_call": units,
           "seconds": t["median_s"], "min_s": t["min_s"], "max_s": t["max_s"], "repeats": t["repeats"],
           "seconds_per_unit": t["median_s"] / units, **counts,
           "rows_per_unit": counts["rows"] / units, "flops": flops, "flops_source": "rule" if kinds is not None
           else "profiler", "profiled_flops": profiled, "flops_per_unit": flops / units,
           "achieved_flops_per_s": flops / t["median_s"], "limit_shape": list(shape),
           "matmul_flops_per_s": limit, "fraction_of_limit": flops / t["median_s"] / limit,
           "peak_memory_bytes": peak, "rss_before_bytes": rss_before if not device.startswith("cuda") else None}
    if spec["kind"] == "train":
        out["rows_per_example"] = counts["rows"] / spec["batch"]
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        out["matmul_tf32_flops_per_s"] = matmul_flops(*shape, device=device)
        torch.backends.cuda.matmul.allow_tf32 = False
        out["matmul_bf16_flops_per_s"] = matmul_flops(*shape, device=device, dtype=torch.bfloat16)
    return out


def series(spec: dict, device: str) -> dict:
    """One growth series: the stage at each value of spec['vary'], time and time per unit, and a line fit."""
    points = []
    for v in spec["values"]:
        s = dict(spec)
        if spec["vary"] == "batch":
            s["batch"] = v
        elif spec["vary"] == "k":
            s["over"] = {**spec["over"], "k": v}
        else:
            s["candidates"], s["steps"] = v
        s["name"] = f"{spec['name']}: {v}"
        r = measure(s, device, memory=False)
        size = {"batch": v, "k": v, "cs": v[0] * (v[1] + 1) if isinstance(v, list) else None}[spec["vary"]]
        points.append({"value": v, "size": size, "seconds": r["seconds"], "seconds_per_unit": r["seconds_per_unit"],
                       "seconds_per_size": r["seconds"] / size, "calls": r["calls"], "rows": r["rows"],
                       "fraction_of_limit": r["fraction_of_limit"]})
    fit = linear_fit([p["size"] for p in points], [p["seconds"] for p in points])
    return {"name": spec["name"], "vary": spec["vary"], "points": points, "fit": fit}


def worker(spec: dict, device: str) -> dict:
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    return series(spec, device) if "vary" in spec else measure(spec, device)


def spawn(spec: dict, device: str) -> dict:
    """Run a stage in a fresh interpreter (its own peak memory) and return its JSON."""
    out = subprocess.run([sys.executable, "-m", "benchmarks.bench_stages", json.dumps(spec), device],
                         capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if out.returncode:
        raise RuntimeError(f"stage {spec['name']!r} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(quick: bool = False, device: str = "cpu") -> dict:
    t0 = time.time()
    p = plan(quick, device)
    res = {"device": device, "threads": int(os.environ.get("BENCH_THREADS", "2")), "quick": quick,
           "load_average_at_start": os.getloadavg(), "stages": [], "growth": []}
    for spec in p["stages"]:
        res["stages"].append(spawn(spec, device))
        print(f"  {spec['name']}: {res['stages'][-1]['seconds']:.3f} s", file=sys.stderr)
    for spec in p["growth"]:
        res["growth"].append(spawn(spec, device))
        print(f"  {spec['name']} done", file=sys.stderr)
    res["load_average_at_end"] = os.getloadavg()
    res["wall_seconds"] = time.time() - t0
    return res


# ------------------------------------------------------------------------------------------------ report

UNIT = {"train": "step", "sample": "problem", "mine": "problem", "score": "negative", "graph": "problem"}


def _time(s: float) -> str:
    return f"{s * 1e3:.1f} ms" if s >= 1e-3 else f"{s * 1e6:.1f} µs"


def markdown(r: dict) -> str:
    m = r.get("machine", {})
    lines = [f"## Stages against the machine's limit ({r['device']}, {r['threads']} threads)", "",
             f"Machine: {m.get('cores')} cores, torch {m.get('torch')}, GPU {m.get('cuda')}; load average "
             f"{', '.join(f'{v:.1f}' for v in r['load_average_at_start'])} at start, "
             f"{', '.join(f'{v:.1f}' for v in r['load_average_at_end'])} at end; {r['wall_seconds']:.0f} s. "
             "Inverse 20x20, width 512 unless stated (quick: 8x8, width 128). Rules and methods: the docstring of "
             "benchmarks/bench_stages.py.", "",
             "| stage | time/unit | unit | calls/batch | rows/unit | GFLOP/unit | GFLOP/s | matmul limit GFLOP/s "
             "| fraction | fraction (best repeat) | peak memory | profiler/rule |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in r["stages"]:
        mem = s["peak_memory_bytes"]
        mem_s = f"{mem / 2**30:.2f} GiB" if mem is not None else "-"
        if s.get("rss_before_bytes"):
            mem_s += f" ({s['rss_before_bytes'] / 2**30:.2f} before)"
        check = f"{s['profiled_flops'] / s['flops']:.3f}" if s["flops_source"] == "rule" else "(profiler count)"
        lines.append(f"| {s['name']} | {_time(s['seconds_per_unit'])} | {UNIT[s['kind']]} | "
                     f"{s['calls']} | {s['rows_per_unit']:.4g} | {s['flops_per_unit'] / 1e9:.4g} | "
                     f"{s['achieved_flops_per_s'] / 1e9:.1f} | {s['matmul_flops_per_s'] / 1e9:.1f} | "
                     f"**{s['fraction_of_limit']:.2f}** | {s['flops'] / s['min_s'] / s['matmul_flops_per_s']:.2f} | "
                     f"{mem_s} | {check} |")
    if any("matmul_bf16_flops_per_s" in s for s in r["stages"]):
        lines += ["", "Matmul limit at the same shapes in other precisions (GFLOP/s): "
                  + "; ".join(f"{s['name']}: TF32 {s['matmul_tf32_flops_per_s'] / 1e9:.0f}, bf16 "
                              f"{s['matmul_bf16_flops_per_s'] / 1e9:.0f}" for s in r["stages"]) + "."]
    lines += ["", "Calls per batch: the sequential network calls of one timed batch (one training step; one "
              "sampler run, so 70 is also each problem's count of evaluations, whatever the batch size). Rows per unit count every network row evaluated (per example for training, divided by the "
              "batch). profiler/rule: torch.profiler's matmul FLOPs over the rule's (1.00 = the rule counts what "
              "ran). Time, GFLOP/s and fraction use the median repeat; 'best repeat' the fastest one (on a shared machine, the closest to what the code can do).", "", "### Growth", ""]
    for g in r["growth"]:
        f = g["fit"]
        lines += [f"**{g['name']}** — line fit time = {f['intercept_s'] * 1e3:.1f} ms + {f['slope_s'] * 1e3:.3f} ms "
                  f"x size, R² = {f['r2']:.4f}; time per unit at the largest / smallest size: "
                  f"**{f['per_unit_ratio_largest_to_smallest']:.2f}** (1.00 = linear through zero).", "",
                  f"| {g['vary']} | size | time | time/size | calls | rows | fraction |", "|---|---|---|---|---|---|---|"]
        for p in g["points"]:
            lines.append(f"| {p['value']} | {p['size']} | {_time(p['seconds'])} | {_time(p['seconds_per_size'])} | "
                         f"{p['calls']} | {p['rows']} | {p['fraction_of_limit']:.2f} |")
        lines.append("")
    lines.append(f"Reproduce: `{r.get('command')}` (BENCH_THREADS sets torch threads, default 2).")
    return "\n".join(lines)


if __name__ == "__main__":
    print(json.dumps(worker(json.loads(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "cpu")))
