"""Offline negatives and weights as training inputs: a mined negatives file (and optional SANS weights file)
matched to a run's training set by row index, with its provenance checked against the run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ebmtool.io.artifacts import open_h5, safetensors_metadata, sha256_file
from ebmtool.io.negatives_file import read_negatives
from ebmtool.runtime.errors import InputError


def _pct(x: float) -> str:
    return f"{100 * x:.0f} %" if x >= 0.01 or x == 0 else f"{100 * x:.1g} %"


def family(task_label: str, dims: dict, data_fingerprint: str) -> str:
    """A checkpoint family: same task, same network shape, same training data (any step, any init)."""
    spec = json.dumps({"task": task_label, "dims": dims, "data": data_fingerprint}, sort_keys=True)
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


def mined_seed(attrs: dict) -> int | None:
    """The seed of the run a negatives file was mined from (its training data's seed), when that checkpoint is
    still where the file's provenance says; None otherwise."""
    ckpt = ((attrs.get("provenance") or {}).get("inputs") or {}).get("checkpoint") or {}
    try:
        return int(safetensors_metadata(Path(ckpt["path"]))["ebmtool.seed"])
    except (KeyError, ValueError, InputError, OSError):
        return None


@dataclass
class OfflineNegatives:
    """A negatives file (and optional weights file) matched to a run's training set by row index."""

    y_neg: torch.Tensor  # (M, K, D) clean space
    valid: torch.Tensor  # (M, K)
    weights: torch.Tensor | None  # (M, K), rows summing to 1 over valid negatives (0 for rows without any)
    file_row: np.ndarray  # (N_train,) file row of each training row, -1 where the file has none

    @property
    def covered(self) -> int:
        """Training problems the file has negatives for (a file mined with --limit covers only its first rows)."""
        return int((self.file_row >= 0).sum())

    def announce(self, cfg, log) -> None:
        """The start line of a run with this file, and a warning when it covers part of the training set: only
        covered rows take offline negatives, so the realised fraction is the requested one times the coverage."""
        n, covered, fraction = len(self.file_row), self.covered, cfg.offline_fraction
        log(f"offline negatives {cfg.offline_negatives}" + (f" weighted by {cfg.offline_weights}"
                                                            if cfg.offline_weights else "")
            + f": K = {cfg.k}, {covered:,} of the {n:,} training problems ({_pct(covered / n)}), for "
            f"{_pct(fraction)} of each batch")
        if covered < n:
            log(f"warning: {cfg.offline_negatives} covers {covered:,} of the {n:,} training problems, so about "
                f"{_pct(fraction * covered / n)} of each batch will use its negatives instead of the "
                f"{_pct(fraction)} asked for (--negatives-fraction); mine every training problem (no --limit) to "
                "reach it")

    def rows_for(self, idx: np.ndarray, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch positions (among the first round(F * B)) that the file covers, and their file rows."""
        m = int(round(fraction * len(idx)))
        fr = self.file_row[idx[:m]]
        keep = fr >= 0
        return torch.from_numpy(np.arange(m)[keep]), torch.from_numpy(fr[keep])

    @classmethod
    def load(cls, cfg, data, dims: dict, *, force: bool = False, log=print) -> "OfflineNegatives":
        """Read and check the files named in `cfg` against this run. Provenance mismatches (another task or data
        set, weights for other negatives, scores from another checkpoint family) are one InputError sentence
        unless `force`; then they are recorded in cfg.offline_mismatch (so the checkpoint says so)."""
        if data.train is None:
            raise InputError("--offline-negatives needs a fixed training set (--train-size > 0): rows are matched by "
                             "index")
        path = Path(cfg.offline_negatives)
        sha = sha256_file(path) if path.exists() else None
        negs = read_negatives(path)
        if cfg.offline_negatives_sha256 is not None and sha != cfg.offline_negatives_sha256:
            raise InputError(f"{path} changed since this run started (sha256 mismatch)")
        cfg.offline_negatives_sha256 = sha
        a, attrs = negs["arrays"], negs["attrs"]
        k = a["negatives"].shape[1]
        if k != cfg.k:
            raise InputError(f"{path} has K = {k} negatives per problem but this run uses --k {cfg.k}")
        mismatches = []
        if attrs.get("task") != data.task.label:
            mismatches.append(f"{path} holds negatives for {attrs.get('task')}, but this run trains on "
                              f"{data.task.label}")
        elif attrs.get("data_fingerprint") != data.fingerprint:
            mismatches.append(f"{path} was mined on another training set (data fingerprint "
                              f"{str(attrs.get('data_fingerprint'))[:12]}, this run's is {data.fingerprint[:12]}); "
                              "mine it from a checkpoint trained on this run's data (same task, size, seed, "
                              "--train-size)")
        if a["negatives"].shape[2] != data.task.y_dim:
            raise InputError(f"{path}: negatives of dimension {a['negatives'].shape[2]} do not fit this run's task "
                             f"({data.task.y_dim})")
        weights = None
        if cfg.offline_weights is not None:
            wpath = Path(cfg.offline_weights)
            with open_h5(wpath, "weights") as f:
                w, windex = f["weights"][()], f["index"][()]
                wattrs = {key: (v.decode() if isinstance(v, bytes) else v) for key, v in f.attrs.items()}
            wsha = sha256_file(wpath)
            if cfg.offline_weights_sha256 is not None and wsha != cfg.offline_weights_sha256:
                raise InputError(f"{wpath} changed since this run started (sha256 mismatch)")
            cfg.offline_weights_sha256 = wsha
            if wattrs.get("negatives_sha256") != sha:
                mismatches.append(f"{wpath} holds weights for other negatives (computed from negatives with sha256 "
                                  f"{str(wattrs.get('negatives_sha256'))[:12]}, {path} has {sha[:12]})")
            fam = family(data.task.label, dims, data.fingerprint)
            if wattrs.get("checkpoint_family") != fam:
                mismatches.append(f"{wpath} was computed from scores of another checkpoint family (another task, "
                                  "model shape or training set than this run)")
            if w.shape != a["valid"].shape or not np.array_equal(windex, a["index"]):
                raise InputError(f"{wpath} does not have one weight row per row of {path} (shape {w.shape}, "
                                 f"expected {a['valid'].shape})")
            weights = torch.from_numpy(w.astype(np.float32))
        n = len(data.train)
        index = a["index"].astype(np.int64)
        in_range = (index >= 0) & (index < n)
        differ = ~(a["positives"][in_range] == data.train.y[index[in_range]]).all(axis=1)
        if differ.any():  # negatives are defined by their positive: no --force makes other problems' fit
            seed = mined_seed(attrs)
            raise InputError(f"{path}: the positives stored with {int(differ.sum())} of its {int(in_range.sum())} rows "
                             "differ from this run's training problems at the same index, so its negatives belong "
                             "to other problems and no --force makes them fit; train on the problems they were mined "
                             "on" + (f" (their run's --seed {seed}, which --init of that run keeps)" if seed is not None
                                     else "") + ", or mine them on this run's training set")
        if mismatches:
            if not force and mismatches != (cfg.offline_mismatch or []):
                raise InputError(f"{mismatches[0]}; pass --force to use it anyway (the mismatch is recorded in the "
                                 "checkpoint)")
            cfg.offline_mismatch = mismatches
            for m in mismatches:
                log(f"warning (--force): {m}")
        file_row = np.full(n, -1, dtype=np.int64)
        file_row[index[in_range]] = np.nonzero(in_range)[0]
        return cls(torch.from_numpy(a["negatives"]), torch.from_numpy(a["valid"].astype(bool)), weights, file_row)
