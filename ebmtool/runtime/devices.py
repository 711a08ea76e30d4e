"""Where and in what precision the network runs: `--device auto|cpu|cuda[:N]` and `--precision fp32|bf16`.

bf16 autocast is offered on CUDA only: there it runs the matrix products on tensor cores at several times the
fp32 rate, while on a CPU it is slower than fp32 and would only lose accuracy. Parameters, optimiser state,
noise and the losses' reductions stay fp32 either way (autocast's policy); only matmul inputs are rounded.
"""

from __future__ import annotations

import contextlib

import torch

from ebmtool.runtime.errors import InputError
from ebmtool.runtime import distributed as dist

PRECISIONS = ("fp32", "bf16")


def resolve_device(name: str) -> torch.device:
    """auto (CUDA when present), cpu, cuda or cuda:N; asking for CUDA without one is a user error, not a silent
    CPU run. Under torchrun each process uses cuda:LOCAL_RANK (cuda:N is refused there)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for, but no CUDA device is available")
    if name != "cpu" and not name.startswith("cuda"):
        raise InputError(f"unknown device {name!r}; use auto, cpu or cuda")
    if name.startswith("cuda") and dist.active():
        if name != "cuda":
            raise InputError(f"--device {name}: under torchrun each process uses its own GPU (cuda:LOCAL_RANK); "
                             "give --device cuda or auto")
        return dist.use_gpu()
    return torch.device(name)


def check_precision(precision: str, device: torch.device) -> None:
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; use {' or '.join(PRECISIONS)}")
    if precision == "bf16" and torch.device(device).type != "cuda":
        raise InputError("--precision bf16 runs on CUDA only; on a CPU use fp32 (bf16 is slower there and less "
                         "accurate)")


def autocast(device, precision: str):
    """The context the network's forward passes run in: bf16 autocast on CUDA, or nothing (fp32)."""
    check_precision(precision, torch.device(device))
    if precision == "bf16":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
