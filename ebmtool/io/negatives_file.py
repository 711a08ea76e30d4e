"""The negatives file of `ebmtool mine-negatives`: its reader, and the crash-safe partial state it is built in."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
from pathlib import Path

import h5py
import numpy as np

from ebmtool import FORMAT_VERSION, __version__
from ebmtool.io.artifacts import (
    USERBLOCK,
    finalize_h5,
    open_h5,
    read_provenance,
    sha256_file,
)
from ebmtool.runtime.errors import InputError, RunError
from ebmtool.io.locks import pid_lock


def read_negatives(path: Path) -> dict:
    """{"arrays", "attrs"} of a negatives file (ebmtool mine-negatives), verified by its kind."""
    with open_h5(path, "negatives") as f:
        arrays = {k: f[k][()] for k in ("index", "level", "eps", "positives", "inputs", "negatives", "valid",
                                        "energy_pos", "energy")}
        arrays["mask"] = f["mask"][()] if "mask" in f else None  # tasks with given entries (Sudoku)
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        attrs["provenance"] = read_provenance(f)
    return {"arrays": arrays, "attrs": attrs}


# ---------------------------------------------------------------------------------------------------- partial negatives
#
# `mine-negatives` builds its file in OUTPUT.partial/, a directory in which no committed byte is ever modified:
#
#   journal.jsonl       one line per record, "<sha256 of the JSON> <JSON>\n"; line 1 is the header (the mine's
#                       identity: checkpoint, data, options), then one line per committed chunk ({"chunk": file,
#                       "start", "end", "sha256" of the file, "counts"}), and once the final file is built,
#                       {"assembled": its sha256}
#   rows-<start>.npz    the rows [start, end) of one chunk (one batch; one round of batches under torchrun)
#   lock                flock held by the process that writes the directory
#
# The directory appears with its header (built beside it and renamed). A chunk goes to a temporary file, is
# fsynced and renamed, and then its journal line is appended and fsynced: the line is the commit. On resume the
# journal is read up to its first torn or unverifiable line, every chunk is checked against its sha256, and the
# first chunk that fails ends the kept prefix; everything after it (lines and files) is dropped, so its rows are
# mined again (mining is deterministic per batch). The final HDF5 file is assembled from the chunks into a
# temporary file inside the directory, sealed, fsynced and renamed onto OUTPUT, and the directory is removed,
# the journal last: a directory without a journal beside a present OUTPUT is a finished mine's leftover.

PARTIAL_FORMAT = "ebmtool negatives partial v1"
PARTIAL_JOURNAL, PARTIAL_LOCK, PARTIAL_ASSEMBLY = "journal.jsonl", "lock", "assembled.h5.tmp"
_CRASH_POINTS: dict[str, int] = {}


def crash_point(where: str) -> None:
    """Test hook between any two steps of the partial-negatives writer (tests/test_mining_kill.py).

    EBMTOOL_TEST_TRACE=FILE appends each point's name to FILE. EBMTOOL_TEST_KILL_AT SIGKILLs this process at a
    point: N = its N-th point, NAME = the first point called NAME, NAME#M = the M-th. Unset (always, outside
    the tests), nothing happens."""
    kill, trace = os.environ.get("EBMTOOL_TEST_KILL_AT"), os.environ.get("EBMTOOL_TEST_TRACE")
    if not kill and not trace:
        return
    n = _CRASH_POINTS[""] = _CRASH_POINTS.get("", 0) + 1
    m = _CRASH_POINTS[where] = _CRASH_POINTS.get(where, 0) + 1
    if trace:
        with open(trace, "a") as fh:
            fh.write(where + "\n")
    if kill in (str(n), where, f"{where}#{m}"):
        os.kill(os.getpid(), signal.SIGKILL)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(path: Path, data: bytes, where: str) -> None:
    """`data` under `path`, all or nothing: a temporary file beside it, fsynced and renamed, then the directory
    fsynced. A kill at any moment leaves either the old state (plus a stray temporary file) or the new file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data[:len(data) // 2])
        fh.flush()
        crash_point(f"{where}:half-written")
        fh.write(data[len(data) // 2:])
        fh.flush()
        crash_point(f"{where}:written")
        os.fsync(fh.fileno())
    crash_point(f"{where}:fsynced")
    os.replace(tmp, path)
    crash_point(f"{where}:renamed")
    _fsync_dir(path.parent)


def _journal_line(record: dict) -> bytes:
    body = json.dumps(record, sort_keys=True).encode()
    return hashlib.sha256(body).hexdigest().encode() + b" " + body + b"\n"


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{name: np.ascontiguousarray(a) for name, a in arrays.items()})
    return buf.getvalue()


class PartialNegatives:
    """The crash-safe partial state of a negatives file (OUTPUT.partial/, layout above). Only the process that
    writes the file (process 0 under torchrun) uses one."""
    def __init__(self, output: Path):
        self.output = Path(output)
        self.path = self.output.with_name(self.output.name + ".partial")
        self.chunks: list[dict] = []  # the committed chunk records, in row order
        self._lock_fd: int | None = None
        self._journal_clean = True

    # -------------------------------------------------------------------------------------- state

    @property
    def rows(self) -> int:
        return self.chunks[-1]["end"] if self.chunks else 0

    def counts(self, names) -> dict:
        return {c: sum(int(ch["counts"].get(c, 0)) for ch in self.chunks) for c in names}  # older journals: 0

    def _read_journal(self) -> list[dict] | None:
        """The journal's records up to its first torn or unverifiable line; None when there is no journal.
        (`self._journal_clean`: whether that was all of it.)"""
        try:
            raw = (self.path / PARTIAL_JOURNAL).read_bytes()
        except FileNotFoundError:
            return None
        records, used = [], 0
        for line in raw.split(b"\n")[:-1]:  # what follows the last newline is a line a kill cut short
            digest, _, body = line.partition(b" ")
            if hashlib.sha256(body).hexdigest().encode() != digest:
                break
            try:
                records.append(json.loads(body))
            except ValueError:
                break
            used += len(line) + 1
        self._journal_clean = used == len(raw)
        return records

    def finished(self) -> bool:
        """True when a mine of OUTPUT completed (OUTPUT renamed into place) but was killed while removing this
        directory: a rerun only has to finish the removal. (The directory is never without its journal but at
        the very end of that removal: it appears with one, and is discarded by renaming it away first.)"""
        if not (self.path.is_dir() and self.output.is_file()):
            return False
        records = self._read_journal()
        if records is None:
            return not any(f.name.startswith("rows-") for f in self.path.iterdir())
        return bool(records) and records[-1].get("assembled") == sha256_file(self.output)

    # -------------------------------------------------------------------------------------- opening

    def open(self, identity: dict, *, overwrite: bool = False) -> str:
        """Lock the partial state and bring it to its last verified commit (starting it when there is none).

        Returns 'finished' (see `finished`; nothing else done) or 'open' (then `rows` rows are committed).
        Raises InputError when it belongs to another mine (other checkpoint, data or options), when it is an
        earlier ebmtool's partial file, when another process holds it, or when its header is damaged."""
        p = self.path
        for stray in (self._beside(".new"), self._beside(".old")):  # left by a kill while starting or discarding
            self._discard(stray)
        if p.exists() and not p.is_dir():
            if not overwrite:
                raise InputError(f"{p} is the partial file of an earlier ebmtool (written in place, so a kill may "
                                 "have damaged it); delete it or pass --overwrite to start again")
            p.unlink()
        if overwrite and p.is_dir():
            os.rename(p, self._beside(".old"))
            self._discard(self._beside(".old"))
        elif self.finished():
            self.chunks = [r for r in (self._read_journal() or []) if "chunk" in r]
            return "finished"
        if p.is_dir():
            self._lock()
            records = self._read_journal()
            if records is not None:
                self._recover(records, identity)
                return "open"
            self.close()  # a finished mine's leftover whose OUTPUT is gone: start again
            self._discard(p)
        self._start(identity)
        return "open"

    def _beside(self, suffix: str) -> Path:
        return self.path.with_name("." + self.path.name + suffix)

    @staticmethod
    def _discard(path: Path) -> None:
        if path.is_dir():
            PartialNegatives._clear_dir(path, keep=())
            try:
                path.rmdir()
            except OSError:
                raise InputError(f"{path} holds files ebmtool did not write there; move them away") from None

    def _lock(self) -> None:
        self._lock_fd = pid_lock(self.path / PARTIAL_LOCK, f"{self.path} is in use: process {{pid}} is mining into it")

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _start(self, identity: dict) -> None:
        """A new directory holding the journal's header, built beside and renamed into place in one step."""
        new = self._beside(".new")
        new.mkdir(parents=True)
        _write_durably(new / PARTIAL_JOURNAL, _journal_line({"format": PARTIAL_FORMAT, "identity": identity}),
                       "header")
        os.rename(new, self.path)
        _fsync_dir(self.path.parent)
        crash_point("partial:created")
        self._lock()
        self.chunks = []

    def _recover(self, records: list[dict], identity: dict) -> None:
        if not records or records[0].get("format") != PARTIAL_FORMAT:
            raise InputError(f"{self.path} is a damaged partial mining directory (its journal has no valid "
                             "header); delete it or pass --overwrite to start again")
        stored = records[0].get("identity")
        if stored != identity:
            diff = sorted(k for k in identity if (stored or {}).get(k) != identity[k])
            raise InputError(f"{self.path} was started with other {', '.join(diff)}; rerun with the same options "
                             "to continue it, or pass --overwrite to start again")
        kept = []
        for rec in records[1:]:
            if "chunk" not in rec or rec.get("start") != (kept[-1]["end"] if kept else 0):
                break  # an {"assembled"} record whose OUTPUT never appeared: assembled again from the chunks
            try:
                ok = sha256_file(self.path / rec["chunk"]) == rec["sha256"]
            except OSError:
                ok = False
            if not ok:
                break
            kept.append(rec)
        self.chunks = kept
        self._clear(keep={PARTIAL_JOURNAL, PARTIAL_LOCK, *(r["chunk"] for r in kept)})
        if len(kept) != len(records) - 1 or not self._journal_clean:  # drop what is not kept before appending
            body = b"".join(_journal_line(r) for r in [records[0], *kept])
            _write_durably(self.path / PARTIAL_JOURNAL, body, "journal-rewrite")

    @staticmethod
    def _clear_dir(path: Path, keep) -> None:
        """Remove the files of a partial directory that `keep` does not name (only names it may hold)."""
        for f in sorted(path.iterdir()):
            ours = f.name in (PARTIAL_JOURNAL, PARTIAL_LOCK) or f.name.endswith(".tmp") or (
                f.name.startswith("rows-") and f.name.endswith(".npz"))
            if ours and f.name not in keep and f.is_file():
                f.unlink()

    def _clear(self, keep) -> None:
        PartialNegatives._clear_dir(self.path, keep)

    # -------------------------------------------------------------------------------------- writing

    def _append_record(self, record: dict, where: str) -> None:
        line = _journal_line(record)
        with open(self.path / PARTIAL_JOURNAL, "ab") as fh:
            fh.write(line[:len(line) // 2])
            fh.flush()
            crash_point(f"{where}:half-appended")
            fh.write(line[len(line) // 2:])
            fh.flush()
            os.fsync(fh.fileno())
        crash_point(f"{where}:appended")

    def append(self, start: int, arrays: dict[str, np.ndarray], counts: dict) -> None:
        """Commit rows [start, start + len) (the next ones) with their counts."""
        if start != self.rows:
            raise ValueError(f"chunk at row {start}, but {self.rows} rows are committed")
        end = start + len(arrays["index"])
        name = f"rows-{start:012d}.npz"
        data = _npz_bytes(arrays)
        _write_durably(self.path / name, data, "chunk")
        rec = {"chunk": name, "start": start, "end": end, "sha256": hashlib.sha256(data).hexdigest(),
               "counts": {k: int(v) for k, v in counts.items()}}
        self._append_record(rec, "journal")
        self.chunks.append(rec)

    def _load(self, rec: dict) -> dict[str, np.ndarray]:
        data = (self.path / rec["chunk"]).read_bytes()
        if hashlib.sha256(data).hexdigest() != rec["sha256"]:
            raise RunError(f"{self.path / rec['chunk']} changed after it was committed; rerun to mine its rows "
                           "again")
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return {name: z[name] for name in z.files}

    def assemble(self, shapes: dict[str, tuple[tuple, np.dtype]], attrs: dict, prov: dict,
                 chunk_rows: int) -> None:
        """Build the negatives file from the committed chunks (datasets `shapes`: name -> (row shape, dtype),
        chunked by at most `chunk_rows` rows, gzip), seal it and rename it onto OUTPUT; then remove the directory."""
        n = self.rows
        tmp = self.path / PARTIAL_ASSEMBLY
        with h5py.File(tmp, "w", userblock_size=USERBLOCK) as f:
            f.attrs["kind"] = "negatives"
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["ebmtool_version"] = __version__
            for name, (shape, dtype) in shapes.items():
                row_bytes = max(1, int(np.prod(shape or (1,))) * np.dtype(dtype).itemsize)
                chunk = max(1, min(chunk_rows, (256 * 1024) // row_bytes))
                f.create_dataset(name, shape=(n, *shape), maxshape=(None, *shape), dtype=dtype,
                                 chunks=(chunk, *shape), compression="gzip", compression_opts=4, shuffle=True,
                                 track_times=False)
            for rec in self.chunks:
                arrays = self._load(rec)
                for name in shapes:
                    f[name][rec["start"]:rec["end"]] = arrays[name]
                crash_point("assemble:chunk")
            f.attrs["provenance"] = json.dumps(prov, sort_keys=True)
            f.attrs.update(attrs)
        crash_point("assemble:written")
        finalize_h5(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        crash_point("assemble:sealed")
        self._append_record({"assembled": sha256_file(tmp)}, "assembled")
        self.output.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, self.output)
        _fsync_dir(self.output.parent)
        crash_point("assemble:renamed")
        self.remove()

    def remove(self) -> None:
        """Remove the directory (its chunks first, the journal last; see `finished`)."""
        if not self.path.is_dir():
            return
        for rec in self.chunks:
            (self.path / rec["chunk"]).unlink(missing_ok=True)
            crash_point("remove:chunk")
        self._clear(keep={PARTIAL_JOURNAL})
        crash_point("remove:files")
        (self.path / PARTIAL_JOURNAL).unlink(missing_ok=True)
        crash_point("remove:journal")
        self.close()
        try:
            self.path.rmdir()
        except OSError:  # a file ebmtool did not put there: leave it, and the directory, to the user
            pass
        self.chunks = []


def negatives_k(path: Path) -> int:
    """K, the negatives per problem a negatives file holds (`train --offline-negatives FILE` takes its K by default)."""
    with open_h5(path, "negatives") as f:
        return int(f["negatives"].shape[1])
