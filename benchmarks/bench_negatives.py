"""Cost of negatives in training: time per step by source and K, batched K vs K separate passes, peak memory.

Setting: inverse, batch 256, the paper's MLP (width 512), one full optimiser step (denoise + negatives + energy
term + backward + Adam), median of repeats, relative to the ired step measured in the same run.

FLOPs: the rule of benchmarks/common.py (`flop_rule`, `counted_flops`) on the rows the model's counter saw;
"Achieved fraction" divides FLOP/s by `matmul_flops` at (B*K, width) x (width, width), the machine's dense fp32
matmul rate at the same thread count. The per-stage figures against the limit are in bench_stages.py.

"K separate passes" does the same work as K = 16 as 16 passes: each generates one negative per positive (B rows)
and scores it, the 16 energy losses averaged, one backward. Batched K must be >= 2x faster.

Peak memory: one ANM step at batch 2048, K = 16 (20x20 inverse, width 512) in a fresh subprocess; peak RSS from
resource.getrusage(RUSAGE_SELF).ru_maxrss. No (B, B, D) intermediate exists (shape assertions in the loss).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import torch

from benchmarks.common import counted_flops, flop_rule, make_train_step, matmul_flops, setup_training, timeit
from ebmtool.method.diffusion import cosine_schedule
from ebmtool.training.losses import Batch, Objective, energy_term, ired_losses
from ebmtool.runtime import rng
from ebmtool.runtime.rng import step_generator

VARIANTS = [  # name, config overrides
    ("ired", {}),
    ("anm K=1", {"negatives": "anm", "k": 1}),
    ("anm K=4", {"negatives": "anm", "k": 4}),
    ("anm K=16", {"negatives": "anm", "k": 16}),
    ("hnm K=1", {"negatives": "hnm", "k": 1}),
    ("gaussian K=1", {"negatives": "gaussian", "k": 1}),
    ("sans K=16 (ired)", {"k": 16, "sans": True}),
]


def separate_passes(size, batch, width, k, repeats):
    """The K = 16 anm work done as k passes of one negative each (same total rows), one backward."""
    cfg, data, st = setup_training(size, batch, width, negatives="anm", k=1)
    model, opt = st.model, st.opt
    sched = cosine_schedule()

    def step():
        gen = step_generator(0, 0)
        x, y = data.batch(0, "cpu")
        t = torch.randint(0, 10, (batch,), generator=gen)
        eps = torch.randn(y.shape, generator=gen)
        parts = ired_losses(model, Batch(x, y, t, gen, neg_gen=step_generator(0, 0, rng.NEGATIVES)), Objective(cfg, sched, energy_weight=0.5))
        terms = [parts.energy_term]
        for j in range(1, k):  # the other 15 negatives: generate one per positive and score it, pass by pass
            ep, _, _ = energy_term(model, Batch(x, y, t, gen, step_generator(0, j, rng.NEGATIVES)), Objective(cfg, sched), eps)
            terms.append(0.5 * ep.loss_energy.mean())
        total = parts.loss_denoise.mean() + torch.stack(terms).mean()
        opt.zero_grad()
        total.backward()
        opt.step()
    return timeit(step, repeats=repeats, warmup=1)


def memory_probe(size: int, batch: int, k: int, width: int) -> dict:
    code = f"""
import json, resource, time, torch
torch.set_num_threads({torch.get_num_threads()})
from ebmtool.method.diffusion import cosine_schedule
from ebmtool.config import TrainConfig
from ebmtool.tasks.data import TrainingData
from ebmtool.training.losses import Batch, Objective, ired_losses
from ebmtool.runtime import rng
from ebmtool.runtime.rng import step_generator
from ebmtool.method.models import EnergyMLP
cfg = TrainConfig(task="inverse", size={size}, seed=0, train_size={batch}, batch_size={batch}, width={width},
                  negatives="anm", k={k}); cfg.curriculum_total = 10; cfg.validate()
data = TrainingData(cfg); model = EnergyMLP(data.task.x_dim, data.task.y_dim, {width})
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
x, y = data.batch(0, "cpu"); gen = step_generator(0, 0); t = torch.randint(0, 10, ({batch},), generator=gen)
t0 = time.perf_counter()
parts = ired_losses(model, Batch(x, y, t, gen, neg_gen=step_generator(0, 0, rng.NEGATIVES)), Objective(cfg, cosine_schedule(), energy_weight=0.5))
parts.loss_total.backward()
print(json.dumps({{"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                  "rss_before_step_gib": before / 2**20, "seconds": time.perf_counter() - t0}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return {"batch": batch, "k": k, "size": size, "width": width, **json.loads(out.stdout.strip().splitlines()[-1])}


def run(quick: bool = False) -> dict:
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    size, batch, width = (8, 64, 128) if quick else (8, 256, 512)
    reps = 2 if quick else 3
    t0 = time.time()
    res = {"setting": f"inverse {size}x{size}, batch {batch}, width {width}, threads {torch.get_num_threads()}",
           "load_average_at_start": os.getloadavg(), "steps": {}}
    for name, over in VARIANTS:
        cfg, data, st = setup_training(size, batch, width, **over)
        model = st.model
        step = make_train_step(st)
        r = timeit(step, repeats=reps, warmup=1)
        model.counter.reset()
        step()
        fl = counted_flops(flop_rule(model), model.counter, denoise_rows=batch, train_score_rows=batch * (1 + cfg.k))
        rows = max(batch * cfg.k, batch)
        peak = matmul_flops(rows, width, width, repeats=5)
        res["steps"][name] = {"seconds": r["median_s"], "min_s": r["min_s"], "max_s": r["max_s"],
                              "calls": model.counter.calls, "rows": model.counter.rows, "est_flops": fl,
                              "achieved_flops_per_s": fl / r["median_s"], "matmul_flops_per_s": peak,
                              "fraction_of_matmul": fl / r["median_s"] / peak}
    base = res["steps"]["ired"]["seconds"]
    for v in res["steps"].values():
        v["relative_to_ired"] = v["seconds"] / base
    sep = separate_passes(size, batch, width, 16, reps)
    batched = res["steps"]["anm K=16"]["seconds"]
    res["k16_separate_passes"] = {"seconds": sep["median_s"], "batched_seconds": batched,
                                  "speedup_batched": sep["median_s"] / batched}
    k1, k4, k16 = (res["steps"][f"anm K={k}"]["seconds"] for k in (1, 4, 16))
    res["linearity"] = {"k4_minus_k1_per_negative": (k4 - k1) / 3, "k16_minus_k4_per_negative": (k16 - k4) / 12}
    res["memory"] = memory_probe(8 if quick else 20, 256 if quick else 2048, 16, width)
    res["wall_seconds"] = time.time() - t0
    return res


def markdown(r: dict) -> str:
    lines = ["## Negatives: cost per training step", "", f"{r['setting']}; load average at start "
             f"{', '.join(f'{v:.1f}' for v in r['load_average_at_start'])} (shared machine: absolute times are "
             "noisy, ratios within the run are the figure of merit).", "",
             "| variant | s/step | × ired | network calls | rows evaluated | est. GFLOP | GFLOP/s | "
             "fraction of matmul peak |", "|---|---|---|---|---|---|---|---|"]
    for name, v in r["steps"].items():
        lines.append(f"| {name} | {v['seconds']:.3f} | {v['relative_to_ired']:.2f} | {v['calls']} | {v['rows']} | "
                     f"{v['est_flops'] / 1e9:.1f} | {v['achieved_flops_per_s'] / 1e9:.1f} | "
                     f"{v['fraction_of_matmul']:.2f} |")
    s = r["k16_separate_passes"]
    lin = r["linearity"]
    m = r["memory"]
    lines += ["", f"K = 16 batched: {s['batched_seconds']:.3f} s; the same work as 16 separate passes: "
              f"{s['seconds']:.3f} s; batched is **{s['speedup_batched']:.1f}x** faster.",
              f"Marginal cost per extra negative: K 1→4 {lin['k4_minus_k1_per_negative'] * 1e3:.1f} ms, "
              f"K 4→16 {lin['k16_minus_k4_per_negative'] * 1e3:.1f} ms (linear in K when these agree).", "",
              f"Peak memory, one anm step at batch {m['batch']}, K = {m['k']} (inverse {m['size']}x{m['size']}, "
              f"width {m['width']}): **{m['peak_rss_gib']:.2f} GiB** peak RSS ({m['rss_before_step_gib']:.2f} GiB "
              f"before the step; {m['seconds']:.1f} s).", "",
              f"Reproduce: `{r.get('command')}` (BENCH_THREADS sets torch threads, default 1)."]
    return "\n".join(lines)
