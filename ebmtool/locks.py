"""Directory locks: one process at a time trains in a run directory or mines into a partial negatives file."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ebmtool.errors import InputError


def pid_lock(path: Path, in_use: str) -> int:
    """An exclusive flock on `path` (created if needed) holding this process's pid; returns its fd (closing it
    releases the lock, as the process's death does). Held elsewhere: InputError "`in_use`: process PID ..."."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise InputError(in_use.format(pid=holder)) from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def lock_holder(path: Path) -> int | None:
    """The pid of the process holding the pid_lock on `path` now, or None."""
    path = Path(path)
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode(errors="replace").strip()
        return int(holder) if holder.isdigit() else -1
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
