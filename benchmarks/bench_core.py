"""Core costs: network evaluations and time per training step and per sampled problem.

Counts come from the model's call counter (instrumentation, not estimates). The "release" columns run the
release's `opt_step` (two network calls per descent step, no reuse) through the same network, so the two
columns differ only in evaluation reuse; their answers are compared too.
"""

from __future__ import annotations

import time

import torch

from benchmarks.common import make_train_step, setup_training, timeit
from ebmtool.method.diffusion import SamplerSettings, cosine_schedule, energy, energy_and_grad, sample
import ebmtool.method.diffusion as diffusion
from ebmtool.method.models import EnergyMLP


def release_descend(model, x, y, t, sched, steps, *, multiplier=2.0, clamp=2.0, bound=None, mask=None, **_):
    """The release's opt_step: energy+gradient, step, clamp, energy again, revert where it rose."""
    eta = sched.step_size[t][:, None]
    if bound is None:
        bound = clamp * sched.sqrt_ab[t][:, None]
    e = None
    for i in range(steps):
        e, g = energy_and_grad(model, x, y, t)
        m = 1.0 if i == 0 else multiplier
        y_new = torch.maximum(torch.minimum(y - m * eta * g, bound), -bound)
        e_new = energy(model, x, y_new, t)
        y = torch.where((e_new > e)[:, None], y, y_new)
        e = torch.minimum(e, e_new)
    return y.detach(), e, None


def sampler_cost(size: int, batch: int, repeats: int) -> dict:
    torch.manual_seed(0)
    d = size * size
    model = EnergyMLP(d, d)
    sched = cosine_schedule()
    x = torch.randn(batch, d)
    out = {}
    answers = {}
    for name in ("ebmtool", "release"):
        original = diffusion.descend
        if name == "release":
            diffusion.descend = release_descend
        try:
            model.counter.reset()
            answers[name] = sample(model, x, sched, d, SamplerSettings(), torch.Generator().manual_seed(0))
            calls = model.counter.calls
            r = timeit(lambda: sample(model, x, sched, d, SamplerSettings(), torch.Generator().manual_seed(0)),
                       repeats=repeats, warmup=1)
        finally:
            diffusion.descend = original
        out[name] = {"calls_per_problem": calls, "seconds_per_problem": r["median_s"] / batch,
                     "seconds_per_batch": r["median_s"]}
    out["max_abs_answer_difference"] = float((answers["ebmtool"] - answers["release"]).abs().max())
    return out


def train_step_cost(size: int, batch: int, repeats: int) -> dict:
    cfg, data, st = setup_training(size, batch, 512)
    model = st.model
    step = make_train_step(st)
    model.counter.reset()
    step()
    calls, rows = model.counter.calls, model.counter.rows
    r = timeit(step, repeats=repeats, warmup=2)
    return {"calls_per_step": calls, "rows_per_example": rows / batch, "seconds_per_step": r["median_s"],
            "min_s": r["min_s"], "max_s": r["max_s"]}


def run(quick: bool = False) -> dict:
    reps = 2 if quick else 5
    t0 = time.time()
    res = {
        "sampler": {f"inverse {s}x{s}, batch 256": sampler_cost(s, 256, reps) for s in ((8,) if quick else (8, 20))},
        "train_step": {},
        "reference_counts": {"sampler_calls_per_problem": 110, "train_calls_per_step": 6},
    }
    shapes = [(8, 256), (20, 256)] + ([] if quick else [(20, 2048)])
    for size, batch in shapes:
        res["train_step"][f"inverse {size}x{size}, batch {batch}"] = train_step_cost(size, batch, reps)
    res["wall_seconds"] = time.time() - t0
    return res


def markdown(r: dict) -> str:
    lines = ["## Core costs", "", "Sampler (10 levels, 5 inner steps), per problem:", "",
             "| setting | calls (ebmtool) | calls (release) | ms/problem (ebmtool) | ms/problem (release) "
             "| max answer diff |", "|---|---|---|---|---|---|"]
    for k, v in r["sampler"].items():
        lines.append(f"| {k} | {v['ebmtool']['calls_per_problem']} | {v['release']['calls_per_problem']} | "
                     f"{1e3 * v['ebmtool']['seconds_per_problem']:.3f} | {1e3 * v['release']['seconds_per_problem']:.3f}"
                     f" | {v['max_abs_answer_difference']:.1e} |")
    lines += ["", "Training step (IRED, fp32, Adam), median of repeats:", "",
              "| setting | network calls/step (release: 6) | ms/step |", "|---|---|---|"]
    for k, v in r["train_step"].items():
        lines.append(f"| {k} | {v['calls_per_step']} | {1e3 * v['seconds_per_step']:.1f} |")
    m = r.get("machine", {})
    lines += ["", f"Machine: {m.get('cores')} cores, torch {m.get('torch')}, {m.get('torch_threads')} threads. "
              f"Reproduce: `{r.get('command')}`."]
    return "\n".join(lines)
