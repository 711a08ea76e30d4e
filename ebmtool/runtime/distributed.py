"""Several processes, one run: torch.distributed under `torchrun` (gloo on CPU, NCCL on CUDA).

`torchrun --nproc-per-node N -m ebmtool train ...` starts N processes with the environment variables RANK,
LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT; `init_from_env` joins them into one process group. Without
those variables (or with WORLD_SIZE=1) nothing is initialised and every helper here is a no-op that returns its
input, so single-process code paths and multi-process ones are the same code.

Backends: gloo for CPU tensors; when CUDA is available, NCCL for CUDA tensors too ("cpu:gloo,cuda:nccl": each
collective goes to the backend of its tensor's device) and each process uses cuda:LOCAL_RANK. Small control
messages (flags, counts, a seed, rows of mined negatives) always travel as CPU tensors through gloo.

Training is data parallel with an explicit gradient all-reduce (`average_gradients`), not
DistributedDataParallel: the IRED step calls the network several times (denoising, negative descent, scoring)
and trains the denoiser through `torch.autograd.grad(create_graph=True)` (double back-propagation), which DDP's
bucketed reducer hooks handle badly (they fire during the inner autograd.grad and expect one forward per
backward). One flattened all-reduce after `backward()` and before clipping is exact and simple. See ebmtool.training.step
for how the global batch is split (every random draw is made for the whole batch, each process keeps its rows).

No Python object is serialised: `broadcast_json` sends JSON text, `gather_arrays` sends numeric arrays.
"""

from __future__ import annotations

import atexit
import datetime
import hashlib
import json
import os
import sys
import zlib

import numpy as np
import torch

from ebmtool.runtime.errors import InputError, RunError
import torch.distributed as dist

TIMEOUT_S = int(os.environ.get("EBMTOOL_DIST_TIMEOUT", "3600"))  # a collective waits this long for the others


def _dist():
    return dist


def env_world_size() -> int:
    """WORLD_SIZE set by torchrun (1 when absent)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise InputError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number") from None


def active() -> bool:
    """True inside a process group of more than one process."""
    if not torch.distributed.is_available():
        return False
    dist = _dist()
    return dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return _dist().get_world_size() if active() else 1


def rank() -> int:
    return _dist().get_rank() if active() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if active() else 0


def is_main() -> bool:
    """Rank 0 writes files and logs; the others compute and wait."""
    return rank() == 0


def init_from_env() -> bool:
    """Join the torchrun process group when WORLD_SIZE > 1 (idempotent). Returns whether it is active."""
    if active():
        return True
    n = env_world_size()
    if n <= 1:
        return False
    if not torch.distributed.is_available():
        raise RunError(f"WORLD_SIZE is {n} but this torch build has no torch.distributed; run one process")
    dist = _dist()
    if dist.is_initialized():
        return active()
    if not dist.is_gloo_available():
        raise RunError("torch.distributed has no gloo backend in this build; CPU processes need it")
    # NCCL joins only where CUDA exists; its communicators start at the first CUDA collective, so CPU processes
    # (--device cpu) on a GPU machine never touch it. The GPU itself is bound by `use_gpu`.
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=TIMEOUT_S))
    atexit.register(shutdown)
    return True


def use_gpu() -> torch.device:
    """This process's GPU, cuda:LOCAL_RANK: one process per GPU (refused, in one sentence, beyond that)."""
    lr = local_rank()
    if lr >= torch.cuda.device_count():
        raise InputError(f"process with LOCAL_RANK {lr} has no GPU of its own ({torch.cuda.device_count()} "
                         "visible); start at most one process per GPU, or train on the CPU with --device cpu")
    torch.cuda.set_device(lr)
    return torch.device("cuda", lr)


def shutdown() -> None:
    if torch.distributed.is_available() and _dist().is_initialized():
        _dist().destroy_process_group()


def exit_after_success() -> None:
    """End a process whose command succeeded under torchrun: wait for the others, take the process group down,
    flush, and leave with exit status 0 without the interpreter's teardown. In that teardown gloo's threads can
    abort a process whose work is done (SIGABRT, "terminate called without an active exception": seen twice in
    about seventy two-process CPU launches here), and torchrun would then report the whole job as failed."""
    barrier()
    shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _collective(fn, *args, **kwargs):
    """Run one collective; a peer that died (its own message says why) becomes one RunError sentence here."""
    try:
        return fn(*args, **kwargs)
    except RuntimeError as exc:  # gloo/NCCL raise RuntimeError (DistBackendError) when a peer is gone
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunError(f"process {rank()} lost contact with the other processes ({first}); another process "
                       "stopped first, see its message") from None


# ------------------------------------------------------------------------------------------------ collectives

def barrier() -> None:
    """Every process waits here until all have arrived (a CPU all-reduce: no device guessing)."""
    if active():
        _collective(_dist().all_reduce, torch.zeros(1))


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over processes (a new tensor; the input is left alone). Single process: the input."""
    if not active():
        return t
    out = t.detach().clone()
    _collective(_dist().all_reduce, out)
    return out


def pack_named(values: dict[str, float]) -> torch.Tensor:
    """`values` as one float64 vector: the values in sorted-name order, then a checksum of the names (crc32, exact
    in float64 when summed over up to 2**20 processes). The order is the names', never the dict's, so every
    process that holds the same names lays them out alike."""
    names = sorted(values)
    crc = zlib.crc32("\n".join(names).encode())
    return torch.tensor([float(values[n]) for n in names] + [float(crc)], dtype=torch.float64)


def all_reduce_named(values: dict[str, float]) -> dict[str, float]:
    """Each named value summed over the processes, by name, in one all-reduce (pack_named). Processes whose names
    differ (a field one of them lacks) raise RunError instead of summing misaligned values. Single process: the
    values themselves."""
    if not active():
        return dict(values)
    packed = pack_named(values)
    summed = all_reduce_sum(packed).tolist()
    if summed[-1] != world_size() * packed[-1].item():
        raise RunError(f"the processes combined differently named values (this process has "
                       f"{', '.join(sorted(values))}): they run different code or configurations")
    return dict(zip(sorted(values), summed[:-1]))


BUCKET = 1 << 24  # elements per flattened all-reduce (64 MiB in fp32)


def average_(tensors: list[torch.Tensor]) -> None:
    """In place: each tensor becomes its mean over processes. Flattened into few all-reduces by device/dtype."""
    if not active() or not tensors:
        return
    n = world_size()
    groups: dict[tuple, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    for ts in groups.values():
        bucket, size = [], 0
        for t in ts + [None]:
            if t is not None and (not bucket or size + t.numel() <= BUCKET):
                bucket.append(t)
                size += t.numel()
                continue
            flat = torch.cat([b.reshape(-1) for b in bucket])
            _collective(_dist().all_reduce, flat)
            flat /= n
            off = 0
            for b in bucket:
                b.copy_(flat[off:off + b.numel()].view_as(b))
                off += b.numel()
            if t is not None:
                bucket, size = [t], t.numel()


def average_gradients(params) -> None:
    """Replace each parameter's gradient by its mean over processes (after backward, before clipping).

    A parameter without a gradient on some process counts as a zero gradient there; one without a gradient on
    every process keeps None (the optimiser then skips it, as it would in one process).
    """
    if not active():
        return
    params = [p for p in params if p.requires_grad]
    has = torch.tensor([0.0 if p.grad is None else 1.0 for p in params])
    has = all_reduce_sum(has)
    grads = []
    for p, h in zip(params, has.tolist()):
        if h == 0:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    average_(grads)


def all_gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Concatenate equal-shaped tensors of all processes along dim 0, in rank order. Single process: t."""
    if not active():
        return t
    t = t.detach().contiguous()
    parts = [torch.empty_like(t) for _ in range(world_size())]
    _collective(_dist().all_gather, parts, t)
    return torch.cat(parts, dim=0)


def gather_arrays(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Concatenate each array of every process along axis 0, in rank order (row counts may differ; a process
    may contribute 0 rows). Every process gets the result. Numeric and bool arrays only, sent as CPU tensors."""
    if not active():
        return arrays
    out = {}
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        dtype = a.dtype
        t = torch.from_numpy(a.view(np.uint8) if dtype == np.bool_ else a)
        counts = all_reduce_sum(_one_hot(rank(), len(a))).long().tolist()
        width = max(counts)
        padded = torch.zeros((width, *t.shape[1:]), dtype=t.dtype)
        padded[:len(a)] = t
        parts = [torch.empty_like(padded) for _ in range(world_size())]
        _collective(_dist().all_gather, parts, padded)
        rows = torch.cat([p[:c] for p, c in zip(parts, counts)]).numpy()
        out[name] = rows.view(np.bool_) if dtype == np.bool_ else rows
    return out


def _one_hot(i: int, value: int) -> torch.Tensor:
    v = torch.zeros(world_size(), dtype=torch.float64)
    v[i] = value
    return v


def broadcast_json(obj):
    """Rank 0's value of a JSON-serialisable object, on every process (sent as JSON text, nothing else)."""
    if not active():
        return obj
    data = json.dumps(obj).encode() if is_main() else b""
    size = all_reduce_sum(torch.tensor([len(data)], dtype=torch.long))
    buf = torch.zeros(int(size[0]), dtype=torch.uint8)
    if is_main():
        buf[:] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    _collective(_dist().broadcast, buf, 0)
    return json.loads(bytes(buf.numpy()).decode())


def check_replicas(model) -> None:
    """Stop with one sentence if the processes' copies of the model differ (they must stay bit-identical)."""
    if not active():
        return
    h = hashlib.sha256()
    for v in model.state_dict().values():
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    mine = int.from_bytes(h.digest()[:6], "little")
    values = all_gather_rows(torch.tensor([mine], dtype=torch.long)).tolist()
    if len(set(values)) != 1:
        raise RunError(f"the processes' model copies differ (parameter hashes {values}); the gradient all-reduce "
                       "did not keep them identical")


def row_range(total: int) -> tuple[int, int]:
    """This process's rows [start, stop) of a batch of `total` rows split evenly (total divisible by N)."""
    n, r = world_size(), rank()
    b = total // n
    return r * b, (r + 1) * b


def block_range(count: int) -> tuple[int, int]:
    """This process's share [start, stop) of `count` items split into contiguous blocks (sizes differ by <= 1)."""
    n, r = world_size(), rank()
    base, extra = divmod(count, n)
    start = r * base + min(r, extra)
    return start, start + base + (1 if r < extra else 0)
