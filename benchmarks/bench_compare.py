"""Cost of `ebmtool compare`: 2 default MLPs (width 512) on 1,024 held-out problems, inverse 8x8 and 20x20.

Times the library call behind the command (`ebmtool.analysis.compare.compare`): loading and hashing the checkpoints,
sampling every problem with each model (10 levels x 7 network calls), the energy samples for the histograms, and
the statistics (2,000 bootstrap resamples, 10,000 sign flips). Evaluation cost does not depend on training, so the
checkpoints are built untrained through the library. Target: under a minute on 2 CPU cores.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch

from ebmtool.analysis.compare import compare
from ebmtool.training.state import RunState
from ebmtool.config import TrainConfig
from ebmtool.tasks.data import TrainingData
from ebmtool.training.loop import prepare


def _checkpoint(out: Path, size: int, seed: int) -> Path:
    cfg, _ = prepare(TrainConfig(task="inverse", size=size, width=512, seed=seed, train_size=256, batch_size=256,
                                 val_size=0, device="cpu"))
    st = RunState(cfg, TrainingData(cfg), torch.device("cpu"))
    out.mkdir(parents=True, exist_ok=True)
    st.save(out / "ckpt.safetensors")
    return out / "ckpt.safetensors"


def run(quick: bool = False) -> dict:
    sizes = [8] if quick else [8, 20]
    n = 256 if quick else 1024
    cases = []
    threads_before = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        for size, threads in [(s, t) for s in sizes for t in (1, 2)]:
            torch.set_num_threads(threads)
            a = _checkpoint(Path(tmp) / f"a{size}", size, 0)
            b = _checkpoint(Path(tmp) / f"b{size}", size, 1)
            load_before = os.getloadavg()[0]
            t0, c0 = time.perf_counter(), time.process_time()
            report, _ = compare([("a", [a]), ("b", [b])], n=n, device="cpu")
            total, cpu = time.perf_counter() - t0, time.process_time() - c0
            cases.append({"task": f"inverse {size}x{size}", "torch_threads": threads, "models": 2, "width": 512, "problems": n,
                          "seconds_total": round(total, 2), "seconds_evaluation": round(report["eval_seconds"], 2),
                          "seconds_statistics": round(total - report["eval_seconds"], 2),
                          "cpu_seconds": round(cpu, 2), "load_average_after": round(os.getloadavg()[0], 2),
                          "load_average_before": round(load_before, 2), "under_a_minute": total < 60})
    torch.set_num_threads(threads_before)
    return {"benchmark": "compare", "cases": cases}


def markdown(result: dict) -> str:
    lines = ["# compare: 2 models (MLP width 512) on held-out problems", "",
             f"Command: `{result.get('command', 'python -m benchmarks compare')}`; machine: {result.get('machine', {})}.",
             "",
             "| task | torch threads | problems | total (s) | evaluation (s) | statistics + loading (s) | CPU time (s, all threads) "
             "| load avg before / after | < 60 s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in result["cases"]:
        lines.append(f"| {c['task']} | {c['torch_threads']} | {c['problems']} | {c['seconds_total']} | {c['seconds_evaluation']} | "
                     f"{c['seconds_statistics']} | {c['cpu_seconds']} | {c['load_average_before']} / "
                     f"{c['load_average_after']} | {'yes' if c['under_a_minute'] else 'NO'} |")
    lines += ["", "Evaluation = sampling every problem with each model (70 network calls per problem) plus 256 "
              "energy samples per model; statistics = bootstrap (2,000) and sign-flip (10,000) draws. The load "
              "average is recorded because the 2-core machine is shared: a load above 2 inflates the times. CPU time / 2 is what the wall time would be on 2 idle cores with perfect "
              "threading."]
    return "\n".join(lines)
