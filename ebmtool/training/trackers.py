"""Trackers: where a run's logged rows go besides metrics.h5 and the live log metrics.jsonl (`--tracker`).

One small interface: a tracker is opened with the run's hyper-parameters and the rows metrics.h5 already holds (a
resumed run's curves), receives each row as it is logged (`append(row, kind)`, kind "train" or "eval"), and is
closed with the run's status. A row is whatever columns it has: a tracker never assumes a fixed list, and a column
that first appears mid-run is taken as it comes.

- csv: OUTPUT/metrics.csv (train rows) and OUTPUT/metrics_eval.csv (validation rows), next to metrics.h5, plus
  OUTPUT/hparams.json (the resolved configuration).
- tensorboard: every column as a scalar (eval columns under eval/) and the configuration as TensorBoard HParams,
  in OUTPUT/tensorboard (pip install 'ebmtool[tensorboard]').
- mlflow: an MLflow run (parameters = the configuration, metrics = the columns) in the store MLflow itself
  chooses (MLFLOW_TRACKING_URI, else its default), experiment MLFLOW_EXPERIMENT_NAME or "ebmtool"; a resumed run
  continues the same MLflow run (OUTPUT/mlflow.json). pip install 'ebmtool[mlflow]'.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import time
from pathlib import Path

from ebmtool import __version__
from ebmtool.io.artifacts import atomic_path, jsonable, write_json
from ebmtool.runtime.errors import InputError

TRACKERS = ("csv", "tensorboard", "mlflow")
TENSORBOARD_DIR = "tensorboard"
CSV_FILES = {"train": "metrics.csv", "eval": "metrics_eval.csv"}
HPARAMS_FILE = "hparams.json"
MLFLOW_FILE = "mlflow.json"
MLFLOW_EXPERIMENT = "ebmtool"  # when MLFLOW_EXPERIMENT_NAME is not set
# the run's status when its trackers close: finished, stopped by a signal (resumable), or failed
STATUSES = ("FINISHED", "KILLED", "FAILED")
# the curves the TensorBoard HParams table shows beside each run's hyper-parameters
HPARAMS_METRICS = ("loss_total", "loss_denoise", "loss_energy", "eval/metric_model", "eval/metric_ema")


def open_trackers(names, out_dir: Path, hparams: dict, rows: list[dict], eval_rows: list[dict]) -> list:
    """The trackers `names` asks for (each once, in TRACKERS' order), opened on `out_dir` with the rows so far."""
    unknown = sorted(set(names) - set(TRACKERS))
    if unknown:
        raise InputError(f"unknown tracker {unknown[0]!r}: choose from {', '.join(TRACKERS)}")
    kinds = {"csv": CsvTracker, "tensorboard": TensorBoardTracker, "mlflow": MlflowTracker}
    return [kinds[n](Path(out_dir), hparams, rows, eval_rows) for n in TRACKERS if n in set(names)]


def numbers(row: dict) -> dict[str, float]:
    """A row's finite numeric values (NaN, inf and non-numbers left out), as floats."""
    return {k: float(v) for k, v in row.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def flat_params(hparams: dict) -> dict:
    """Hyper-parameters as scalars: lists and dicts as JSON text, None left out."""
    return {k: (json.dumps(jsonable(v)) if isinstance(v, (list, tuple, dict)) else v) for k, v in hparams.items()
            if v is not None}


# ------------------------------------------------------------------------------------------------ csv

class CsvCurve:
    """One CSV file of rows: `step` first, then the columns in the order they first appeared. Rows are appended
    (and flushed) as they come; a row with a new column, or an eval row replacing one of the same step, rewrites
    the file (atomically) with the wider header. Missing values are empty cells."""

    def __init__(self, path: Path, rows: list[dict], replace_step: bool = False):
        self.path, self.rows, self.replace_step = path, [], replace_step
        self.columns: list[str] = ["step"]
        self.file = None
        for r in rows:
            self._add_columns(r)
            self.rows.append(r)
        self.rewrite()

    def _add_columns(self, row: dict) -> bool:
        new = [k for k in row if k not in self.columns]
        self.columns += new
        return bool(new)

    def _line(self, row: dict) -> str:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(
            ["" if (v := row.get(c)) is None or (isinstance(v, float) and math.isnan(v)) else v
             for c in self.columns])
        return buf.getvalue()

    def rewrite(self) -> None:
        if self.file is not None:
            self.file.close()
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as f:
            f.write(",".join(self.columns) + "\n")
            f.writelines(self._line(r) for r in self.rows)
        self.file = open(self.path, "a", newline="")

    def append(self, row: dict) -> None:
        replaced = self.replace_step and any(r.get("step") == row.get("step") for r in self.rows)
        if replaced:
            self.rows = [r for r in self.rows if r.get("step") != row.get("step")]
        self.rows.append(row)
        if self._add_columns(row) or replaced:
            self.rewrite()
        else:
            self.file.write(self._line(row))
            self.file.flush()

    def close(self) -> None:
        self.file.close()


class CsvTracker:
    """metrics.csv and metrics_eval.csv beside metrics.h5, and hparams.json (for pandas, R, a spreadsheet)."""

    def __init__(self, out_dir: Path, hparams: dict, rows: list[dict], eval_rows: list[dict]):
        write_json(out_dir / HPARAMS_FILE, hparams)
        self.curves = {"train": CsvCurve(out_dir / CSV_FILES["train"], rows),
                       "eval": CsvCurve(out_dir / CSV_FILES["eval"], eval_rows, replace_step=True)}

    def append(self, row: dict, kind: str = "train") -> None:
        self.curves[kind].append(row)

    def close(self, status: str = "FINISHED") -> None:
        for c in self.curves.values():
            c.close()


# ------------------------------------------------------------------------------------------------ tensorboard

class TensorBoardTracker:
    """Every column as a TensorBoard scalar (eval columns under eval/) and the configuration as HParams, for
    `tensorboard --logdir runs/`. The event files are rewritten from the rows metrics.h5 holds, so the curves never
    hold a row twice after a resume."""

    def __init__(self, out_dir: Path, hparams: dict, rows: list[dict], eval_rows: list[dict]):
        try:  # imported here: an optional dependency, and torch's tensorboard module is slow to load
            from torch.utils.tensorboard import SummaryWriter
            from torch.utils.tensorboard.summary import hparams as hparams_summaries
        except ImportError:
            raise InputError("the tensorboard tracker (--tracker tensorboard, --tensorboard) needs the tensorboard "
                             "package: pip install 'ebmtool[tensorboard]'") from None
        log_dir = out_dir / TENSORBOARD_DIR
        shutil.rmtree(log_dir, ignore_errors=True)
        self.writer = SummaryWriter(log_dir=str(log_dir))
        experiment, start, self.end = hparams_summaries(flat_params(hparams), dict.fromkeys(HPARAMS_METRICS, 0.0))
        for summary in (experiment, start):
            self.writer.file_writer.add_summary(summary)
        for kind, rs in (("train", rows), ("eval", eval_rows)):
            for r in rs:
                self.append(r, kind)

    def append(self, row: dict, kind: str = "train") -> None:
        step = int(row["step"])
        for k, v in numbers(row).items():
            if k != "step":
                self.writer.add_scalar(k if kind == "train" else f"eval/{k}", v, step)
        self.writer.flush()

    def close(self, status: str = "FINISHED") -> None:
        if status == "FINISHED":  # the HParams session's end (a stopped run stays open until it is resumed)
            self.writer.file_writer.add_summary(self.end)
        self.writer.close()


# ------------------------------------------------------------------------------------------------ mlflow

class MlflowTracker:
    """An MLflow run through MLflow's own client: the configuration as parameters, every column as a metric
    (eval columns under eval/) at its step, the run's status at the end. The run's id is kept in OUTPUT/mlflow.json
    so that a resume continues it; a run that store does not hold is started anew with the rows so far."""

    def __init__(self, out_dir: Path, hparams: dict, rows: list[dict], eval_rows: list[dict]):
        try:  # imported here: an optional dependency (pip install 'ebmtool[mlflow]'), slow to load
            import mlflow
            from mlflow.entities import Metric, Param
            from mlflow.exceptions import MlflowException
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise InputError("the mlflow tracker (--tracker mlflow) needs mlflow: pip install 'ebmtool[mlflow]'") \
                from None
        self.Metric = Metric
        uri = mlflow.get_tracking_uri()
        self.client = MlflowClient(uri)
        self.run_id = self._existing_run(out_dir / MLFLOW_FILE, uri, MlflowException)
        if self.run_id is not None:
            self.client.update_run(self.run_id, status="RUNNING")
            return
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or MLFLOW_EXPERIMENT
        exp = self.client.get_experiment_by_name(name)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(name)
        run = self.client.create_run(exp_id, run_name=out_dir.resolve().name,
                                     tags={"ebmtool.run_dir": str(out_dir.resolve()), "ebmtool.version": __version__})
        self.run_id = run.info.run_id
        params = [Param(k, str(v)) for k, v in flat_params(hparams).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        self._log([m for kind, rs in (("train", rows), ("eval", eval_rows)) for r in rs
                   for m in self._metrics(r, kind)])
        write_json(out_dir / MLFLOW_FILE, {"tracking_uri": uri, "experiment_id": exp_id, "run_id": self.run_id})

    def _existing_run(self, path: Path, uri: str, not_found) -> str | None:
        """The run id OUTPUT/mlflow.json names, if it is in this store."""
        try:
            known = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if known.get("tracking_uri") != uri:
            return None
        try:
            return self.client.get_run(known["run_id"]).info.run_id
        except (not_found, KeyError):
            return None

    def _metrics(self, row: dict, kind: str) -> list:
        step, now = int(row["step"]), int(time.time() * 1000)
        return [self.Metric(k if kind == "train" else f"eval/{k}", v, now, step) for k, v in numbers(row).items()
                if k != "step"]

    def _log(self, metrics: list) -> None:
        for i in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def append(self, row: dict, kind: str = "train") -> None:
        self._log(self._metrics(row, kind))

    def close(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)
