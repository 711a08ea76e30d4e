"""Where a file came from: ebmtool's version and (from its own checkout) commit, the environment, input hashes.

Every artifact records `provenance(...)`; checkpoints record `code_version()` and `environment()` in their
metadata. ebmtool.io.artifacts re-exports these names, their earlier home.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata
import platform
import socket
import subprocess
import sys
from pathlib import Path

import torch

from ebmtool import FORMAT_VERSION, __version__


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the `ebmtool/` folder this module is part of


def _git(*args) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=PACKAGE_DIR, capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.decode() if out.returncode == 0 else None


def _own_checkout() -> bool:
    """Whether this package is the `ebmtool/` folder of a git checkout's top level (an editable install or a run
    from the source tree). An installed copy inside another project's repository (a virtual environment there) is
    not: that repository's commit says nothing about ebmtool's code."""
    top = _git("rev-parse", "--show-toplevel")
    return top is not None and (Path(top.strip()) / "ebmtool").resolve() == PACKAGE_DIR


def code_version() -> dict:
    """ebmtool's version, and its git commit and a hash of uncommitted changes when running from its own
    checkout (anything else records "not a git checkout")."""
    own = _own_checkout()
    commit = _git("rev-parse", "HEAD") if own else None
    diff = _git("diff", "HEAD", "--", ".") if own else None
    return {
        "ebmtool_version": __version__,
        "git_commit": commit.strip() if commit else "not a git checkout",
        "git_dirty_hash": hashlib.sha256(diff.encode()).hexdigest()[:16] if diff else "clean",
    }


ENVIRONMENT_PACKAGES = ("numpy", "h5py", "safetensors", "scipy")


def environment(device=None) -> dict:
    """What a reviewer needs beside the code to trust a figure: the command line, library versions, the device
    and the machine. `device` (a torch.device or string) is the device the work ran on, when there is one."""
    versions = {"python": platform.python_version(), "torch": torch.__version__,
                **{name: importlib.metadata.version(name) for name in ENVIRONMENT_PACKAGES}}
    dev = None if device is None else torch.device(device)
    if dev is not None and dev.type == "cuda":
        versions.update(cuda=torch.version.cuda, cudnn=str(torch.backends.cudnn.version()))
        name = torch.cuda.get_device_name(dev)
    else:
        name = (platform.processor() or platform.machine()) if dev is not None else None
    return {"argv": list(sys.argv), "versions": versions, "device": None if dev is None else str(dev),
            "device_name": name, "host": socket.gethostname(), "threads": torch.get_num_threads()}


def provenance(command: str, config: dict | None = None, inputs: dict[str, Path] | None = None, **extra) -> dict:
    """What every artifact records: tool and code version, command, configuration and input file hashes."""
    rec = {
        "command": command,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "format_version": FORMAT_VERSION,
        **code_version(),
        "config": config or {},
        "inputs": {k: {"path": str(v), "sha256": sha256_file(Path(v))} for k, v in (inputs or {}).items()},
        "environment": environment(extra.pop("device", None)),
    }
    rec.update(extra)
    return rec
