"""The state of a run and its files: EMA, model + optimiser + counters (RunState), the checkpoint written from
and read into it, the run directory's lock, and the step-numbered snapshots.
"""

from __future__ import annotations

import copy
import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from ebmtool import __version__
from ebmtool.runtime import distributed as dist
from ebmtool.io.artifacts import atomic_path, code_version, environment
from ebmtool.io.checkpoints import Checkpoint, save_checkpoint
from ebmtool.method.compute import RULE, ComputeMeter, check_same_rule, combined_rule, rule_label
from ebmtool.config import TrainConfig
from ebmtool.tasks.data import TrainingData
from ebmtool.runtime.errors import InputError
from ebmtool.io.locks import pid_lock
from ebmtool.method.models import build_model
from ebmtool.training.losses import Objective


class EMA:
    """ema-pytorch's schedule (0.8.3, tested against it bit for bit) with beta 0.995, update_every 10.

    Update call s (0-based): nothing unless s % every == 0; a plain copy while s <= start (100); then
    decay = min(beta, 1 - (1 + s - start)^(-2/3)), computed in float32 as ema-pytorch does, and
    ema <- lerp(ema, theta, 1 - decay). Matching it exactly keeps the EMA weights the reference's.
    """

    def __init__(self, model, beta=0.995, every=10, start=100):
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.beta, self.every, self.start = beta, every, start
        self.updates = 0

    def decay(self, s: int) -> float:
        """The decay of update call s > start: ema-pytorch counts the call before computing it (hence s + 1)
        and evaluates its power in float32 (a step tensor clamped to a float)."""
        epoch = (torch.tensor(s + 1) - self.start - 1).clamp(min=0.0)
        return (1 - (1 + epoch) ** (-2 / 3)).clamp(min=0.0, max=self.beta).item()

    @torch.no_grad()
    def update(self, model):
        s = self.updates
        self.updates += 1
        if s % self.every:
            return
        if s <= self.start:
            for e, p in zip(self.model.parameters(), model.parameters()):
                e.copy_(p.detach())
            return
        weight = 1.0 - self.decay(s)
        for e, p in zip(self.model.parameters(), model.parameters()):
            e.lerp_(p.detach(), weight)


def ema_first_average(every: int, start: int) -> int:
    """The first EMA.update call that averages (calls up to `start` copy the raw weights): the first multiple of
    `every` past `start`. A run that stops at or before it has EMA weights that are a copy of early raw ones."""
    return (start // every + 1) * every


def rng_meta() -> dict[str, str]:
    """The global Python and numpy RNG states, as checkpoint metadata (restored on resume)."""
    py = random.getstate()
    np_state = np.random.get_state()
    return {
        "ebmtool.rng_python": json.dumps([py[0], list(py[1]), py[2]]),
        "ebmtool.rng_numpy": json.dumps([np_state[0], np_state[1].tolist(), *[float(v) if isinstance(v, float)
                                                                              else int(v) for v in np_state[2:]]]),
    }


def restore_rng(ckpt: Checkpoint):
    """Put back the global torch, Python and numpy RNG states a checkpoint recorded."""
    if "rng/torch_cpu" in ckpt.tensors:
        torch.set_rng_state(ckpt.tensors["rng/torch_cpu"])
    if "ebmtool.rng_python" in ckpt.meta:
        v, state, gauss = json.loads(ckpt.meta["ebmtool.rng_python"])
        random.setstate((v, tuple(state), gauss))
    if "ebmtool.rng_numpy" in ckpt.meta:
        name, keys, pos, has_gauss, cached = json.loads(ckpt.meta["ebmtool.rng_numpy"])
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))



def checkpoint_compute(ckpt: Checkpoint) -> float | None:
    """The cumulative training FLOPs a checkpoint records (None for checkpoints written before compute was
    counted)."""
    v = ckpt.meta.get("ebmtool.compute_flops")
    return None if v is None else float(json.loads(v))


def checkpoint_compute_rule(ckpt: Checkpoint) -> str:
    """The label of the rule a checkpoint's compute was counted under (ebmtool.method.compute: "2", "1+2" for a run
    resumed across rules; "1" for checkpoints written before versions were recorded)."""
    return rule_label(ckpt.meta.get("ebmtool.compute_rule"))


def checkpoint_budget(ckpt: Checkpoint) -> float | None:
    """A checkpoint's compute as a new run's budget (--budget-of): None where it records none; refused (exit 2)
    where it was counted under another rule than the one the new run is counted under."""
    flops = checkpoint_compute(ckpt)
    if flops is not None:
        check_same_rule((f"{ckpt.path}'s compute", checkpoint_compute_rule(ckpt)), ("this run's", RULE))
    return flops


def run_is_complete(ckpt: Checkpoint, cfg: TrainConfig) -> bool:
    """Whether a run's checkpoint has reached its end: its steps, or its compute budget."""
    if ckpt.step >= cfg.steps:
        return True
    return cfg.budget_flops is not None and (checkpoint_compute(ckpt) or 0.0) >= cfg.budget_flops



class RunLock:
    """An exclusive lock on a run directory while a process trains in it (flock: released if the process dies).

    A second process that tries to train in the same directory exits with one sentence naming the first's pid."""

    def __init__(self, out_dir: Path):
        self.path = Path(out_dir) / ".lock"
        self.fd: int | None = None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = pid_lock(self.path, f"{self.path.parent} is in use: process {{pid}} is training in it")
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)  # closing releases the lock; the file stays (removing it would race a new holder)
            self.fd = None


class RunState:
    """Model, EMA, optimiser, step and metric rows: everything a checkpoint holds."""

    def __init__(self, cfg: TrainConfig, data: TrainingData, device):
        self.cfg, self.data, self.device = cfg, data, device
        torch.manual_seed(cfg.seed)  # initial weights come from the seed too
        # the task's reference architecture; --width/--blocks scale it
        self.model = build_model(data.task.model_dims(cfg.width, cfg.blocks, cfg.time_dim)).to(device)
        self.ema = EMA(self.model, cfg.ema_beta, cfg.ema_every, cfg.ema_start)
        self.meter = ComputeMeter(self.model, *data.dims())
        self.objective: Objective | None = None  # the loss's fixed inputs, set by the loop once the run is ready
        # fused: torch's one-kernel Adam (CPU and CUDA), about 3x faster than the per-tensor loop; the same
        # update up to float rounding
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=True)
        self.step = 0
        self.compute = 0.0  # cumulative FLOPs (ebmtool.method.compute), inherited ones included
        self.compute_rule = RULE  # the rule(s) `compute` was counted under ("1+2": resumed across rules)
        self.last_step_flops = 0.0  # the previous step's, to see a budget's last step coming
        self.rows: list[dict] = []
        self.eval_rows: list[dict] = []
        self.skipped = 0

    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {f"model/{k}": v for k, v in self.model.state_dict().items()}
        tensors.update({f"ema/{k}": v for k, v in self.ema.model.state_dict().items()})
        for i, st in self.opt.state_dict()["state"].items():
            for k, v in st.items():
                tensors[f"optim/{i}/{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
        tensors["rng/torch_cpu"] = torch.get_rng_state()
        return tensors

    def save(self, path: Path):
        cfg = self.cfg
        meta = {
            "ebmtool.version": __version__,
            "ebmtool.task": cfg.task if self.data.task.path else self.data.task.name,
            "ebmtool.task_size": json.dumps(None if self.data.task.path else self.data.task.size),
            "ebmtool.config": json.dumps(cfg.to_dict(), sort_keys=True),
            "ebmtool.config_sha256": cfg.checksum(),
            "ebmtool.model": json.dumps(self.model.dims, sort_keys=True),
            "ebmtool.step": str(self.step),
            "ebmtool.compute_flops": json.dumps(self.compute),
            "ebmtool.compute_rule": self.compute_rule,
            "ebmtool.seed": str(cfg.seed),
            "ebmtool.data_fingerprint": self.data.fingerprint,
            "ebmtool.optim_groups": json.dumps(self.opt.state_dict()["param_groups"]),
            "ebmtool.ema_updates": str(self.ema.updates),
            "ebmtool.skipped_steps": str(self.skipped),
            "ebmtool.world_size": str(dist.world_size()),  # processes that trained the last steps (torchrun)
            "ebmtool.environment": json.dumps(environment(self.device), sort_keys=True),
            **{f"ebmtool.{k}": v for k, v in code_version().items() if k != "ebmtool_version"},
            **rng_meta(),
        }
        save_checkpoint(path, self.checkpoint_tensors(), meta)

    def load(self, ckpt: Checkpoint, full: bool):
        """full=True: resume (everything); False: --init (weights only, as EMA too)."""
        try:
            self.model.load_state_dict(ckpt.group("model"), strict=True)
            if full:
                self.ema.model.load_state_dict(ckpt.group("ema"), strict=True)
            else:
                self.ema.model.load_state_dict(ckpt.group("model"), strict=True)
        except RuntimeError as exc:
            raise InputError(f"{ckpt.path}: weights do not fit this model ({str(exc).splitlines()[0]})") from None
        if not full:
            return
        groups = json.loads(ckpt.meta["ebmtool.optim_groups"])
        for g in groups:  # how the update is computed is this code's choice, not the checkpoint's
            g.update({k: self.opt.param_groups[0][k] for k in ("fused", "foreach") if k in self.opt.param_groups[0]})
        state = {}
        for k, v in ckpt.group("optim").items():
            i, name = k.split("/", 1)
            state.setdefault(int(i), {})[name] = v.to(self.device) if name != "step" else v
        self.opt.load_state_dict({"state": state, "param_groups": groups})
        self.ema.updates = int(ckpt.meta["ebmtool.ema_updates"])
        self.skipped = int(ckpt.meta.get("ebmtool.skipped_steps", "0"))
        self.step = ckpt.step
        self.compute = checkpoint_compute(ckpt) or 0.0
        if checkpoint_compute(ckpt) is not None:  # the steps before were counted under the checkpoint's rule
            self.compute_rule = combined_rule(checkpoint_compute_rule(ckpt), RULE)
        restore_rng(ckpt)


SNAPSHOT_RE = re.compile(r"^ckpt-step(\d+)\.safetensors$")


def snapshot_path(out_dir: Path, step: int) -> Path:
    """The step-numbered snapshot beside ckpt.safetensors (--keep N)."""
    return Path(out_dir) / f"ckpt-step{step:07d}.safetensors"


def write_snapshot(ckpt_path: Path, step: int, keep: int) -> list[Path]:
    """Copy the latest checkpoint to a step-numbered snapshot (atomically), then prune to the newest `keep`."""
    with atomic_path(snapshot_path(ckpt_path.parent, step)) as tmp:
        shutil.copyfile(ckpt_path, tmp)
    return prune_snapshots(ckpt_path.parent, keep, step)


def prune_snapshots(out_dir: Path, keep: int, upto_step: int) -> list[Path]:
    """Delete all but the newest `keep` snapshots at or before `upto_step`; returns the deleted paths.

    Snapshots after `upto_step` (left by a run that was later resumed from an earlier snapshot) are not touched.
    """
    found = []
    for p in Path(out_dir).iterdir():
        m = SNAPSHOT_RE.match(p.name)
        if m and int(m.group(1)) <= upto_step:
            found.append((int(m.group(1)), p))
    found.sort()
    doomed = [p for _, p in found[:max(0, len(found) - keep)]]
    for p in doomed:
        p.unlink()
    return doomed


