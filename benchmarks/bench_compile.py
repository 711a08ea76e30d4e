"""Where `ebmtool train --compile` pays on this machine: compilation time, step time after it, and the run length
from which a compiled run finishes first.

Each arm runs in a fresh process (1 thread) with an empty inductor cache of its own (TORCHINDUCTOR_CACHE_DIR in a
temporary folder: the cold compile a first `--compile` run pays), the arms alternating round by round. Times are
CPU seconds of the process and the children it waited for (the C++ compiler; TORCHINDUCTOR_COMPILE_THREADS=1
keeps inductor's compilation in the process), so a machine whose cores other work keeps busy measures the work,
not the wait; on an idle machine they are the wall times of this one-thread work:
- the training step (the loop's `train_step`, ired K = 1, width 512): seconds of the first step (with --compile:
  the compilation of the training graphs, forward and backward), then the median of STEPS further steps after
  a warm-up (every shape and gradient mode the loop meets in a step is compiled by then);
- the validation sampler (`evaluate`'s sampler, 256 problems): its first call (its own compilation: no-grad,
  one level) and the median after;
- break-even: (first-step and first-sample overhead of the compiled arm) / (eager step - compiled step), the
  number of steps from which --compile finishes first, where the compiled step is faster at all.

Settings: the CPU recipe's step (inverse 8x8, batch 256) and the 20x20 one at batch 256. From the measured parts the
markdown gives the time of N steps plus one validation pass, first steps included, for N = 300, 1,500, 20,000.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = [{"name": "inverse 8x8, batch 256, 1 thread (the CPU recipe's step)", "size": 8, "batch": 256},
            {"name": "inverse 20x20, batch 256, 1 thread", "size": 20, "batch": 256}]
STEPS, ROUNDS = 30, 1
RUN_LENGTHS = (300, 1500, 20000)


def cpu_seconds() -> float:
    """CPU seconds of this process and of the children it has waited for (the compiler)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def probe(setting: dict, compiled: bool, steps: int) -> dict:
    """One process's measurements of one arm."""
    import torch

    from benchmarks.common import setup_training
    from ebmtool.method.diffusion import SamplerSettings, cosine_schedule, sample
    from ebmtool.method.models import compile_explicit
    from ebmtool.training import draw_batch, train_step

    torch.set_num_threads(1)
    _, data, st = setup_training(setting["size"], setting["batch"], 512)
    if compiled:
        compile_explicit(st.model)

    def step():
        t0 = cpu_seconds()
        train_step(st, draw_batch(st, st.step % 8))
        return cpu_seconds() - t0

    first = step()
    times = [step() for _ in range(steps + 5)][5:]
    x = data.batch_with_mask(0, "cpu")[0][:256]
    sched, d = cosine_schedule(), data.task.y_dim

    def samp():
        t0 = cpu_seconds()
        with torch.no_grad():
            sample(st.model, x, sched, d, SamplerSettings(), torch.Generator().manual_seed(0))
        return cpu_seconds() - t0

    first_sample = samp()
    return {"first_step_s": first, "step_s": statistics.median(times), "first_sample_s": first_sample,
            "sample_s": statistics.median(samp() for _ in range(3))}


def _probe_in(setting: dict, compiled: bool, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
               "TORCHINDUCTOR_CACHE_DIR": cache, "TORCHINDUCTOR_COMPILE_THREADS": "1"}
        out = subprocess.run([sys.executable, __file__, json.dumps(setting), "1" if compiled else "0", str(steps)],
                             cwd=ROOT, env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"compile probe failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(quick: bool = False) -> dict:
    t0, load0 = time.time(), os.getloadavg()
    steps, rounds = (10, 1) if quick else (STEPS, ROUNDS)
    sizes = os.environ.get("EBMTOOL_BENCH_COMPILE_SIZES")  # e.g. "8": only the settings of these sizes
    res = {"steps_timed": steps, "rounds": rounds, "settings": {},
           "env": f"EBMTOOL_BENCH_COMPILE_SIZES={sizes} " if sizes else ""}
    chosen = [s for s in SETTINGS if sizes is None or str(s["size"]) in sizes.split(",")]
    for setting in chosen[:1] if quick else chosen:
        per = {"eager": [], "compiled": []}
        for _ in range(rounds):
            for arm in per:
                per[arm].append(_probe_in(setting, arm == "compiled", steps))
        med = {arm: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for arm, rs in per.items()}
        e, c = med["eager"], med["compiled"]
        overhead = (c["first_step_s"] - e["first_step_s"]) + (c["first_sample_s"] - e["first_sample_s"])
        saved = e["step_s"] - c["step_s"]
        med["break_even_steps"] = overhead / saved if saved > 0 else None
        med["overhead_s"] = overhead
        res["settings"][setting["name"]] = med
        print(f"  {setting['name']} done", file=sys.stderr)
    res.update(load_average_at_start=load0, load_average_at_end=os.getloadavg(), wall_seconds=time.time() - t0)
    return res


def _total(a: dict, n: int) -> float:
    """Seconds of n steps and one validation pass, the first step and first sampler call included."""
    return a["first_step_s"] + (n - 1) * a["step_s"] + a["first_sample_s"]


def markdown(r: dict) -> str:
    lines = ["## `--compile` on this CPU (compile_explicit, inductor, cold cache per process)", "",
             f"CPU seconds (see the module docstring). Medians over {r['rounds']} round(s) of fresh processes, eager "
             "and compiled alternating; step = median "
             f"of {r['steps_timed']} steps after the first and 5 more; sampler = the validation sampler, 256 "
             "problems.", "",
             "| setting | arm | first step s | step ms | steps/s | first sampler call s | sampler s |",
             "|---|---|---|---|---|---|---|"]
    for name, m in r["settings"].items():
        for arm in ("eager", "compiled"):
            a = m[arm]
            lines.append(f"| {name} | {arm} | {a['first_step_s']:.2f} | {1e3 * a['step_s']:.1f} | "
                         f"{1 / a['step_s']:.1f} | {a['first_sample_s']:.2f} | {a['sample_s']:.3f} |")
        be = m["break_even_steps"]
        totals = ", ".join(f"{n:,}: {_total(m['eager'], n):.0f} / {_total(m['compiled'], n):.0f} s"
                           for n in RUN_LENGTHS)
        lines.append(f"| {name} | compiled: overhead, break-even | {m['overhead_s']:.1f} s more before the first "
                     f"steps | {1e3 * (m['eager']['step_s'] - m['compiled']['step_s']):+.1f} ms saved per step | | "
                     + (f"pays after {be:,.0f} steps" if be is not None else "never pays (no faster step)") + " | |")
        lines.append(f"| {name} | N steps + one validation pass, eager / compiled | {totals} | | | | |")
    lines += ["", f"Load average {r['load_average_at_start'][0]:.2f} at the start, "
              f"{r['load_average_at_end'][0]:.2f} at the end; {r['wall_seconds']:.0f} s. Reproduce: "
              f"`{r.get('env', '')}python -m benchmarks compile`."]
    return "\n".join(lines)


if __name__ == "__main__":  # a probe: python bench_compile.py SETTING_JSON COMPILED STEPS
    sys.path[0] = os.environ.get("PYTHONPATH", sys.path[0])
    print(json.dumps(probe(json.loads(sys.argv[1]), sys.argv[2] == "1", int(sys.argv[3]))))
