"""The run directory's lock: one sentence where the file system has no locks (ENOLCK on some network file
systems), and never a link followed at the lock's path."""

import errno
import fcntl

from ebmtool.io import locks
from ebmtool.cli import cli

from helpers import TINY_FLAGS


def _train(runner, out):
    return runner.invoke(cli, ["train", *TINY_FLAGS, "--steps", "2", "--seed", "0", "-o", str(out)])


def test_a_file_system_without_locks_is_one_sentence(runner, tmp_path, monkeypatch):
    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    r = _train(runner, tmp_path / "r")
    assert r.exit_code == 1, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)
    msg = r.output.strip().splitlines()[-1]
    assert msg.startswith("Error: cannot lock ") and "does not support file locks" in msg and "Traceback" not in r.output


def test_a_symlink_at_the_lock_path_is_not_followed(runner, tmp_path):
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me\n")
    out = tmp_path / "r"
    out.mkdir()
    (out / ".lock").symlink_to(victim)
    r = _train(runner, out)
    assert r.exit_code == 2, r.output
    assert victim.read_text() == "keep me\n"
    assert "is a symbolic link" in r.output.strip().splitlines()[-1]
    assert locks.lock_holder(out / ".lock") is None and victim.read_text() == "keep me\n"
