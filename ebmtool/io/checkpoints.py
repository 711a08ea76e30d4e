"""Checkpoints (safetensors): weights, EMA, optimiser and RNG state, with the run's metadata; verified on load.

An exported model (`ebmtool export`: DIR/model.safetensors, kind "model") is one weight set under its plain
state-dict names, with the checkpoint's descriptive metadata; `load_checkpoint(path, exported=True)` reads either
kind (evaluation and sampling do), every other reader refuses an export with one sentence."""

from __future__ import annotations
import json
import re
from dataclasses import dataclass
from pathlib import Path
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from ebmtool import FORMAT_VERSION
from ebmtool.runtime.errors import InputError

from ebmtool.io.artifacts import (
    KINDS, ST_CHECKSUM, atomic_path, format_version, h5_kind, safetensors_metadata, sniff, tensors_sha256,
)


# ---------------------------------------------------------------------------------------------------- checkpoints

@dataclass
class Checkpoint:
    """A checkpoint file, read: metadata parsed, tensors grouped by prefix (model/, ema/, optim/, rng/)."""

    path: Path
    meta: dict
    tensors: dict[str, torch.Tensor]

    @property
    def config(self) -> dict:
        return json.loads(self.meta["ebmtool.config"])

    @property
    def dims(self) -> dict:
        return json.loads(self.meta["ebmtool.model"])

    @property
    def step(self) -> int:
        return int(self.meta["ebmtool.step"])

    @property
    def seed(self) -> int:
        return int(self.meta["ebmtool.seed"])

    @property
    def task(self) -> str:
        return self.meta["ebmtool.task"]

    def group(self, prefix: str) -> dict[str, torch.Tensor]:
        p = prefix + "/"
        return {k[len(p):]: v for k, v in self.tensors.items() if k.startswith(p)}

    def json(self, key: str):
        return json.loads(self.meta[key])


MODEL_KIND = "model"  # an exported weight set (ebmtool export)
MODEL_FILE = "model.safetensors"  # its name in an export directory (Hugging Face's name for a model's weights)


def save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str],
                    kind: str = "checkpoint") -> None:
    """Atomically write tensors and string metadata with a content checksum (`kind` MODEL_KIND: an export).

    A failed write (full disk, unwritable directory) raises RunError and leaves the previous file intact.
    """
    meta = {"format": "pt", "ebmtool.kind": kind, "ebmtool.format_version": str(FORMAT_VERSION), **meta}
    bad = [k for k, v in meta.items() if not isinstance(v, str)]
    if bad:
        raise TypeError(f"checkpoint metadata must be strings: {bad}")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta[ST_CHECKSUM] = tensors_sha256(tensors, meta)
    with atomic_path(Path(path)) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


CHECKPOINT_REQUIRED = ("ebmtool.config", "ebmtool.model", "ebmtool.step", "ebmtool.seed", "ebmtool.task")


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        tensors = {}
        with safe_open(str(path), framework="pt") as f:
            for k in f.keys():
                tensors[k] = f.get_tensor(k)
        return tensors
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise InputError(f"{path} is a damaged or truncated checkpoint ({exc})") from None


def load_checkpoint(path: Path, exported: bool = False) -> Checkpoint:
    """Read and validate a checkpoint (or, with `exported`, also an exported model, whose one weight set then
    appears under its name: `group("ema")` or `group("model")`); one sentence naming the file on any problem.

    Order: format (sniff), ebmtool metadata, a known wrong kind, format version, tensors, content checksum, then
    any other kind and the required metadata.
    After the checksum has matched, the metadata is exactly what ebmtool wrote.
    """
    path = Path(path)
    fmt = sniff(path)
    if fmt == "hdf5":
        raise InputError(f"{path} is an HDF5 {h5_kind(path)} file, not a checkpoint")
    meta = safetensors_metadata(path)
    kind = meta.get("ebmtool.kind")
    accepted = ("checkpoint", MODEL_KIND) if exported else ("checkpoint",)
    if kind == MODEL_KIND and not exported:
        raise InputError(f"{path} is an exported model (one weight set, from ebmtool export), not a checkpoint; "
                         "give the run's ckpt.safetensors")
    if kind not in accepted and kind in KINDS:
        raise InputError(f"{path} is a {kind} file, not a checkpoint")
    version = format_version(path, meta.get("ebmtool.format_version", "0"))
    if version > FORMAT_VERSION:
        raise InputError(f"{path} was written by a newer ebmtool (format {version}, this one reads "
                         f"{FORMAT_VERSION}); upgrade ebmtool to read it")
    tensors = _read_tensors(path)
    if ST_CHECKSUM not in meta:
        raise InputError(f"{path} has no content checksum: it is damaged or was not written by this ebmtool")
    if meta[ST_CHECKSUM] != tensors_sha256(tensors, meta):
        raise InputError(f"{path} is corrupted (checksum mismatch: its tensors or metadata changed after ebmtool "
                         "wrote it)")
    if kind not in accepted:
        raise InputError(f"{path} is a {kind} file, not a checkpoint")
    missing = [k for k in CHECKPOINT_REQUIRED + (("ebmtool.weights",) if kind == MODEL_KIND else ()) if k not in meta]
    if missing:
        raise InputError(f"{path} is an incomplete checkpoint (missing metadata {', '.join(missing)})")
    try:
        config, dims = json.loads(meta["ebmtool.config"]), json.loads(meta["ebmtool.model"])
        int(meta["ebmtool.step"]), int(meta["ebmtool.seed"])
    except ValueError as exc:
        raise InputError(f"{path} has invalid metadata ({exc})") from None
    if not isinstance(config, dict) or not isinstance(dims, dict):
        raise InputError(f"{path} has invalid metadata (config and model must be JSON objects)")
    if kind == MODEL_KIND:
        tensors = {f"{meta['ebmtool.weights']}/{k}": v for k, v in tensors.items()}
    return Checkpoint(path, meta, tensors)


SEED_DIR = re.compile(r"seed-(\d+)")  # train --seeds writes OUTPUT/seed-<s>/


def seed_runs(path: Path) -> list[Path]:
    """The run directories `train --seeds` made under `path` (seed-<s>/ holding a checkpoint or a live log), by
    seed; [] for any other directory."""
    found = [(int(m.group(1)), d) for d in Path(path).iterdir() if d.is_dir() and (m := SEED_DIR.fullmatch(d.name))
             and ((d / "ckpt.safetensors").exists() or (d / "metrics.jsonl").exists())]
    return [d for _, d in sorted(found)]


def seeds_hint(path: Path, runs: list[Path]) -> str:
    """What to do with a --seeds parent where one run is expected."""
    return (f"{path} holds the runs of train --seeds ({', '.join(d.name for d in runs)}), not one run: name one "
            f"({runs[0]}), or compare them as an arm with --group {path.name}='{path}/seed-*'")


def resolve_checkpoint_path(path: Path) -> Path:
    """Accept a run directory wherever a checkpoint is expected: DIR means DIR/ckpt.safetensors (or, for an export
    directory, DIR/model.safetensors, which only evaluation and sampling accept)."""
    path = Path(path)
    if path.is_dir():
        for cand in (path / "ckpt.safetensors", path / MODEL_FILE):
            if cand.exists():
                return cand
        runs = seed_runs(path)
        raise InputError(seeds_hint(path, runs) if runs else f"{path} is a directory without a ckpt.safetensors")
    return path
