"""Trackers (--tracker csv|tensorboard|mlflow): each holds exactly the rows metrics.h5 holds, the configuration
beside them, whatever columns a row has, and a resumed run's curves once. MLflow is the real library writing a
real local store (SQLite in the test's directory), read back with MLflow's own client."""

import csv
import json
import math
import sys

import numpy as np
import pytest

from ebmtool.cli import cli
from ebmtool.training.metrics import read_metrics
from ebmtool.training.trackers import CsvCurve

from helpers import TINY_FLAGS

RUN = ["train", *TINY_FLAGS, "--log-every", "5", "--eval-every", "10", "--seed", "0"]


def h5_columns(path):
    return read_metrics(path)  # (columns by full name, e.g. source/ired/p_hard; eval columns)


def read_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {c: np.array([float(r[c]) if r[c] != "" else math.nan for r in rows]) for c in rows[0]}


def same_curves(csv_cols, h5_cols):
    """Every metrics.h5 column that has a value is in the CSV with the same values (NaN where h5 has NaN), at full
    precision. (metrics.h5 lays out every column the run may log; the CSV holds the columns its rows had.)"""
    absent = set(h5_cols) - set(csv_cols)
    assert all(np.isnan(h5_cols[c]).all() for c in absent), absent
    for c, values in h5_cols.items():
        if c in absent:
            continue
        np.testing.assert_array_equal(csv_cols[c], values.astype(float), err_msg=c)


def test_csv_holds_the_metrics_rows_and_the_configuration(tmp_path, runner):
    out = tmp_path / "r"
    r = runner.invoke(cli, [*RUN, "--steps", "20", "--tracker", "csv", "-o", str(out)])
    assert r.exit_code == 0, r.output
    rows, evals = h5_columns(out / "metrics.h5")
    same_curves(read_csv(out / "metrics.csv"), rows)
    same_curves(read_csv(out / "metrics_eval.csv"), evals)
    assert len(rows["step"]) == 4 and {"loss_total", "source/ired/p_hard", "compute_flops"} <= set(rows)
    with open(out / "metrics.csv") as f:
        assert f.readline().startswith("step,")
    hp = json.loads((out / "hparams.json").read_text())
    assert hp["seed"] == 0 and hp["steps"] == 20 and hp["task"] == "inverse" and hp["width"] == 32


def test_a_resumed_run_has_each_row_once(tmp_path, runner):
    out = tmp_path / "r"
    assert runner.invoke(cli, [*RUN, "--steps", "10", "--tracker", "csv", "-o", str(out)]).exit_code == 0
    r = runner.invoke(cli, ["train", "--resume", str(out), "--steps", "20", "--tracker", "csv"])
    assert r.exit_code == 0, r.output
    rows, _ = h5_columns(out / "metrics.h5")
    assert rows["step"].tolist() == [5, 10, 15, 20]
    same_curves(read_csv(out / "metrics.csv"), rows)


def test_a_csv_takes_columns_that_appear_mid_run(tmp_path):
    curve = CsvCurve(tmp_path / "m.csv", [{"step": 1, "a": 0.5}])
    curve.append({"step": 2, "a": 0.25})
    curve.append({"step": 3, "a": 0.125, "source/anm/p_hard": 0.75})  # a new column: the file is rewritten wider
    curve.append({"step": 4, "source/anm/p_hard": float("nan")})
    curve.close()
    assert (tmp_path / "m.csv").read_text() == "step,a,source/anm/p_hard\n1,0.5,\n2,0.25,\n3,0.125,0.75\n4,,\n"


def test_tensorboard_has_the_configuration_as_hparams(tmp_path, runner):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    out = tmp_path / "r"
    r = runner.invoke(cli, [*RUN, "--steps", "10", "--tensorboard", "-o", str(out)])  # the alias
    assert r.exit_code == 0, r.output
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    data = {tag: HParamsPluginData.FromString(c) for tag, c in acc.PluginTagToContent("hparams").items()}
    start = data["_hparams_/session_start_info"].session_start_info.hparams
    assert start["lr"].number_value == 1e-3 and start["task"].string_value == "inverse"
    assert start["seed"].number_value == 0 and start["width"].number_value == 32
    metrics = [m.name.tag for m in data["_hparams_/experiment"].experiment.metric_infos]
    assert "eval/metric_model" in metrics and "loss_total" in metrics
    assert data["_hparams_/session_end_info"].session_end_info.status == 1  # STATUS_SUCCESS: the run finished
    assert "loss_total" in acc.Tags()["scalars"]


def test_mlflow_run_read_back_with_mlflows_client(tmp_path, runner, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "adopt")
    out = tmp_path / "r"
    r = runner.invoke(cli, [*RUN, "--steps", "10", "--tracker", "csv", "--tracker", "mlflow", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert (out / "metrics.csv").exists()
    client = MlflowClient(uri)
    run_id = json.loads((out / "mlflow.json").read_text())["run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "r"
    assert client.get_experiment(run.info.experiment_id).name == "adopt"
    assert run.data.params["lr"] == "0.001" and run.data.params["task"] == "inverse"
    assert run.data.params["seed"] == "0" and run.data.tags["ebmtool.run_dir"] == str(out.resolve())

    # a resume continues the same MLflow run, and its curves hold metrics.h5's rows
    r = runner.invoke(cli, ["train", "--resume", str(out), "--steps", "20", "--tracker", "mlflow"])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "mlflow.json").read_text())["run_id"] == run_id
    assert client.get_run(run_id).info.status == "FINISHED"
    rows, evals = h5_columns(out / "metrics.h5")
    for name, values, steps in (("loss_total", rows["loss_total"], rows["step"]),
                                ("source/ired/p_hard", rows["source/ired/p_hard"], rows["step"]),
                                ("eval/metric_model", evals["metric_model"], evals["step"])):
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, name))
        assert [s for s, _ in history] == steps.tolist(), name
        np.testing.assert_allclose([v for _, v in history], values, rtol=1e-12, err_msg=name)


def test_mlflow_missing_is_one_sentence(tmp_path, runner, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import fails as if not installed
    r = runner.invoke(cli, [*RUN, "--steps", "2", "--tracker", "mlflow", "-o", str(tmp_path / "r")])
    assert r.exit_code == 2
    assert "the mlflow tracker (--tracker mlflow) needs mlflow: pip install 'ebmtool[mlflow]'" in r.output


def test_an_unknown_tracker_is_refused(tmp_path, runner):
    r = runner.invoke(cli, [*RUN, "--steps", "2", "--tracker", "wandb", "-o", str(tmp_path / "r")])
    assert r.exit_code == 2 and "'wandb' is not one of 'csv', 'tensorboard', 'mlflow'" in r.output
