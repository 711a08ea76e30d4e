"""The metrics of a run: the columns of metrics.h5, its writer and its one reader, and the live log.

metrics.h5 is the sealed artifact, rewritten at checkpoints and at the end. metrics.jsonl is the live log:
each row is appended (and flushed) as it is logged, so a running job can be watched (`ebmtool info RUN`,
and the trackers of ebmtool.training.trackers); a torn last line after a hard kill is skipped and reported, never fatal.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ebmtool.negatives import curriculum as curriculum_mod
from ebmtool.runtime import distributed as dist
from ebmtool.io.artifacts import atomic_path, jsonable, open_h5, provenance, write_h5
from ebmtool.config import TrainConfig
from ebmtool.method.diffusion import NUM_LEVELS
from ebmtool.runtime.errors import InputError
from ebmtool.negatives import registry

LIVE_LOG = "metrics.jsonl"

METRIC_COLUMNS = ("step", "loss_total", "loss_denoise", "loss_energy", "energy_pos", "energy_neg", "margin",
                  "p_hard", "norm_ratio", "grad_norm", "lr", "energy_weight", "skipped_steps", "step_seconds",
                  "wall_time", "compute_flops")
LEVEL_COLUMNS = tuple(f"loss_denoise_t{i}" for i in range(NUM_LEVELS))  # the denoising loss per noise level
# the geometry of the pairs (ebmtool.negatives.kappa) and the two terms' gradients (diagnostics.backward_terms)
PAIR_COLUMNS = ("p_hard_true", "p_hard_false", "kappa", "false_negative_fraction")
NEGATIVE_COLUMNS = ("stage", "k", "active_fraction", "dup_fraction", "excluded_fraction", "weight_entropy",
                    "weight_ess", "sans_alpha", "grad_share_energy", "grad_cosine", "grad_ratio_energy",
                    *PAIR_COLUMNS)
SOURCE_COLUMNS = ("fraction", "configured", "energy_pos", "energy_neg", "margin", "p_hard", "active_fraction",
                  "dup_fraction", "norm_ratio", "seconds", *PAIR_COLUMNS)


def metric_columns(cfg: TrainConfig) -> tuple[str, ...]:
    """Columns of metrics.h5 for this run: the core ones, the negatives' diagnostics, and per source
    `source/<name>/<metric>` for every source the run's curriculum uses."""
    if not cfg.supervise_energy:
        return METRIC_COLUMNS + LEVEL_COLUMNS
    floored = ("floored_fraction",) if cfg.kappa_floor else ()
    cols = list(METRIC_COLUMNS) + list(LEVEL_COLUMNS) + list(NEGATIVE_COLUMNS) + list(floored)
    if cfg.offline_negatives:
        cols.append("offline_fraction")
    for name in curriculum_mod.sources_of(cfg.stages()):
        cols += [f"source/{name}/{c}" for c in SOURCE_COLUMNS + floored]
        source = registry.get(name)
        if source.refines:
            cols.append(f"source/{name}/accept_fraction")
        if source.columns is not None:
            cols += [f"source/{name}/{c}" for c in source.columns(cfg.negative_settings(), NUM_LEVELS)]
    return tuple(cols)


# Why an arm trains as it does, in one table of compare and report: false negatives and the two terms' gradients.
WHY_COLUMNS = ("kappa", "false_negative_fraction", "p_hard_true", "p_hard_false", "grad_cosine", "grad_ratio_energy",
               "floored_fraction")
TAIL_FRACTION = 0.1  # tail means: the last 10 % of a run's logged rows (the trained state, not warm-up)


def tail_means(columns: dict[str, np.ndarray], names, fraction: float = TAIL_FRACTION) -> dict[str, float]:
    """{name: mean of its finite values over the last `fraction` of the rows} for the `names` read_metrics'
    columns hold (nan where a column holds no finite value there; an absent column is absent)."""
    rows = columns["step"].shape[0] if "step" in columns else 0
    out: dict[str, float] = {}
    if rows == 0:
        return out
    tail = max(1, math.ceil(fraction * rows))
    for col in names:
        if col in columns and columns[col].shape == (rows,):
            a = np.asarray(columns[col][rows - tail:], dtype=np.float64)
            a = a[np.isfinite(a)]
            out[col] = float(a.mean()) if a.size else float("nan")
    return out


EVAL_COLUMNS = ("step", "metric_model", "metric_ema", "mse_model", "mse_ema", "mse_ref_scaled_model",
                "mse_ref_scaled_ema")



def write_metrics(path: Path, st) -> None:
    """metrics.h5 of a RunState: every logged row and evaluation row so far (atomic)."""
    rows, erows = st.rows, st.eval_rows
    datasets = {c: np.asarray([r.get(c, np.nan) for r in rows], dtype=np.float64) for c in metric_columns(st.cfg)}
    datasets["step"] = datasets["step"].astype(np.int64)
    datasets.update({f"eval/{c}": np.asarray([r.get(c, np.nan) for r in erows], dtype=np.float64)
                     for c in EVAL_COLUMNS})
    datasets["eval/step"] = datasets["eval/step"].astype(np.int64)
    prov = provenance("train", st.cfg.to_dict(), data_fingerprint=st.data.fingerprint, device=st.device)
    write_h5(path, "metrics", datasets,
             {"task": st.data.task.label, "seed": st.cfg.seed, "step": st.step, "skipped_steps": st.skipped,
              "metric": st.data.task.metric, "higher_is_better": bool(st.data.task.higher_is_better),
              "world_size": dist.world_size(), "compute_rule": st.compute_rule}, prov)


def read_metrics(path: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(columns, eval_columns) of a metrics.h5 (verified), each dataset as stored, in the file's order: `columns`
    by full name (`loss_total`, `source/anm/p_hard`), `eval_columns` without their `eval/` prefix. The one
    reader of the layout: a resume, `info`, `compare` and `report` all read through it."""
    with open_h5(path, "metrics") as f:
        names: list[str] = []
        f.visit(names.append)
        arrays = {n: f[n][()] for n in names if hasattr(f[n], "shape")}  # datasets; groups have no shape
    columns = {n: a for n, a in arrays.items() if not n.startswith("eval/")}
    return columns, {n[len("eval/"):]: a for n, a in arrays.items() if n.startswith("eval/")}


def source_columns(columns: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """The per-source columns of read_metrics' `columns` by source: {name: {metric: array}} from
    `source/<name>/<metric>`, in the file's order."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for name, a in columns.items():
        parts = name.split("/")
        if len(parts) == 3 and parts[0] == "source":
            out.setdefault(parts[1], {})[parts[2]] = a
    return out


def read_metric_rows(path: Path, upto_step: int, columns=METRIC_COLUMNS) -> tuple[list[dict], list[dict]]:
    """Rows of an existing metrics.h5 up to a checkpoint's step (a resume continues the same curves).

    The file is read through the verified reader: a damaged metrics.h5 stops the resume with one sentence
    (never a silent restart of the curves).
    """
    if not path.exists():
        return [], []
    try:
        stored, stored_eval = read_metrics(path)
    except InputError as exc:
        raise InputError(f"{exc}; move it away to resume without the earlier metric rows") from None
    cols = [c for c in columns if c in stored]
    rows = [dict(zip(cols, vals)) for vals in zip(*(stored[c].tolist() for c in cols))]
    ecols = [c for c in EVAL_COLUMNS if c in stored_eval]
    erows = [dict(zip(ecols, vals)) for vals in zip(*(stored_eval[c].tolist() for c in ecols))]
    return [r for r in rows if r["step"] <= upto_step], [r for r in erows if r["step"] <= upto_step]



def _line(kind: str, row: dict) -> str:
    """One live-log line: strict JSON (NaN as null, numpy values as Python ones), sorted keys."""
    return json.dumps(jsonable({"kind": kind, **row}), sort_keys=True, allow_nan=False) + "\n"


class LiveLog:
    """metrics.jsonl: one JSON object per logged row ({"kind": "train" | "eval", ...}), appended and flushed.

    Opened at the start of a run (or a resume), it is rewritten (atomically) with the rows metrics.h5 holds, so
    rows a killed run logged after its last checkpoint do not stay in the curve twice."""

    def __init__(self, path: Path, rows: list[dict], eval_rows: list[dict], header: dict | None = None):
        self.path = Path(path)
        with atomic_path(self.path) as tmp, open(tmp, "w") as f:
            if header is not None:  # what the run is and where it ends: `ebmtool info DIR` shows its progress
                f.write(_line("run", header))
            for kind, rs in (("train", rows), ("eval", eval_rows)):
                for r in rs:
                    f.write(_line(kind, r))
        self.file = open(self.path, "a")

    def append(self, row: dict, kind: str = "train") -> None:
        self.file.write(_line(kind, row))
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def read_live_log(path: Path) -> tuple[list[dict], list[dict], int]:
    """(train rows, eval rows, torn lines) of a metrics.jsonl; a line that does not parse (a write cut short by a
    hard kill) is counted and skipped. Missing values (null) read back as NaN."""
    rows, erows, torn = [], [], 0
    with open(path) as f:
        for line in f:
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                torn += 1
                continue
            kind = r.pop("kind", "train")
            if kind == "run":
                continue
            r = {k: (math.nan if v is None else v) for k, v in r.items()}
            (erows if kind == "eval" else rows).append(r)
    return rows, erows, torn


def live_progress(path: Path) -> dict:
    """The live log's run header (task, seed, steps, budget), its latest train and eval rows, the number of rows
    and of torn lines: what `ebmtool info DIR` shows while a run trains."""
    header = {}
    with open(path) as f:
        try:
            first = json.loads(f.readline() or "{}")
        except json.JSONDecodeError:
            first = {}
    if first.get("kind") == "run":
        header = {k: v for k, v in first.items() if k != "kind"}
    rows, erows, torn = read_live_log(path)
    return {"run": header, "rows": len(rows), "torn_lines": torn, "latest": rows[-1] if rows else None,
            "latest_eval": erows[-1] if erows else None}
