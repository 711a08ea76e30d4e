"""Energy networks. One convention: forward(x, y, t) returns a per-example scalar energy (B,), lower = better.

The MLP is the release's continuous-task EBM (ired-algorithm.md §6.1): width 512, three hidden layers with
swish, FiLM time conditioning on layers 2 and 3, and energy = sum of squares of a d_out-dimensional output.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ebmtool.diffusion import CallCounter


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """[sin(t f), cos(t f)] with f_k = exp(-ln(1e4) k / (half - 1)); t is the raw integer level 0..9 (§1)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / (half - 1))
    args = t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


class TimeMLP(nn.Module):
    """sinusoidal(dim) -> Linear -> GELU -> Linear."""

    def __init__(self, dim: int = 128, hidden: int = 128):
        super().__init__()
        self.dim = dim
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, t):
        return self.fc2(F.gelu(self.fc1(sinusoidal_embedding(t, self.dim))))


class EnergyMLP(nn.Module):
    """E(x, y, t) = || W4 h3 ||^2 with h_l = swish(W_l h_{l-1} (1 + gamma_l) + beta_l) on layers 2 and 3."""

    def __init__(self, x_dim: int, y_dim: int, width: int = 512, time_dim: int = 128):
        super().__init__()
        self.dims = {"arch": "mlp", "x_dim": x_dim, "y_dim": y_dim, "width": width, "time_dim": time_dim}
        self.fc1 = nn.Linear(x_dim + y_dim, width)
        self.fc2 = nn.Linear(width, width)
        self.fc3 = nn.Linear(width, width)
        self.fc4 = nn.Linear(width, y_dim)
        self.time = TimeMLP(time_dim, time_dim)
        self.film2 = nn.Linear(time_dim, 2 * width)
        self.film3 = nn.Linear(time_dim, 2 * width)
        self.counter = CallCounter()

    def forward(self, x, y, t):
        self.counter.calls += 1
        self.counter.rows += y.shape[0]
        temb = self.time(t)
        gain2, bias2 = self.film2(temb).chunk(2, dim=-1)
        gain3, bias3 = self.film3(temb).chunk(2, dim=-1)
        h = F.silu(self.fc1(torch.cat([x, y], dim=-1)))
        h = F.silu(self.fc2(h) * (1 + gain2) + bias2)
        h = F.silu(self.fc3(h) * (1 + gain3) + bias3)
        return self.fc4(h).pow(2).sum(dim=-1)


def build_model(dims: dict) -> nn.Module:
    """Rebuild a network from the `dims` recorded in a checkpoint."""
    if dims.get("arch") == "mlp":
        return EnergyMLP(dims["x_dim"], dims["y_dim"], dims["width"], dims["time_dim"])
    raise ValueError(f"unknown model architecture {dims.get('arch')!r}")


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
