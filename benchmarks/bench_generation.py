"""Generation speed of the discrete tasks: 10,000 connectivity graphs, shortest-path instances and
unique-solution Sudoku puzzles, each timed once in one process (the targets: graphs < 1 min, Sudoku < 3 min on
2 cores). Also records the realised Sudoku givens, since carving stops where no cell can be removed."""

from __future__ import annotations

import time

import numpy as np

from benchmarks.common import machine
from ebmtool.tasks.registry import get_task


def _time(name, n, harder=False):
    task = get_task(name)
    t0 = time.perf_counter()
    p = task.generate(n, "train", seed=0, harder=harder)
    return time.perf_counter() - t0, p


def run(quick: bool = False) -> dict:
    n = 500 if quick else 10_000
    out = {"command": "python -m benchmarks generation" + (" --quick" if quick else ""), "machine": machine(),
           "n": n, "tasks": {}}
    for name, harder in (("connectivity", False), ("connectivity", True), ("shortest-path", False),
                         ("shortest-path", True), ("sudoku", False), ("sudoku", True)):
        m = n if not (name == "sudoku" and harder) else n // 10  # the harder Sudoku split is an eval set
        seconds, p = _time(name, m, harder)
        row = {"n": m, "seconds": seconds, "per_second": m / seconds, "size": p.description["size"]}
        if name == "sudoku":
            givens = (p.mask.reshape(m, 81, 9)[:, :, 0] > 0).sum(1)
            row["givens_histogram"] = {int(k): int(v) for k, v in zip(*np.unique(givens, return_counts=True))}
            row["givens_reached_target"] = p.description["givens_reached_target"]
        out["tasks"][f"{name}{' harder' if harder else ''}"] = row
    return out


def markdown(result: dict) -> str:
    lines = [f"# Discrete-task generation ({result['machine']['cores']} cores, `{result['command']}`)", "",
             "| task | n | seconds | per second | size |", "|---|---|---|---|---|"]
    for k, r in result["tasks"].items():
        lines.append(f"| {k} | {r['n']} | {r['seconds']:.1f} | {r['per_second']:.0f} | {r['size']} |")
    for k, r in result["tasks"].items():
        if "givens_histogram" in r:
            lines += ["", f"{k}: realised givens {r['givens_histogram']}; target reached for "
                          f"{100 * r['givens_reached_target']:.1f} % (carving stops at a minimal puzzle)"]
    return "\n".join(lines) + "\n"
