"""Training data of a run: the fixed, seeded training set (or fresh draws per step) and the validation split.

A step's batch is a pure function of (seed, step): a slice of the epoch's seeded permutation of the fixed set,
or, with --train-size 0, problems drawn fresh from the (seed, step) stream.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import torch

from ebmtool.runtime import rng
from ebmtool.config import TrainConfig
from ebmtool.runtime.errors import InputError
from ebmtool.tasks.files import resolve_task, split_user_data
from ebmtool.tasks.problems import Task


class TrainingData:
    """The training problems (a fixed, seeded set, or fresh draws per step) and the validation set."""

    def __init__(self, cfg: TrainConfig):
        task, user = resolve_task(cfg.task, cfg.size)
        self.task: Task = task
        if user is not None:
            self.train, self.val = split_user_data(user)
            self.val = self.val.subset(cfg.val_size) if cfg.val_size else self.val
        else:
            self.train = task.generate(cfg.train_size, "train", seed=cfg.seed) if cfg.train_size else None
            self.val = task.generate(cfg.val_size, "val") if cfg.val_size else None
        self.cfg = cfg
        if task.needs_fixed_training_set and self.train is None:
            raise InputError(f"{task.name} needs a fixed training set (--train-size > 0): its puzzles are "
                             "generated once, not per step")
        if self.train is not None:
            self.fingerprint = self.train.fingerprint
        else:
            spec = json.dumps({"task": task.name, "size": task.size, "seed": cfg.seed, "online": True}, sort_keys=True)
            self.fingerprint = "online:" + hashlib.sha256(spec.encode()).hexdigest()

    def batch(self, step: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """The (x, y) batch of `step` (see batch_with_mask)."""
        return self.batch_with_mask(step, device)[:2]

    def batch_with_mask(self, step: int, device):
        """(x, y, mask or None) of `step`: a slice of the epoch's permutation (epoch order seeded by (seed, epoch))."""
        if self.train is not None:
            idx = self.batch_indices(step)
            mask = None if self.train.mask is None else torch.from_numpy(self.train.mask[idx]).to(device)
            return (torch.from_numpy(self.train.x[idx]).to(device), torch.from_numpy(self.train.y[idx]).to(device),
                    mask)
        stream = rng.numpy_stream(self.cfg.seed, *rng.FRESH_DATA, step)
        x, y = self.task.draw(stream, self.cfg.batch_size)
        return (torch.from_numpy(x.astype(np.float32)).to(device),
                torch.from_numpy(y.astype(np.float32)).to(device), None)

    def batch_indices(self, step: int) -> np.ndarray:
        """Rows of the fixed training set in the batch of `step`."""
        b, seed = self.cfg.batch_size, self.cfg.seed
        n = len(self.train)
        idx = []
        pos = step * b
        while len(idx) < b:
            epoch, off = divmod(pos, n)
            perm = torch.randperm(n, generator=rng.step_generator(seed, epoch, rng.EPOCH_ORDER)).numpy()
            take = min(b - len(idx), n - off)
            idx.extend(perm[off:off + take])
            pos += take
        return np.asarray(idx)

    def dims(self) -> tuple[int, int]:
        """(x_dim, y_dim) of the training problems (the FLOP rule of a non-MLP network needs one row's shape)."""
        p = self.train if self.train is not None else self.val
        if p is not None:
            return p.x.shape[1], p.y.shape[1]
        return self.task.x_dim, self.task.y_dim
