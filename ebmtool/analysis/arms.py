"""The runs a comparison reads: checkpoints grouped into arms (a group's members are seeds), loaded and checked
to be comparable (same task, same training problems).
"""

from __future__ import annotations

import glob
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path


from ebmtool.io.checkpoints import Checkpoint, load_checkpoint, resolve_checkpoint_path
from ebmtool.io.artifacts import sha256_file
from ebmtool.method.compute import rule_label
from ebmtool.runtime.errors import InputError

COMPUTE_META = "ebmtool.compute_flops"  # cumulative training FLOPs of the run (JSON number); older checkpoints lack it
RULE_META = "ebmtool.compute_rule"  # the counting rule's version (ebmtool.method.compute); absent: rule 1


@dataclass
class Run:
    name: str
    group: str
    path: Path
    ckpt: Checkpoint
    sha256: str

    @property
    def seed(self) -> int:
        return self.ckpt.seed

    @property
    def compute_flops(self) -> float | None:
        """Training FLOPs from the checkpoint's metadata; None for checkpoints written before it was recorded."""
        raw = self.ckpt.meta.get(COMPUTE_META)
        if raw is None:
            return None
        try:
            v = json.loads(raw)
        except ValueError:
            v = None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise InputError(f"{self.path}: metadata {COMPUTE_META} is {raw!r}, not a number of FLOPs")
        return float(v)


    @property
    def compute_rule(self) -> str | None:
        """The label of the rule its compute was counted under (None where it records no compute)."""
        return None if self.compute_flops is None else rule_label(self.ckpt.meta.get(RULE_META))


@dataclass
class Group:
    name: str
    runs: list[Run] = field(default_factory=list)

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]


def expand_paths(spec) -> list[Path]:
    """Paths of one group: a list, or a comma-separated string of files, run directories and glob patterns."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[Path] = []
    for item in items:
        item = str(item).strip()
        if not item:
            continue
        if any(c in item for c in "*?["):
            matches = sorted(glob.glob(item))
            if not matches:
                raise InputError(f"{item}: the pattern matches no file or run directory")
            out.extend(Path(m) for m in matches)
        else:
            out.append(Path(item))
    return [resolve_checkpoint_path(p) for p in out]


def run_label(path: Path) -> str:
    """A short name for a checkpoint: its run directory (with its parent for `seed-N` directories), or its stem."""
    path = Path(path).absolute()
    if path.name != "ckpt.safetensors" or not path.parent.name:
        return path.stem
    run = path.parent
    if re.fullmatch(r"seed-\d+", run.name) and run.parent.name:
        return f"{run.parent.name}/{run.name}"
    return run.name


def named_arms(checkpoints, groups) -> list[tuple[str, list[Path]]]:
    """The arms of `ebmtool compare`: each positional checkpoint (or run directory) an arm of one, named by
    run_label (a repeated name gets '#2', '#3'), then the (NAME, PATHS-spec) groups, expanded."""
    arms: list[tuple[str, list[Path]]] = []
    for p in checkpoints:
        p = resolve_checkpoint_path(p)
        arms.append((run_label(p), [p]))
    arms += [(name, expand_paths(spec)) for name, spec in groups]
    names = [a for a, _ in arms]
    for i, name in enumerate(names):  # two positional checkpoints of the same run-directory name
        if names.count(name) > 1 and i != names.index(name):
            names[i] = f"{name}#{names[:i].count(name) + 1}"
    return [(nm, paths) for nm, (_, paths) in zip(names, arms)]


def load_groups(groups: list[tuple[str, list[Path]]]) -> list[Group]:
    """Load every checkpoint (validated) into named groups; names must be unique."""
    if not groups:
        raise InputError("nothing to compare: give checkpoints or --group NAME=PATHS")
    names = [g for g, _ in groups]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InputError(f"group name {dup[0]!r} is used twice; give each arm its own name")
    out = []
    for name, paths in groups:
        if not paths:
            raise InputError(f"group {name!r} has no checkpoints")
        g = Group(name)
        for p in paths:
            ckpt = load_checkpoint(p)
            g.runs.append(Run("", name, Path(p), ckpt, sha256_file(p)))
        seen: dict[str, int] = {}
        for r in g.runs:
            base = name if len(g.runs) == 1 else f"{name}/seed-{r.seed}"
            seen[base] = seen.get(base, 0) + 1
            r.name = base if seen[base] == 1 else f"{base}#{seen[base]}"
        out.append(g)
    if sum(len(g.runs) for g in out) < 2:
        raise InputError("compare needs at least two checkpoints")
    return out


def _task_identity(ckpt: Checkpoint) -> tuple:
    cfg = ckpt.config
    size = json.loads(ckpt.meta.get("ebmtool.task_size", "null"))  # the resolved size (None = a data file)
    return (ckpt.task, cfg.get("size") if size is None else size)


def check_compatible(groups: list[Group]) -> None:
    """Refuse checkpoints of different tasks or different model input/output sizes (exit 2)."""
    runs = [r for g in groups for r in g.runs]
    first = runs[0]
    for r in runs[1:]:
        if _task_identity(r.ckpt) != _task_identity(first.ckpt):
            a, b = _task_identity(first.ckpt), _task_identity(r.ckpt)
            raise InputError(f"{r.path} was trained on task {b[0]} (size {b[1]}) but {first.path} on {a[0]} "
                             f"(size {a[1]}); compare only checkpoints of one task")
        for k in ("x_dim", "y_dim"):
            if r.ckpt.dims.get(k) != first.ckpt.dims.get(k):
                raise InputError(f"{r.path}: model {k} {r.ckpt.dims.get(k)} differs from {first.path}'s "
                                 f"{first.ckpt.dims.get(k)}; the models do not answer the same problems")
