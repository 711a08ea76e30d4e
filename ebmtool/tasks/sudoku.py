"""Sudoku: the task (`SudokuTask`), a seeded generator of unique-solution puzzles, file loaders, encoding and
metrics.

Generation (no download needed): a complete grid is filled by randomised depth-first search, then cells are
removed in a random order while the puzzle keeps exactly one solution. Uniqueness is proved for whole batches
at once by constraint propagation (naked and hidden singles, vectorised over puzzles): propagation only makes
sound deductions, so if it fills every cell the solution is unique. Where propagation stalls, an exact
bitmask DFS decides (does any solution differ from the known one at the removed cell?). The target number of
givens is drawn uniformly per puzzle (30-45 train, 17-34 harder); carving stops earlier when no further cell
can be removed (a minimal puzzle), so the realised givens can exceed the target. They are recorded per puzzle.

Encoding: 729 values in (row, column, digit) order; x = +-1 one-hot of the givens
(an empty cell is all -1), y = +-1 one-hot solution, mask = given cells expanded over the 9 digit channels.
Boards inside this module are (n, 81) int arrays with digits 1..9 and 0 for an empty cell.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ebmtool.method.diffusion import SamplerSettings
from ebmtool.runtime.errors import InputError
from ebmtool.runtime.progress import progress_bar
from ebmtool.tasks.discrete import DiscreteTask
from ebmtool.tasks.problems import Problems
from ebmtool.tasks.reference_negatives import sudoku_negative

CELLS = 81
DIGITS = 9
Y_DIM = CELLS * DIGITS

_ROW = np.arange(CELLS) // 9
_COL = np.arange(CELLS) % 9
_BOX = (_ROW // 3) * 3 + _COL // 3
# UNITS[u] = the 9 cells of unit u (9 rows, 9 columns, 9 boxes); CELL_UNITS[c] = its 3 units, CELL_POS its slot.
UNITS = np.array([[c for c in range(CELLS) if _ROW[c] == i] for i in range(9)]
                 + [[c for c in range(CELLS) if _COL[c] == i] for i in range(9)]
                 + [[c for c in range(CELLS) if _BOX[c] == i] for i in range(9)])
CELL_UNITS = np.stack([_ROW, 9 + _COL, 18 + _BOX], axis=1)
CELL_POS = np.array([[list(UNITS[u]).index(c) for u in CELL_UNITS[c]] for c in range(CELLS)])
_PEERS = [sorted({int(p) for u in CELL_UNITS[c] for p in UNITS[u]} - {c}) for c in range(CELLS)]
_ALL = 0x1FF  # digits 1..9 as bits 0..8

GIVENS_TRAIN = (30, 45)
GIVENS_HARDER = (17, 34)


# ------------------------------------------------------------------------------------------------ exact solver

def _bits(m: int) -> list[int]:
    return [d for d in range(9) if m >> d & 1]


def count_solutions(board, limit: int = 2, forbid: tuple[int, int] | None = None, rng=None):
    """Number of solutions of one board (stops at `limit`) and the first solution found.

    Bitmask DFS, most-constrained cell first. `forbid=(cell, digit)` excludes one digit at one empty cell
    (used to ask "is there a solution other than the known one?"). `rng` randomises the digit order (used to
    fill empty grids). Returns (count, solution as a list of 81 digits or None).
    """
    grid = [int(v) for v in board]
    rows, cols, boxes = [0] * 9, [0] * 9, [0] * 9
    for c, v in enumerate(grid):
        if v:
            b = 1 << (v - 1)
            r, k, x = _ROW[c], _COL[c], _BOX[c]
            if (rows[r] | cols[k] | boxes[x]) & b:
                return 0, None
            rows[r] |= b
            cols[k] |= b
            boxes[x] |= b
    empty = [c for c in range(CELLS) if not grid[c]]
    rr, cc, bb = [int(_ROW[c]) for c in range(CELLS)], [int(_COL[c]) for c in range(CELLS)], \
        [int(_BOX[c]) for c in range(CELLS)]
    fcell, fbit = (forbid[0], 1 << (forbid[1] - 1)) if forbid is not None else (-1, 0)
    found = []

    def rec(empty):
        if not empty:
            if not found:
                found.append(list(grid))
            return 1
        best, best_mask, best_n = -1, 0, 10
        for i, c in enumerate(empty):
            m = _ALL & ~(rows[rr[c]] | cols[cc[c]] | boxes[bb[c]])
            if c == fcell:
                m &= ~fbit
            n = bin(m).count("1")
            if n < best_n:
                best, best_mask, best_n = i, m, n
                if n <= 1:
                    break
        if best_n == 0:
            return 0
        c = empty[best]
        rest = empty[:best] + empty[best + 1:]
        digits = _bits(best_mask)
        if rng is not None:
            rng.shuffle(digits)
        total = 0
        r, k, x = rr[c], cc[c], bb[c]
        for d in digits:
            b = 1 << d
            rows[r] |= b
            cols[k] |= b
            boxes[x] |= b
            grid[c] = d + 1
            total += rec(rest)
            rows[r] &= ~b
            cols[k] &= ~b
            boxes[x] &= ~b
            grid[c] = 0
            if total >= limit:
                break
        return total

    n = rec(empty)
    return n, (found[0] if found else None)


def random_grids(n: int, rng: np.random.Generator) -> np.ndarray:
    """n complete valid grids (n, 81): the three diagonal boxes (independent of each other) are drawn as random
    permutations, the rest is filled by DFS with a random digit order."""
    out = np.zeros((n, CELLS), dtype=np.int8)
    py = _PyRandom(rng)
    diag = [np.flatnonzero(_BOX == b) for b in (0, 4, 8)]
    with progress_bar(n, desc="sudoku grids", unit="grid") as bar:
        for i in range(n):
            while True:
                board = np.zeros(CELLS, dtype=np.int64)
                for cells in diag:
                    board[cells] = rng.permutation(9) + 1
                count, sol = count_solutions(board, limit=1, rng=py)
                if count == 1:  # an uncompletable seed is redrawn (never observed, but not assumed)
                    break
            out[i] = sol
            bar.update()
    return out


class _PyRandom:
    """list shuffles drawn from a NumPy generator, so grids depend only on the seeded stream."""
    def __init__(self, rng):
        self.rng = rng

    def shuffle(self, xs):
        perm = self.rng.permutation(len(xs))
        xs[:] = [xs[j] for j in perm]


# ------------------------------------------------------------------------------------------------ propagation

_PEER_IDX = np.array(_PEERS)  # (81, 20)
_POPCOUNT = np.array([bin(m).count("1") for m in range(512)], dtype=np.int8)


def propagate(boards: np.ndarray, max_iter: int = 81) -> np.ndarray:
    """Candidate bitmasks (n, 81) uint16 (bit d = digit d+1) after naked and hidden singles, over a batch.

    Deductions are sound: a digit is removed only if no solution has it there. A board whose candidates end
    with exactly one digit per cell therefore has exactly that one solution; an empty mask is a contradiction.
    """
    boards = np.asarray(boards)
    cand = np.where(boards > 0, np.left_shift(1, np.maximum(boards.astype(np.int64) - 1, 0)), _ALL)
    cand = cand.astype(np.uint16)
    for _ in range(max_iter):
        before = cand.copy()
        fixed = np.where(_POPCOUNT[cand] == 1, cand, 0).astype(np.uint16)
        seen = np.bitwise_or.reduce(fixed[:, _PEER_IDX], axis=2)  # digits fixed in a peer
        cand = np.where(fixed > 0, cand, cand & ~seen)
        units = cand[:, UNITS]  # (n, 27, 9)
        once = np.zeros(units.shape[:2], dtype=np.uint16)
        twice = np.zeros_like(once)
        for k in range(9):
            twice |= once & units[:, :, k]
            once |= units[:, :, k]
        single = once & ~twice  # digits with exactly one place in the unit
        forced = np.zeros_like(cand)
        for j in range(3):
            forced |= cand & single[:, CELL_UNITS[:, j]]
        cand = np.where(forced > 0, forced, cand)
        if np.array_equal(cand, before):
            break
    return cand


def unique_by_propagation(boards: np.ndarray) -> np.ndarray:
    """(n,) bool: propagation alone fixes every cell (proves a unique solution; False = undecided)."""
    return (_POPCOUNT[propagate(boards)] == 1).all(-1)


# ------------------------------------------------------------------------------------------------ generator

def generate(n: int, rng: np.random.Generator, givens: tuple[int, int] = GIVENS_TRAIN):
    """n unique-solution puzzles. Returns (puzzles, solutions, target_givens), each (n, ...) int arrays.

    Removal is tried cell by cell in a random order, in lock-step over the batch: one round tries one cell of
    every unfinished puzzle and keeps the removal if the puzzle stays uniquely solvable. Progress: two bars on a
    terminal's stderr (grids, then cell removal rounds).
    """
    solutions = random_grids(n, rng)
    target = rng.integers(givens[0], givens[1] + 1, size=n)
    order = np.argsort(rng.random((n, CELLS)), axis=1)
    puzzles = solutions.copy()
    with progress_bar(CELLS, desc="sudoku givens", unit="cell") as bar:
        for step in range(CELLS):
            active = np.flatnonzero((puzzles > 0).sum(1) > target)
            if active.size == 0:
                break
            cells = order[active, step]
            trial = puzzles[active].copy()
            trial[np.arange(active.size), cells] = 0
            ok = unique_by_propagation(trial)
            for j in np.flatnonzero(~ok):  # propagation stalled: decide exactly
                c = int(cells[j])
                other, _ = count_solutions(trial[j], limit=1, forbid=(c, int(solutions[active[j], c])))
                ok[j] = other == 0
            puzzles[active[ok]] = trial[ok]
            bar.update()
    return puzzles, solutions, target


# ------------------------------------------------------------------------------------------------ encoding

def encode(boards: np.ndarray) -> np.ndarray:
    """(n, 81) digits (0 = empty) -> (n, 729) float32 +-1 one-hot in (row, col, digit) order."""
    onehot = (boards[..., None] == np.arange(1, 10)).astype(np.float32)
    return (2 * onehot - 1).reshape(boards.shape[0], Y_DIM)


def given_mask(puzzles: np.ndarray) -> np.ndarray:
    """(n, 729) float32: 1 on all 9 digit channels of a given cell."""
    return np.repeat((puzzles > 0).astype(np.float32), DIGITS, axis=1)


def decode(y: np.ndarray) -> np.ndarray:
    """(n, 729) scores -> (n, 81) digits 1..9 by argmax over the digit channels."""
    return np.asarray(y).reshape(-1, CELLS, DIGITS).argmax(-1).astype(np.int8) + 1


def puzzles_from_x(x: np.ndarray) -> np.ndarray:
    """Given digits from the +-1 encoding of x (0 where a cell is all -1)."""
    cells = np.asarray(x).reshape(-1, CELLS, DIGITS)
    return np.where(cells.max(-1) > 0, cells.argmax(-1) + 1, 0).astype(np.int8)


# ------------------------------------------------------------------------------------------------ metrics

def valid_boards(boards: np.ndarray) -> np.ndarray:
    """(n,) bool: every row, column and box holds each digit 1..9 exactly once."""
    units = boards[:, UNITS]  # (n, 27, 9)
    onehot = units[..., None] == np.arange(1, 10)
    return (onehot.sum(2) == 1).all(axis=(1, 2))


def metrics(puzzles: np.ndarray, solutions: np.ndarray, y_hat: np.ndarray, unique: bool = True) -> dict:
    """Per-board metrics on every board: cell accuracy on empty cells, board solved, exact match.

    board_solved: argmax digits form a valid grid AND keep every given (not the reference's digit-sum check).
    On unique-solution puzzles solved == exact match; with `unique` this is asserted.
    """
    pred = decode(y_hat)
    empty = puzzles == 0
    correct = (pred == solutions) & empty
    cell_acc = correct.sum(1) / np.maximum(empty.sum(1), 1)
    givens_kept = ((pred == puzzles) | empty).all(1)
    solved = valid_boards(pred) & givens_kept
    exact = (pred == solutions).all(1)
    if unique and not np.array_equal(solved, exact):
        raise AssertionError("a board is solved but differs from its label: the puzzle is not unique")
    return {"board_solved": solved.astype(np.float64), "cell_accuracy": cell_acc.astype(np.float64),
            "exact_match": exact.astype(np.float64), "givens_kept": givens_kept.astype(np.float64)}


# ------------------------------------------------------------------------------------------------ loaders

def _parse_board(s: str, where: str) -> np.ndarray:
    s = s.strip()
    if len(s) != CELLS:
        raise InputError(f"{where}: a board needs 81 characters, got {len(s)}")
    out = np.zeros(CELLS, dtype=np.int8)
    for i, ch in enumerate(s):
        if ch in ".0":
            continue
        if not ch.isdigit():
            raise InputError(f"{where}: unexpected character {ch!r} in a board")
        out[i] = int(ch)
    return out


def load_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """RRN / Kaggle layout: lines `quiz,solution` of 81 characters (0 or . = empty); an optional header row
    (any line whose first field is not 81 characters, e.g. `quizzes,solutions`) is skipped."""
    puzzles, sols = [], []
    with open(path, newline="") as f:
        for i, row in enumerate(csv.reader(f)):
            if not row:
                continue
            if len(row) < 2:
                raise InputError(f"{path}:{i + 1}: expected `quiz,solution`")
            if i == 0 and len(row[0].strip()) != CELLS:
                continue
            puzzles.append(_parse_board(row[0], f"{path}:{i + 1}"))
            sols.append(_parse_board(row[1], f"{path}:{i + 1}"))
    if not puzzles:
        raise InputError(f"{path}: no boards found")
    return np.stack(puzzles), np.stack(sols)


def load_satnet_npy(features: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    """SAT-Net layout exported to NumPy: features.npy and labels.npy of shape (n, 9, 9, 9) one-hot 0/1, an
    empty cell all zero. (The original features.pt/labels.pt are pickles and are not read.)"""
    f = np.load(features, allow_pickle=False)
    l = np.load(labels, allow_pickle=False)
    if f.shape != l.shape or f.shape[1:] != (9, 9, 9):
        raise InputError(f"SAT-Net arrays must both be (n, 9, 9, 9), got {f.shape} and {l.shape}")

    def digits(a):
        a = a.reshape(a.shape[0], CELLS, DIGITS)
        return np.where(a.max(-1) > 0, a.argmax(-1) + 1, 0).astype(np.int8)

    return digits(f), digits(l)


def check_puzzles(puzzles: np.ndarray, solutions: np.ndarray, where: str) -> None:
    """Loaded data must be consistent: solutions valid and every given equal to the solution's digit."""
    if not valid_boards(solutions).all():
        raise InputError(f"{where}: {int((~valid_boards(solutions)).sum())} solutions are not valid grids")
    bad = ((puzzles > 0) & (puzzles != solutions)).any(1)
    if bad.any():
        raise InputError(f"{where}: {int(bad.sum())} puzzles have givens that differ from their solution")


def problems_from_files(path: Path, labels: Path | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """(x, y, mask, description) of puzzles a user has on disk: an RRN/Kaggle CSV (`quiz,solution` rows) or a
    SAT-Net pair exported to NumPy (features.npy with labels.npy). Checked: every solution a valid grid and every
    given equal to its solution's digit. Uniqueness is not checked (the public sets are unique by construction)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.suffix == ".csv":
        if labels is not None:
            raise InputError("--labels is for SAT-Net features.npy files; a CSV holds its solutions itself")
        puzzles, sols = load_csv(path)
    elif path.suffix == ".npy":
        if labels is None:
            raise InputError(f"{path}: a SAT-Net features file needs its solutions too: add --labels labels.npy")
        if not Path(labels).exists():
            raise InputError(f"{labels}: no such file")
        puzzles, sols = load_satnet_npy(path, Path(labels))
    else:
        raise InputError(f"{path}: give an RRN/Kaggle .csv (quiz,solution) or a SAT-Net features .npy")
    check_puzzles(puzzles, sols, str(path))
    givens = (puzzles > 0).sum(1)
    desc = {"task": SudokuTask.name, "size": 9, "source": str(path), "n": int(len(puzzles)), "unique": None,
            "givens_min": int(givens.min()), "givens_max": int(givens.max()), "givens_mean": float(givens.mean())}
    return encode(puzzles), encode(sols), given_mask(puzzles), desc


# ------------------------------------------------------------------------------------------------ the task

@dataclass(frozen=True)
class SudokuTask(DiscreteTask):
    """9x9 Sudoku: the solution given the clues (masked: imposed while sampling, not learnt). The harder split has
    fewer givens; the size is always 9."""

    size_unit = None  # Sudoku is always 9x9
    has_mask = True  # the clues are given
    converts_files = True  # the public Sudoku sets (RRN/Kaggle CSV, SAT-Net .npy)

    name: str = "sudoku"
    size: int = 9
    metric: str = "board_solved"
    energy_weight: float = 0.05
    sampler: SamplerSettings = SamplerSettings(inner_steps=20, x0_clamp=1.0, opt_clamp=1.0, opt_multiplier=1.0,
                                               post_clamp=1.0)
    harder_size: int = 9

    @property
    def x_dim(self) -> int:
        return Y_DIM

    @property
    def y_dim(self) -> int:
        return Y_DIM

    @property
    def label(self) -> str:
        return "sudoku 9x9"

    def at_size(self, size: int | None) -> "SudokuTask":
        if size is None or size == self.size:
            return self
        raise InputError(f"sudoku is always 9x9; --size {size} does not apply")

    def problems_from_files(self, source, labels=None) -> Problems:
        """Sudoku puzzles a user has on disk, checked (problems_from_files)."""
        x, y, mask, desc = problems_from_files(source, labels)
        return Problems(x, y, mask, desc)

    def model_dims(self, width: int | None = None, blocks: int | None = None, time_dim: int = 128) -> dict:
        """The Sudoku CNN (ebmtool.method.models' sudoku_cnn): `width` its channels, `blocks` its residual blocks."""
        return {"arch": "sudoku_cnn", "x_dim": Y_DIM, "y_dim": Y_DIM, "width": width or 384,
                "blocks": 6 if blocks is None else blocks, "time_dim": 128, "time_hidden": 64}

    def draw_problems(self, rng, n, nodes, harder, desc):
        puzzles, sols, target = generate(n, rng, GIVENS_HARDER if harder else GIVENS_TRAIN)
        givens = (puzzles > 0).sum(1)
        desc.update(unique=True, givens_min=int(givens.min()), givens_max=int(givens.max()),
                    givens_mean=float(givens.mean()), givens_reached_target=float((givens == target).mean()))
        return encode(puzzles), encode(sols), given_mask(puzzles)

    def reference_negative(self, y, mask, gen, connectivity_form: str = "reference"):
        return sudoku_negative(y, mask, gen)

    def metrics(self, problems: Problems, y_hat: np.ndarray) -> dict[str, np.ndarray]:
        puzzles = puzzles_from_x(problems.x)
        return metrics(puzzles, decode(problems.y), y_hat, unique=bool(problems.description.get("unique", True)))

    def baselines(self, problems: Problems) -> dict[str, np.ndarray]:
        """Primary metric of trivial predictors: the numbers a model must beat to have learnt anything."""
        return {"givens only": self.metrics(problems, problems.x)[self.metric]}


TASKS = (SudokuTask(),)  # registered by ebmtool.tasks.registry
