"""Compute, counted: network rows from the model's call counter, converted to FLOPs by one stated rule.

Only matrix products are counted. For the MLP energy, F = 2 * (weights of the Linear layers that run on every
row: fc1..fc4) per row; its time MLP and FiLM layers run once per distinct level in a call (at most 10 rows,
under 1 % of a call at batch >= 256) and are left out; F1 = 2 * (fc1's weights). Other networks' F is the
forward matrix-product FLOPs of one row as torch's FlopCounterMode counts them, and F1 = 0. Per row:
    forward-only call (scoring, the last descent step)              F
    call with an input gradient (descent steps, the sampler)        2F   (forward + the input-only backward;
                                                                          no weight gradients are computed)
    training's scoring call (forward, then backward to weights)     3F - F1  (fc1's input needs no gradient)
    training's denoising call (input gradient with create_graph,
        then the parameter backward through it: double backward)     6F

Rows of each kind come from the counter (`rows`, `grad_rows`), never from a formula, so a source that evaluates
more candidates or takes more descent steps is charged for exactly what it ran. The rule is checked against
torch.profiler's matmul count in the tests.
"""

from __future__ import annotations

import math

import torch
from torch.utils.flop_counter import FlopCounterMode


def flop_rule(model, x_dim: int | None = None, y_dim: int | None = None) -> dict[str, float]:
    """{"F": forward FLOPs per row, "F1": the first layer's share} (see the module docstring). Networks other
    than the MLP are probed with one row of the problem's shape (x_dim, y_dim): a graph network's cost depends
    on the node count, which it does not know itself."""
    if getattr(model, "dims", {}).get("arch") == "mlp":
        per_row = [model.fc1, model.fc2, model.fc3, model.fc4]
        return {"F": 2.0 * sum(m.weight.numel() for m in per_row), "F1": 2.0 * model.fc1.weight.numel()}
    if x_dim is None or y_dim is None:
        raise ValueError(f"the FLOP rule of a {model.dims.get('arch')} network needs the problem's x_dim and y_dim")
    return {"F": _counted_forward_flops(model, x_dim, y_dim), "F1": 0.0}


def _counted_forward_flops(model, x_dim: int, y_dim: int) -> float:
    """Forward FLOPs of one row of `model`, by torch's FlopCounterMode (matrix products and convolutions)."""
    p = next(model.parameters())
    x = torch.zeros(1, x_dim, device=p.device)
    y = torch.zeros(1, y_dim, device=p.device)
    t = torch.zeros(1, dtype=torch.long, device=p.device)
    counter = model.counter
    saved = (counter.calls, counter.rows, counter.grad_calls, counter.grad_rows)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x, y, t)
    counter.calls, counter.rows, counter.grad_calls, counter.grad_rows = saved  # the probe is not the run's work
    return float(fc.get_total_flops())


def counted_flops(rule: dict, rows: int, grad_rows: int, *, denoise_rows: int = 0, train_score_rows: int = 0) -> float:
    """FLOPs of `rows` counted network rows, `grad_rows` of them with an input gradient; `denoise_rows` of the
    gradient rows are training's denoising call (6F) and `train_score_rows` of the forward-only rows are
    training's scoring call (3F - F1)."""
    f, f1 = rule["F"], rule["F1"]
    plain_grad = grad_rows - denoise_rows
    forward_only = rows - grad_rows - train_score_rows
    if plain_grad < 0 or forward_only < 0:
        raise ValueError(f"counted rows ({rows}, {grad_rows} with a gradient) do not fit the stated call kinds")
    return 6 * f * denoise_rows + 2 * f * plain_grad + f * forward_only + (3 * f - f1) * train_score_rows


class ComputeMeter:
    """FLOPs of the network work done between `start()` and `flops(...)`, read off the model's counter."""
    def __init__(self, model, x_dim: int | None = None, y_dim: int | None = None):
        self.counter = model.counter
        self.rule = flop_rule(model, x_dim, y_dim)
        self._rows = self._grad_rows = 0

    def start(self) -> None:
        self._rows, self._grad_rows = self.counter.rows, self.counter.grad_rows

    def flops(self, *, denoise_rows: int = 0, train_score_rows: int = 0) -> float:
        return counted_flops(self.rule, self.counter.rows - self._rows, self.counter.grad_rows - self._grad_rows,
                             denoise_rows=denoise_rows, train_score_rows=train_score_rows)


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
