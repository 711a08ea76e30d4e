"""Every seeded random stream of ebmtool, each with a named purpose.

A stream is a pure function of (seed, purpose, index): a step's draws depend on nothing that happened before
it, so a resumed run replays exactly what an uninterrupted one does, and evaluation or diagnostics can never
shift the training stream. The purpose numbers are part of the numbers a seed produces: never renumber them.
"""

from __future__ import annotations

import numpy as np
import torch

# torch streams, indexed by step (or epoch, or mining batch)
STEP = 0  # a training step's levels t, its noise eps and the energy term's shared noise
EPOCH_ORDER = 1  # the permutation of the fixed training set in an epoch (indexed by epoch)
NEGATIVES = 3  # a training step's negatives: source assignment and fresh starts, apart from STEP's draws
MINING = 8  # an offline mining batch's candidate draws (indexed by the batch's first row)

# numpy streams
FRESH_DATA = (1, 1)  # --train-size 0: the problems of a step, drawn fresh (spawn key prefix, indexed by step)
MINING_ROWS = (8,)  # an offline mining row's level and noise (spawn key prefix, indexed by the row)


def step_generator(seed: int, step: int, purpose: int = STEP) -> torch.Generator:
    """The CPU generator of stream `purpose` at index `step`: a pure function of (seed, purpose, step)."""
    state = np.random.SeedSequence(entropy=seed, spawn_key=(7, purpose, step)).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def numpy_stream(seed: int, *key: int) -> np.random.Generator:
    """A numpy generator for the spawn key `key`: a prefix above (FRESH_DATA, MINING_ROWS) plus an index."""
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=tuple(int(k) for k in key)))
