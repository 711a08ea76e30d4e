"""HDF5 artifacts and the file primitives every format shares: schemas, provenance, validation, atomic writes,
a safetensors file's metadata and checksums. The other file-format modules of this layer (`checkpoints` for
safetensors checkpoints, `negatives_file` for the negatives file) build on it; nothing above them opens HDF5 or
safetensors.

Every artifact says what it is (`kind`), which format version wrote it, and where it came from (`provenance`).
Readers check all three and fail with one sentence that names the file. Writers go to a temporary file beside
the target and `os.replace` it, so a killed run never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from pathlib import Path

import h5py
import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from ebmtool import FORMAT_VERSION, __version__
from ebmtool.runtime.errors import InputError, RunError
from ebmtool.tasks.problems import Problems
from ebmtool.io.provenance import code_version, environment, provenance, sha256_file  # noqa: F401 (their home was here)

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
# ebmtool's HDF5 files start with a 512-byte user block (HDF5 skips it; h5py and h5dump read such files as usual)
# holding a sha256 of the rest of the file. Readers check it before the HDF5 library sees a byte: a damaged file
# can make the library loop forever (seen in fault injection: one flipped bit in an attribute message).
USERBLOCK = 512
UB_MAGIC = b"ebmtool-hdf5 v1\n"


def _userblock(digest: str) -> bytes:
    block = UB_MAGIC + f"sha256 {digest}\n".encode()
    return block + b"\0" * (USERBLOCK - len(block))
KINDS = ("checkpoint", "model", "dataset", "metrics", "negatives", "scores", "weights", "evaluation")


# ---------------------------------------------------------------------------------------------------- writing

@contextlib.contextmanager
def atomic_path(target: Path):
    """Yield a temporary path beside `target`; on success fsync and rename it onto the target.

    On any failure the temporary file is removed and the target (if it existed) is left untouched. An OSError
    while writing (a full disk, a read-only directory) becomes one RunError sentence naming the target.
    """
    target = Path(target)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.unlink(missing_ok=True)  # a temporary file left by a killed process of the same pid
        mode = _umask_mode(tmp)
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        if os.stat(tmp).st_mode & 0o777 != mode:
            os.chmod(tmp, mode)  # writers that create their file 0600 (safetensors) follow the umask too
        os.replace(tmp, target)
    except OSError as exc:
        kept = "the previous file is unchanged" if target.exists() else "nothing was written"
        raise RunError(f"could not write {target} ({exc.strerror or exc}); {kept}") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def _umask_mode(path: Path) -> int:
    """Create `path` empty, as open() would (0666 less the umask), and return its permission bits: the mode every
    file ebmtool writes ends with, read without changing the process's umask."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666))
    return os.stat(path).st_mode & 0o777


def jsonable(obj):
    """obj with NaN and inf as None, numpy scalars and arrays as Python values and paths as strings: what every
    JSON report ebmtool prints or writes holds (strict JSON, which has no NaN)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def json_text(obj) -> str:
    """A report as the JSON text that `--json` prints and `--json-file` writes (sorted keys, indented)."""
    return json.dumps(jsonable(obj), indent=2, sort_keys=True, allow_nan=False)


def write_json(path: Path, obj) -> Path:
    """Write a report as JSON (json_text plus a newline) atomically."""
    return write_text(path, json_text(obj) + "\n")


def write_text(path: Path, text: str) -> Path:
    """Write a text file (a Markdown table, a CSV) atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def check_output(path: Path, overwrite: bool, inputs: tuple[Path, ...] = ()) -> Path:
    """Refuse to overwrite an existing output (without --overwrite) or any input file (ever)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a directory; give a file name for the output")
    for src in inputs:
        if src is not None and Path(src).exists() and path.exists() and path.resolve() == Path(src).resolve():
            raise InputError(f"{path}: the output would overwrite an input file; choose another output path")
    if path.exists() and not overwrite:
        raise InputError(f"{path} already exists; pass --overwrite to replace it")
    return path


def write_h5(path: Path, kind: str, datasets: dict[str, np.ndarray], attrs: dict, prov: dict) -> None:
    """Write an HDF5 artifact atomically: chunked gzip+shuffle datasets, JSON provenance, scalar attributes."""
    with atomic_path(Path(path)) as tmp:
        with h5py.File(tmp, "w", track_order=False, userblock_size=USERBLOCK) as f:
            f.attrs["kind"] = kind
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["ebmtool_version"] = __version__
            f.attrs["provenance"] = json.dumps(prov, sort_keys=True)
            for k, v in attrs.items():
                f.attrs[k] = v
            for name, arr in datasets.items():
                write_array(f, name, np.asarray(arr))
        finalize_h5(tmp)


def write_dataset(path: Path, problems: Problems, attrs: dict, prov: dict) -> Path:
    """Write a data set file that train, eval and compare read: `inputs`, `targets` and (when the problems have
    one) `mask`, with `attrs` (task, size, split, ...) and the problems' fingerprint."""
    arrays = {"inputs": problems.x, "targets": problems.y}
    if problems.mask is not None:
        arrays["mask"] = problems.mask
    write_h5(path, "dataset", arrays, {**attrs, "fingerprint": problems.fingerprint}, prov)
    return Path(path)


def write_evaluation(path: Path, errors: dict[str, dict[str, np.ndarray]], baselines: dict[str, np.ndarray], *,
                     step: int, checkpoint: Path, checkpoint_sha256: str, config: dict, problems: dict) -> Path:
    """Write an evaluation file: the per-problem metrics of each weights set (`ema/mse`, `model/mse`, ...) and of
    the trivial predictors (`baseline/zeros`, ...), with the checkpoint's step and sha256 (provenance: the
    evaluation's settings `config` and the problems' description)."""
    datasets = {f"{w}/{k}": v for w, errs in errors.items() for k, v in errs.items()}
    datasets.update({f"baseline/{k}": v for k, v in baselines.items()})
    write_h5(path, "evaluation", datasets, {"step": step, "checkpoint_sha256": checkpoint_sha256},
             provenance("eval", config, inputs={"checkpoint": checkpoint}, problems=problems))
    return Path(path)


def finalize_h5(path: Path) -> None:
    """Seal a finished HDF5 file (created with userblock_size=USERBLOCK): content checksum attribute, then a
    sha256 of the file's HDF5 bytes in the user block. Writers that build a file step by step (appending while
    mining) call this on the temporary file before renaming it; reopening it for writing unseals it.
    """
    with h5py.File(path, "r+") as f:
        if f.userblock_size != USERBLOCK:
            raise ValueError(f"{path} was created without the {USERBLOCK}-byte user block ebmtool seals files with")
        f.attrs[H5_CHECKSUM] = h5_content_sha256(f)
    with open(path, "r+b") as fh:
        fh.seek(USERBLOCK)
        h = hashlib.sha256()
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
        fh.seek(0)
        fh.write(_userblock(h.hexdigest()))


def write_array(group, name, arr, maxshape=None):
    """One dataset, chunked (~256 KiB) and compressed when it is more than a few KiB."""
    kwargs = {"track_times": False}
    if arr.size * arr.itemsize > 16384 and arr.ndim >= 1:
        row_bytes = max(1, int(np.prod(arr.shape[1:])) * arr.itemsize)
        rows = int(max(1, min(arr.shape[0], (256 * 1024) // row_bytes)))
        kwargs.update(chunks=(rows, *arr.shape[1:]), compression="gzip", compression_opts=4, shuffle=True)
    if maxshape is not None:
        kwargs["maxshape"] = maxshape
        kwargs.setdefault("chunks", True)
    return group.create_dataset(name, data=arr, **kwargs)


# ---------------------------------------------------------------------------------------------------- integrity
#
# Neither format detects a flipped bit inside tensor or array bytes, so every artifact ebmtool writes carries a
# sha256 of its contents, and readers verify it before using anything. The hashes are over *contents* (names,
# dtypes, shapes, bytes, metadata), not file bytes, so they do not depend on chunking or compression.

H5_CHECKSUM = "content_sha256"
ST_CHECKSUM = "ebmtool.content_sha256"
# Errors h5py raises on damaged files (HDF5 library errors arrive as OSError, KeyError, ValueError, RuntimeError
# or TypeError depending on which structure is damaged). Caught only around reads, and always re-raised as one
# InputError sentence naming the file.
H5_READ_ERRORS = (OSError, KeyError, ValueError, RuntimeError, TypeError)


def _update_array(h, name: str, arr: np.ndarray) -> None:
    arr = np.ascontiguousarray(arr)
    if arr.dtype.kind in "OSU":
        payload = json.dumps([x.decode() if isinstance(x, bytes) else str(x) for x in arr.reshape(-1).tolist()])
        arr_bytes = payload.encode()
    else:
        arr_bytes = arr.tobytes()
    h.update(json.dumps([name, arr.dtype.str, list(arr.shape), len(arr_bytes)]).encode())
    h.update(arr_bytes)


def h5_content_sha256(f: h5py.File) -> str:
    """sha256 over every dataset (name, dtype, shape, values) and every attribute except the checksum itself."""
    h = hashlib.sha256()
    names = []
    f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    for name in sorted(names):
        _update_array(h, "dataset:" + name, np.asarray(f[name][()]))
    for key in sorted(k for k in f.attrs.keys() if k != H5_CHECKSUM):
        v = f.attrs[key]
        _update_array(h, "attr:" + key, np.asarray(v.decode() if isinstance(v, bytes) else v))
    return h.hexdigest()


def _written_by_ebmtool(f: h5py.File) -> bool:
    return any(k in f.attrs for k in ("ebmtool_version", "format_version", "provenance", "kind", H5_CHECKSUM))


def verify_h5(path: Path, f: h5py.File) -> None:
    """Refuse an ebmtool HDF5 file whose contents do not match its checksum (user files without one pass)."""
    if not _written_by_ebmtool(f):
        return
    stored = f.attrs.get(H5_CHECKSUM)
    if stored is None:
        raise InputError(f"{path} is corrupted or incomplete (an ebmtool HDF5 file without its content checksum)")
    if (stored.decode() if isinstance(stored, bytes) else str(stored)) != h5_content_sha256(f):
        raise InputError(f"{path} is corrupted (checksum mismatch: its contents changed after ebmtool wrote it)")


def tensors_sha256(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> str:
    """sha256 over tensors (sorted names, dtypes, shapes, bytes) and metadata (all keys but the checksum)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        h.update(json.dumps([name, str(t.dtype), list(t.shape), len(raw)]).encode())
        h.update(raw)
    h.update(json.dumps({k: v for k, v in meta.items() if k != ST_CHECKSUM}, sort_keys=True).encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------- reading

def sniff(path: Path) -> str:
    """'safetensors', 'hdf5', or raise InputError for anything else (missing, empty, other formats)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path} is a directory, not a file")
    with open(path, "rb") as fh:
        head = fh.read(16)
    if len(head) == 0:
        raise InputError(f"{path} is empty")
    if head.startswith(HDF5_MAGIC) or head.startswith(UB_MAGIC):
        return "hdf5"
    if len(head) >= 9:
        n = int.from_bytes(head[:8], "little")
        if 2 <= n <= 100_000_000 and head[8:9] == b"{":
            return "safetensors"
    raise InputError(f"{path} is neither a safetensors nor an HDF5 file")


def check_sealed(path: Path) -> None:
    """For a file sealed by finalize_h5, check the file hash in its user block (user files pass through)."""
    with open(path, "rb") as fh:
        block = fh.read(USERBLOCK)
        if not block.startswith(UB_MAGIC):
            return
        line = block[len(UB_MAGIC):].split(b"\n", 1)[0]
        if len(block) < USERBLOCK or not line.startswith(b"sha256 "):
            raise InputError(f"{path} is corrupted or truncated (its ebmtool header is damaged)")
        h = hashlib.sha256()
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    if line[len(b"sha256 "):].decode("ascii", "replace") != h.hexdigest():
        raise InputError(f"{path} is corrupted or truncated (file checksum mismatch: its bytes changed after "
                         "ebmtool wrote it)")


def _h5_file(path: Path) -> h5py.File:
    """h5py.File(path, 'r') after the seal check; HDF5 errors become one InputError sentence."""
    check_sealed(path)
    try:
        return h5py.File(path, "r")
    except H5_READ_ERRORS as exc:
        raise _h5_damaged(path, exc) from None


def _h5_damaged(path: Path, exc: BaseException) -> InputError:
    return InputError(f"{path} is a damaged or truncated HDF5 file ({type(exc).__name__}: {exc})")


def h5_kind(path: Path) -> str:
    with _h5_file(path) as f:
        try:
            return _kind_of(f)
        except H5_READ_ERRORS as exc:
            raise _h5_damaged(path, exc) from None


def artifact_kind(path: Path) -> str:
    fmt = sniff(path)
    if fmt == "hdf5":
        return h5_kind(path)
    meta = safetensors_metadata(path)
    return meta.get("ebmtool.kind", "unknown")


def safetensors_metadata(path: Path) -> dict:
    """The string metadata of an ebmtool safetensors file (no tensors read); InputError for a damaged file or one
    that ebmtool did not write."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"{path} is a damaged or truncated safetensors file ({exc})") from None
    if not meta or "ebmtool.kind" not in meta:
        raise InputError(f"{path} is a safetensors file but not one written by ebmtool (no ebmtool metadata)")
    return meta


def format_version(path: Path, raw) -> int:
    """The format version a file records, as an int (InputError when it is not one)."""
    try:
        return int(raw)
    except (TypeError, ValueError):
        raise InputError(f"{path} is corrupted (format version {raw!r} is not a number)") from None


def _check_h5(path: Path, f: h5py.File, expect: str, kind: str) -> None:
    """Format version, content checksum and kind of an open HDF5 file, in the order that names the real problem.

    A known kind that is not the expected one is refused at once (no need to hash a large file to say so); any
    other mismatch is decided after the checksum, so a damaged `kind` reads as corruption, not as a strange kind.
    """
    version = format_version(path, f.attrs.get("format_version", 1))
    if version > FORMAT_VERSION:
        raise InputError(f"{path} was written by a newer ebmtool (format {version}, this one reads "
                         f"{FORMAT_VERSION}); upgrade ebmtool to read it")
    if kind != expect and kind in KINDS:
        raise InputError(f"{path} is a {kind} file, not a {expect} file")
    verify_h5(path, f)
    if kind != expect:
        raise InputError(f"{path} is a {kind} file, not a {expect} file")


def _kind_of(f: h5py.File) -> str:
    kind = f.attrs.get("kind")
    if kind is None:
        return "dataset" if "inputs" in f and "targets" in f else "unknown"
    return kind.decode() if isinstance(kind, bytes) else str(kind)


def open_h5(path: Path, expect: str) -> h5py.File:
    """Open an HDF5 artifact of kind `expect`, checking kind, format version and content checksum."""
    path = Path(path)
    fmt = sniff(path)
    if fmt != "hdf5":
        raise InputError(f"{path} is a safetensors file, not an HDF5 {expect} file")
    f = _h5_file(path)
    try:
        _check_h5(path, f, expect, _kind_of(f))
    except InputError:
        f.close()
        raise
    except H5_READ_ERRORS as exc:
        f.close()
        raise _h5_damaged(path, exc) from None
    return f


def read_provenance(f: h5py.File) -> dict:
    raw = f.attrs.get("provenance")
    if not raw:
        return {}
    try:
        prov = json.loads(raw)
    except ValueError:
        raise InputError(f"{f.filename}: its 'provenance' attribute is not valid JSON") from None
    if not isinstance(prov, dict):
        raise InputError(f"{f.filename}: its 'provenance' attribute is not a JSON object")
    return prov


def read_dataset(path: Path) -> Problems:
    """A data set: any HDF5 with `inputs` and `targets` (rows = problems), optional `mask` like targets."""
    path = Path(path)
    if sniff(path) != "hdf5":
        raise InputError(f"{path} is not an HDF5 data file (a safetensors file was given)")
    f = _h5_file(path)
    try:
        with f:
            kind = f.attrs.get("kind")
            _check_h5(path, f, "dataset", "dataset" if kind is None else _kind_of(f))
            missing = [k for k in ("inputs", "targets") if k not in f]
            if missing:
                raise InputError(f"{path} has no {' or '.join(repr(m) for m in missing)} dataset; a data file needs "
                                 "'inputs' and 'targets' (rows = problems)")
            for name in ("inputs", "targets", "mask"):
                if name in f and (not isinstance(f[name], h5py.Dataset) or f[name].dtype.kind not in "biuf"):
                    raise InputError(f"{path}: '{name}' must be a numeric dataset")
            x, y = np.asarray(f["inputs"], dtype=np.float32), np.asarray(f["targets"], dtype=np.float32)
            mask = np.asarray(f["mask"], dtype=np.float32) if "mask" in f else None
            desc = read_provenance(f).get("data", {})
    except H5_READ_ERRORS as exc:
        raise _h5_damaged(path, exc) from None
    if not isinstance(desc, dict):
        raise InputError(f"{path}: the 'data' entry of its provenance is not a JSON object")
    if x.ndim == 0 or y.ndim == 0 or x.shape[0] != y.shape[0]:
        raise InputError(f"{path}: 'inputs' and 'targets' must have the same number of rows "
                         f"(got shapes {x.shape} and {y.shape})")
    if x.shape[0] == 0:
        raise InputError(f"{path} holds no problems (0 rows)")
    x, y = x.reshape(len(x), -1), y.reshape(len(y), -1)
    if x.shape[1] == 0 or y.shape[1] == 0:
        raise InputError(f"{path}: 'inputs' and 'targets' need at least one column (got shapes {x.shape}, {y.shape})")
    if mask is not None:
        if mask.size != y.size:
            raise InputError(f"{path}: 'mask' must have the shape of 'targets' ({y.shape}), got {mask.shape}")
        mask = mask.reshape(y.shape)
    for name, arr in (("inputs", x), ("targets", y), ("mask", mask)):
        if arr is not None and not np.isfinite(arr).all():
            row, col = np.argwhere(~np.isfinite(arr))[0]
            raise InputError(f"{path}: '{name}' has a non-finite value at row {row}, column {col}")
    return Problems(x, y, mask, desc)
