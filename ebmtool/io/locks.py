"""Directory locks: one process at a time trains in a run directory or mines into a partial negatives file."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from ebmtool.runtime.errors import InputError, RunError

# flock's answers on a file system that has no locks (some network file systems): a sentence, not a traceback
NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)


def _open(path: Path, flags: int) -> int:
    """Open the lock file without following a link at its path: a link there could make ebmtool write its pid into
    any file the link names."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputError(f"{path} is a symbolic link; ebmtool does not follow a link at its lock's path "
                             "(remove the link)") from None
        raise


def pid_lock(path: Path, in_use: str) -> int:
    """An exclusive flock on `path` (created if needed) holding this process's pid; returns its fd (closing it
    releases the lock, as the process's death does). Held elsewhere: InputError "`in_use`: process PID ...".
    A file system without locks: RunError, one sentence."""
    fd = _open(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise InputError(in_use.format(pid=holder)) from None
    except OSError as exc:
        os.close(fd)
        if exc.errno in NO_LOCKS:
            raise RunError(f"cannot lock {path}: its file system does not support file locks "
                           f"({errno.errorcode[exc.errno]}, as some network file systems), which keep two processes "
                           "from writing one directory; use a directory on a file system that has them (a local "
                           "disk, or NFS with its lock service)") from None
        raise
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def lock_holder(path: Path) -> int | None:
    """The pid of the process holding the pid_lock on `path` now, or None (also where it cannot be told: a link at
    the path, which is never followed, or a file system without locks)."""
    path = Path(path)
    if not path.exists() or path.is_symlink():
        return None
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode(errors="replace").strip()
        return int(holder) if holder.isdigit() else -1
    except OSError as exc:
        if exc.errno in NO_LOCKS:
            return None
        raise
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
