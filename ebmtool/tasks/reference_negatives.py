"""The reference's discrete negatives, corrected so that a negative never equals its positive.

Each source is a pure function `(y, mask, gen) -> (y_neg, n_identical_redrawn)` on flattened (B, D) +-1
tensors: y_neg is a clean-space +-1 answer (detached), given entries (mask = 1) are copied from y, and a
candidate equal to its positive is re-drawn (rejection sampling, so the distribution is the reference's
conditioned on "differs from y"); n_identical_redrawn counts the examples whose first draw was identical.
The framework noises y_neg with the positive's own noise; nothing here knows about t.
"""

from __future__ import annotations

import torch

SUDOKU_P = 0.05
CONNECTIVITY_P = 0.05
MAX_ROUNDS = 1000  # rejection rounds; a row that can never differ is rejected up front, so this is never hit


def _redraw(y, mask, draw, can_differ):
    """Draw candidates for every row, re-draw rows equal to y until none is; count first-draw duplicates."""
    if not bool(can_differ.all()):
        raise ValueError(f"{int((~can_differ).sum())} examples have no free entry: no negative can differ from y")
    out = draw(torch.arange(y.shape[0], device=y.device))
    if mask is not None:
        out = torch.where(mask > 0, y, out)
    same = (out == y).all(1)
    n_identical = int(same.sum())
    for _ in range(MAX_ROUNDS):
        if not bool(same.any()):
            return out.detach(), n_identical
        rows = same.nonzero().squeeze(1)
        cand = draw(rows)
        if mask is not None:
            cand = torch.where(mask[rows] > 0, y[rows], cand)
        out[rows] = cand
        same = (out == y).all(1)
    raise RuntimeError("negatives still equal their positives after the maximum number of re-draws")


def sudoku_negative(y: torch.Tensor, mask: torch.Tensor | None, gen: torch.Generator, p: float = SUDOKU_P):
    """Each free cell's digit re-drawn uniformly from 1..9 with probability p (may redraw its own digit);
    given cells (mask) keep theirs. y: (B, 729) +-1 in (row, col, digit) order."""
    b = y.shape[0]
    cells = y.reshape(b, 81, 9)
    digits = cells.argmax(-1)
    free = torch.ones(b, 81, dtype=torch.bool, device=y.device) if mask is None else \
        ~(mask.reshape(b, 81, 9) > 0).any(-1)

    def draw(rows):
        n = rows.shape[0]
        flip = (torch.rand(n, 81, generator=gen) < p).to(y.device) & free[rows]
        new = torch.randint(0, 9, (n, 81), generator=gen).to(y.device)
        d = torch.where(flip, new, digits[rows])
        return (2 * torch.nn.functional.one_hot(d, 9).to(y.dtype) - 1).reshape(n, 81 * 9)

    return _redraw(y, mask, draw, free.any(1))


CONNECTIVITY_NEGATIVES = ("reference", "flip")  # the first is the default


def connectivity_negative(y: torch.Tensor, mask: torch.Tensor | None, gen: torch.Generator,
                          p: float = CONNECTIVITY_P, form: str = "reference"):
    """Each entry of the closure chosen with probability p and set to -1 ("reference": only connected ->
    not connected, as the published method does) or flipped in both directions ("flip"). y: (B, N*N) +-1."""
    if form not in CONNECTIVITY_NEGATIVES:
        raise ValueError(f"unknown connectivity negative {form!r}; use one of {', '.join(CONNECTIVITY_NEGATIVES)}")
    free = torch.ones_like(y, dtype=torch.bool) if mask is None else mask <= 0

    def draw(rows):
        flip = (torch.rand(rows.shape[0], y.shape[1], generator=gen) < p).to(y.device)
        return torch.where(flip, -y[rows] if form == "flip" else -torch.ones_like(y[rows]), y[rows])

    return _redraw(y, mask, draw, (free & (y > 0)).any(1) if form == "reference" else free.any(1))


def path_negative(y: torch.Tensor, mask: torch.Tensor | None, gen: torch.Generator, steps: int = 8):
    """The node of the first step re-drawn uniformly among the N nodes (re-drawn again while it is the true
    node). y: (B, steps*N) +-1, one-hot node per step."""
    b = y.shape[0]
    nodes = y.shape[1] // steps
    seq = y.reshape(b, steps, nodes).argmax(-1)
    first_free = torch.ones(b, dtype=torch.bool, device=y.device) if mask is None else \
        ~(mask.reshape(b, steps, nodes)[:, 0] > 0).any(-1)

    def draw(rows):
        s = seq[rows].clone()
        s[:, 0] = torch.randint(0, nodes, (rows.shape[0],), generator=gen).to(y.device)
        return (2 * torch.nn.functional.one_hot(s, nodes).to(y.dtype) - 1).reshape(rows.shape[0], -1)

    return _redraw(y, mask, draw, first_free & (nodes > 1))
