"""SIGKILL `ebmtool mine-negatives` at seeded random moments, rerun it, and get the uninterrupted file exactly.

The mines are real processes (`python -m ebmtool mine-negatives`). Most are killed by the writer itself at one of
its crash points (ebmtool.io.negatives_file.crash_point: between any two steps of committing a batch, rewriting the
journal, assembling the final file and removing the partial directory, including halfway through writing a
file or a journal line); others are SIGKILLed from here after a random delay once they have begun writing (so
also in the middle of mining a batch). After every kill the same command is rerun; the file each chain of
kills ends with must equal the uninterrupted file dataset by dataset (values, dtypes, shapes, layout) and
attribute by attribute, the provenance's creation time aside.

Chain 1 kills at every kind of crash point an uninterrupted mine passes, in the order it passes them, each at a
seeded random occurrence; the other chains kill at seeded random point numbers and random delays.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time

import h5py
import pytest

from ebmtool.io.artifacts import open_h5
from ebmtool.training import train

from helpers import tiny

MINE = ["--k", "3", "--candidates", "3", "--refine-steps", "1", "--seed", "5", "--batch-size", "16", "--limit", "96",
        "--device", "cpu"]
RANDOM_CHAINS = 1
MIN_KILLS = 20


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("kill")  # one thread: conftest's session fixture
    train(tiny(steps=2, seed=1, time_dim=128), d / "base", log=lambda m: None)
    return d / "base" / "ckpt.safetensors"


def _mine(ckpt, cwd, trace, kill=None, delay=None):
    """One mine in `cwd` (`-o negs.h5`, so every run has the same command line); returns (returncode, the crash
    points it passed, stderr). `kill`: EBMTOOL_TEST_KILL_AT; `delay`: SIGKILL it this long after its first
    crash point."""
    if trace.exists():
        trace.unlink()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "EBMTOOL_TEST_TRACE": str(trace)}
    env.pop("EBMTOOL_TEST_KILL_AT", None)
    if kill is not None:
        env["EBMTOOL_TEST_KILL_AT"] = str(kill)
    proc = subprocess.Popen([sys.executable, "-m", "ebmtool", "mine-negatives", str(ckpt), *MINE, "-o", "negs.h5"],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if delay is not None:
        deadline = time.monotonic() + 120
        while proc.poll() is None and not (trace.exists() and trace.stat().st_size):
            assert time.monotonic() < deadline, "the mine never reached its writer"
            time.sleep(0.002)
        time.sleep(delay)
        proc.kill()
    _, stderr = proc.communicate(timeout=120)
    points = trace.read_text().split() if trace.exists() else []
    if proc.returncode == 2 and "negs.h5 already exists" in stderr and os.listdir(cwd) == ["negs.h5"]:
        return 0, points, stderr  # the killed run had finished everything but exiting: the rerun says so
    assert proc.returncode in (0, -9), f"mine exited {proc.returncode} (kill {kill}, delay {delay}):\n{stderr}"
    return proc.returncode, points, stderr


def _layout(d):
    return d.dtype, d.shape, d.chunks, d.compression, d.compression_opts, d.shuffle, d.maxshape


def _assert_same_file(ref, got):
    open_h5(got, "negatives").close()  # sealed, checksums valid
    with h5py.File(ref, "r") as f, h5py.File(got, "r") as g:
        assert sorted(f) == sorted(g)
        for name in f:
            assert _layout(f[name]) == _layout(g[name]), name
            a, b = f[name][()], g[name][()]
            assert a.tobytes() == b.tobytes(), f"dataset {name} differs"
        assert sorted(f.attrs) == sorted(g.attrs)
        assert f.userblock_size == g.userblock_size
        for key in f.attrs:
            if key == "content_sha256":  # a hash over every attribute, provenance (its creation time) included
                continue
            a, b = f.attrs[key], g.attrs[key]
            if key == "provenance":
                a, b = json.loads(a), json.loads(b)
                a.pop("created"), b.pop("created")  # the second each mine started: the only legitimate difference
            assert a == b, f"attribute {key} differs: {a!r} != {b!r}"


def test_mine_killed_anywhere_resumes_to_the_uninterrupted_file(ckpt, tmp_path):
    rng = random.Random(14)
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    rc, points, _ = _mine(ckpt, ref_dir, tmp_path / "trace")
    assert rc == 0 and os.listdir(ref_dir) == ["negs.h5"]
    kinds = list(dict.fromkeys(points))  # every kind of crash point, in the order a mine first passes it
    occurs = {k: points.count(k) for k in kinds}
    killed_at: list[str] = []

    def completed(cwd):
        assert os.listdir(cwd) == ["negs.h5"], os.listdir(cwd)  # no partial directory, no stray temporary file
        _assert_same_file(ref_dir / "negs.h5", cwd / "negs.h5")

    # chain 1: each kind of point once, in order, at a random occurrence among those an uninterrupted mine has;
    # a rerun that completes before reaching its target ends the chain, and a fresh one starts with that target
    todo = [f"{k}#{rng.randint(1, min(occurs[k], 3))}" for k in kinds]
    chains = 0
    while todo:
        cwd = tmp_path / f"kinds{chains}"
        cwd.mkdir()
        chains += 1
        for i in range(len(todo) + 1):
            rc, points, _ = _mine(ckpt, cwd, tmp_path / "trace", todo[0] if todo else None)
            if rc == 0:
                assert i > 0, f"a fresh mine passed no {todo[0]}"
                break
            killed_at.append(points[-1])
            todo.pop(0)
        completed(cwd)
    # further chains: random point numbers, and random delays once the mine has begun writing
    for c in range(RANDOM_CHAINS):
        cwd = tmp_path / f"random{c}"
        cwd.mkdir()
        for i in range(rng.randint(6, 8)):
            delay = rng.uniform(0.0, 0.2) if rng.random() < 0.5 else None
            rc, points, _ = _mine(ckpt, cwd, tmp_path / "trace", None if delay else rng.randint(1, 25), delay)
            if rc == 0:
                break
            killed_at.append(f"after {delay:.3f} s" if delay else points[-1])
        else:
            assert _mine(ckpt, cwd, tmp_path / "trace")[0] == 0
        completed(cwd)
    assert len(killed_at) >= MIN_KILLS, killed_at
    hit = set(killed_at)
    for must in ("chunk:half-written", "journal:half-appended", "assemble:chunk", "assemble:renamed",
                 "remove:journal"):
        assert any(k.startswith(must) for k in hit), f"no kill at {must}: {killed_at}"
    print(f"{len(killed_at)} kills: {killed_at}")
