"""Compute, counted: network rows from the model's call counter, converted to FLOPs by one stated rule.

Compute is the matrix-product work the implementation actually executes (tests/test_bench_common.py and
tests/test_compute_budget.py hold the rule to torch.profiler's count within 3 %). A cheaper implementation of the
same mathematics lowers the count, so the rule has a version (RULE_VERSION), recorded in every artifact that
carries a count; counts made under different versions are never matched or compared (`check_same_rule`: compare,
--budget-of). Artifacts written before versions were recorded were counted under version 1. A run resumed (or
started from a checkpoint or negatives file) across versions adds parts counted under each, and its label says
so ("1+2", `combined_rule`), so it matches only runs with the same mixture.

Rule 2 (this code). Only matrix products are counted. For the MLP energy the condition x is projected once per
batch of calls that share it (`diffusion.condition`: x's share of the first layer, Fx = 2 * width * x_dim per
row), and every network call then costs, per row, F = 2 * (fc1's y columns + fc2..fc4 weights); F1 = 2 * (fc1's
y columns). Its time MLP and FiLM layers run once per distinct level in a call (at most 10 rows, under 1 % of a
call at batch >= 256) and are left out. Other networks have no projection (Fx = 0): F is the forward
matrix-product FLOPs of one row as torch's FlopCounterMode counts them, and F1 = 0. Per row:
    condition projected without gradients (sampler, descent, mining)      Fx
    condition projected for training (forward, then its weight gradient)  2 Fx
    forward-only call (scoring, the last descent step)                     F
    call with an input gradient (descent steps, the sampler)               2F   (forward + the input-only backward
                                                                                 through fc1's y columns)
    training's scoring call (forward, then backward to weights)            3F - F1  (fc1's input needs no gradient)
    training's denoising call (input gradient with create_graph,
        then the parameter backward through it)                            6F - F1  (y is no leaf: no gradient of
                                                                                 fc1's input; other networks' double
                                                                                 backward: 6F)
Rule 1 (until 2026-12): no projection; F and F1 over all of fc1's columns; the denoising call 6F.

Rows of each kind come from the counter (`rows`, `grad_rows`, `proj_rows`, `proj_grad_rows`), never from a
formula, so a source that evaluates more candidates or takes more descent steps is charged for exactly what it
ran.
"""

from __future__ import annotations

import math

import torch
from torch.utils.flop_counter import FlopCounterMode

from ebmtool.runtime.errors import InputError

RULE_VERSION = 2  # the counting rule of this code (module docstring); artifacts without a version: 1


def flop_rule(model, x_dim: int | None = None, y_dim: int | None = None) -> dict[str, float]:
    """{"F": FLOPs per row of a call, "F1": the first layer's share of it, "Fx": a condition row's projection}
    (see the module docstring). Networks other than the MLP are probed with one row of the problem's shape
    (x_dim, y_dim): a graph network's cost depends on the node count, which it does not know itself."""
    if getattr(model, "dims", {}).get("arch") == "mlp":
        fc1_y = model.fc1.weight.shape[0] * model.dims["y_dim"]
        per_row = fc1_y + sum(m.weight.numel() for m in (model.fc2, model.fc3, model.fc4))
        return {"F": 2.0 * per_row, "F1": 2.0 * fc1_y, "Fx": 2.0 * (model.fc1.weight.numel() - fc1_y)}
    if x_dim is None or y_dim is None:
        raise ValueError(f"the FLOP rule of a {model.dims.get('arch')} network needs the problem's x_dim and y_dim")
    return {"F": _counted_forward_flops(model, x_dim, y_dim), "F1": 0.0, "Fx": 0.0}


def _counted_forward_flops(model, x_dim: int, y_dim: int) -> float:
    """Forward FLOPs of one row of `model`, by torch's FlopCounterMode (matrix products and convolutions)."""
    p = next(model.parameters())
    x = torch.zeros(1, x_dim, device=p.device)
    y = torch.zeros(1, y_dim, device=p.device)
    t = torch.zeros(1, dtype=torch.long, device=p.device)
    counter = model.counter
    saved = dict(vars(counter))
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x, y, t)
    vars(counter).update(saved)  # the probe is not the run's work
    return float(fc.get_total_flops())


def counted_flops(rule: dict, rows: int, grad_rows: int, *, denoise_rows: int = 0, train_score_rows: int = 0,
                  proj_rows: int = 0, proj_grad_rows: int = 0) -> float:
    """FLOPs of `rows` counted network rows, `grad_rows` of them with an input gradient; `denoise_rows` of the
    gradient rows are training's denoising call (6F - F1) and `train_score_rows` of the forward-only rows are
    training's scoring call (3F - F1); `proj_rows` condition rows projected, `proj_grad_rows` of them for
    training (2 Fx)."""
    f, f1, fx = rule["F"], rule["F1"], rule.get("Fx", 0.0)
    plain_grad = grad_rows - denoise_rows
    forward_only = rows - grad_rows - train_score_rows
    if plain_grad < 0 or forward_only < 0 or not 0 <= proj_grad_rows <= proj_rows:
        raise ValueError(f"counted rows ({rows}, {grad_rows} with a gradient) do not fit the stated call kinds")
    return (6 * f - f1) * denoise_rows + 2 * f * plain_grad + f * forward_only + (3 * f - f1) * train_score_rows \
        + fx * (proj_rows + proj_grad_rows)


COUNTED = ("rows", "grad_rows", "proj_rows", "proj_grad_rows")


class ComputeMeter:
    """FLOPs of the network work done between `start()` and `flops(...)`, read off the model's counter."""
    def __init__(self, model, x_dim: int | None = None, y_dim: int | None = None):
        self.counter = model.counter
        self.rule = flop_rule(model, x_dim, y_dim)
        self._start = dict.fromkeys(COUNTED, 0)

    def start(self) -> None:
        self._start = {k: getattr(self.counter, k) for k in COUNTED}

    def flops(self, *, denoise_rows: int = 0, train_score_rows: int = 0) -> float:
        done = {k: getattr(self.counter, k) - v for k, v in self._start.items()}
        return counted_flops(self.rule, done["rows"], done["grad_rows"], denoise_rows=denoise_rows,
                             train_score_rows=train_score_rows, proj_rows=done["proj_rows"],
                             proj_grad_rows=done["proj_grad_rows"])


RULE = str(RULE_VERSION)  # the label this code records


def rule_label(recorded) -> str:
    """The rule label of an artifact's recorded value: "2" (one rule), "1+2" (a run resumed, or started from
    files, across rules: its count adds parts counted under each), or "1" where nothing is recorded (written
    before versions were)."""
    return "1" if recorded is None else str(recorded)


def combined_rule(*labels: str) -> str:
    """The label of a count that adds counts of these labels: "1+2" for "1" and "2"; "2" for "2" and "2"."""
    return "+".join(str(v) for v in sorted({int(v) for label in labels for v in str(label).split("+")}))


def check_same_rule(a: tuple[str, str], b: tuple[str, str]) -> None:
    """Refuse (InputError, exit 2) to match or compare two counts, each (what, rule label), that were made under
    different rules; the sentence names both."""
    (what_a, va), (what_b, vb) = a, b
    if va != vb:
        raise InputError(f"{what_a} was counted under compute rule {va} and {what_b} under rule {vb}: compute "
                         "counted under different rules cannot be matched or compared")


def format_flops(v: float | None) -> str:
    """3.10e13, or n/a for unknown compute."""
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.3g}" if v < 1e4 else f"{v:.2e}"


def parse_flops(text: str) -> float:
    """A FLOP count from the command line: '3.1e13' or '31000000000000'; positive and finite."""
    try:
        v = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number of FLOPs (e.g. 3.1e13)") from None
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"a compute budget must be a positive number of FLOPs, got {text}")
    return v
