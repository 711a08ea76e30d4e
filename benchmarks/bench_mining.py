"""Throughput of offline mining (`ebmtool mine-negatives`): problems per second by (candidates C, refinement S).

Setting: inverse 20x20 (x_dim = y_dim = 400), the paper's MLP (width 512, time_dim 128), K = 4 negatives per
problem, one `mining.mine_batch` call per timing (HNM candidates + refinement + scoring + filters), untrained
weights (cost does not depend on them), median of repeats.

Network calls and rows per problem come from `model.counter`. FLOP counting rule (stated, not measured):
F = 2 * (sum of the MLP's Linear weight sizes) per row for a forward pass; the scoring call (E+ and E- of the
K selected negatives, B(1+K) rows) is forward-only (F per row); the R = B*K*C candidate rows go through S + 1
descent calls (`descend`'s reuse): max(S, 1) with an input-gradient (2F: forward + the input-only backward; the frozen
weights get no gradient) and, for S >= 1, a last forward-only call (F). Achieved FLOP/s is that estimate over the median time, divided by
`matmul_flops` at (B*K*C, 512) x (512, 512) measured in the same run (the machine's dense fp32 rate there).
"""

from __future__ import annotations

import numpy as np
import torch

from benchmarks.common import matmul_flops, timeit
from ebmtool.diffusion import cosine_schedule
from ebmtool.mining import MineOptions, mine_batch
from ebmtool.models import EnergyMLP
from ebmtool.tasks import get_task

SETTINGS = [(4, 2), (10, 5), (20, 5)]  # (C, S); C=10, S=5 is the headline


def forward_flops_per_row(model) -> float:
    return 2.0 * sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def run(quick: bool = False) -> dict:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    size, width, k = (8, 128, 4) if quick else (20, 512, 4)
    batch = 16 if quick else (256 if device == "cuda" else 32)
    repeats = 2 if quick else 5
    task = get_task("inverse", size)
    problems = task.generate(batch, "train", seed=0)
    torch.manual_seed(0)
    model = EnergyMLP(task.x_dim, task.y_dim, width, 128).to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    sched = cosine_schedule().to(device)
    x = torch.from_numpy(problems.x).to(device)
    y = torch.from_numpy(problems.y).to(device)
    rows = np.arange(batch)
    f_row = forward_flops_per_row(model)
    sync = torch.cuda.synchronize if device == "cuda" else None
    results = []
    for c, s in SETTINGS:
        opts = MineOptions(k=k, candidates=c, refine_steps=s, batch_size=batch, seed=0)
        model.counter.calls = model.counter.rows = 0
        mine_batch(model, sched, x, y, rows, opts, device)
        calls, total_rows = model.counter.calls, model.counter.rows
        score_rows = batch * (1 + k)
        r_cand = batch * k * c
        assert total_rows - score_rows == r_cand * (s + 1), "descent rows differ from the counting rule"
        grad_rows = r_cand * max(s, 1)
        flops = 2 * f_row * grad_rows + f_row * (total_rows - grad_rows)
        t = timeit(lambda: mine_batch(model, sched, x, y, rows, opts, device), repeats=repeats, warmup=1, sync=sync)
        limit = matmul_flops(batch * k * c, width, width, device=device)
        achieved = flops / t["median_s"]
        results.append({"candidates": c, "refine_steps": s, "problems_per_s": batch / t["median_s"],
                        "seconds_per_batch": t["median_s"],
                        "problems_per_s_best": batch / t["min_s"], "calls_per_batch": calls,
                        "calls_per_problem": calls / batch, "rows_per_problem": total_rows / batch,
                        "flops_per_problem": flops / batch, "achieved_flops": achieved, "matmul_flops": limit,
                        "achieved_fraction": achieved / limit})
    return {"task": task.label, "width": width, "k": k, "batch": batch, "device": device, "repeats": repeats,
            "results": results}


def markdown(r: dict) -> str:
    lines = [f"# Offline mining throughput ({r['task']}, width {r['width']}, K = {r['k']}, batch {r['batch']}, "
             f"{r['device']})", "",
             f"Command: `{r.get('command', 'python -m benchmarks mining')}`; machine: {r.get('machine')}", "",
             "| C | S | problems/s (median) | problems/s (best) | s/batch | calls/batch | net rows/problem | GFLOP/problem | achieved GFLOP/s "
             "| matmul GFLOP/s (same run) | fraction |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for x in r["results"]:
        lines.append(f"| {x['candidates']} | {x['refine_steps']} | {x['problems_per_s']:.1f} | {x['problems_per_s_best']:.1f} | "
                     f"{x['seconds_per_batch']:.3f} | {x['calls_per_batch']} | {x['rows_per_problem']:.0f} | "
                     f"{x['flops_per_problem'] / 1e9:.3f} | {x['achieved_flops'] / 1e9:.1f} | "
                     f"{x['matmul_flops'] / 1e9:.1f} | {x['achieved_fraction']:.2f} |")
    lines += ["", "Calls per batch are independent of the batch size: all B*K*C candidate rows of a batch go "
              "through each descent step as one network call (no loop over problems or candidates). FLOPs are "
              "estimated by the rule in the module docstring; the fraction uses the median time and the matmul rate "
              "measured right before it (the CPU is shared, so rates vary between runs; compare within a row)."]
    return "\n".join(lines)
