"""Discrete tasks train end to end: the reference negative, masks kept in training and sampling, the task's
primary metric logged and evaluated."""

import h5py
import numpy as np
import pytest
import torch

from ebmtool.artifacts import load_checkpoint
from ebmtool.cli import cli
from ebmtool.diffusion import cosine_schedule
from ebmtool.evaluate import checkpoint_task, evaluate_model, evaluation_problems, load_model
from ebmtool.train import TrainConfig, TrainingData, ired_losses, step_generator, train


def tiny(task, **kw):
    return TrainConfig(task=task, size=None, width=8, train_size=32, batch_size=8, val_size=4, log_every=1,
                       eval_every=0, ckpt_every=0, device="cpu", seed=0, steps=2, **kw)


@pytest.mark.parametrize("task", ["connectivity", "shortest-path"])
def test_graph_tasks_train_and_log_their_metric(task, tmp_path):
    res = train(tiny(task), tmp_path / task, log=lambda *a: None)
    ck = load_checkpoint(tmp_path / task / "ckpt.safetensors")
    assert ck.task == task and checkpoint_task(ck).name == task
    assert res.final_eval["metric_name"] == checkpoint_task(ck).metric
    with h5py.File(tmp_path / task / "metrics.h5") as f:
        assert np.isfinite(f["loss_denoise"][()]).all() and np.isfinite(f["loss_energy"][()]).all()
        assert f.attrs["metric"] == checkpoint_task(ck).metric
        assert 0.0 <= f["eval/metric_ema"][-1] <= 1.0


def test_sudoku_training_keeps_given_cells_and_counts_duplicate_negatives():
    cfg = tiny("sudoku")
    data = TrainingData(cfg)
    from ebmtool.models import build_model

    torch.manual_seed(0)
    model = build_model(data.task.model_dims(4))
    x, y, mask = data.batch_with_mask(0, "cpu")
    assert mask is not None and mask.shape == y.shape
    gen = step_generator(0, 0)
    t = torch.randint(0, 10, (x.shape[0],), generator=gen)
    parts = ired_losses(model, x, y, t, gen, cosine_schedule(), cfg, data.task.energy_weight,
                        neg_gen=step_generator(0, 0, purpose=3), mask=mask, task=data.task)
    assert torch.isfinite(parts["loss_total"])
    assert "dup_fraction" in parts["diagnostics"]
    # sampling never changes a given cell
    y_hat = torch.from_numpy(evaluate_model_answers(model, data))
    given = torch.from_numpy(data.val.mask[:4]).bool()
    assert torch.allclose(y_hat[given], torch.from_numpy(data.val.x[:4])[given], atol=1e-5)


def evaluate_model_answers(model, data):
    from ebmtool.evaluate import sample_answers

    return sample_answers(model, data.task, data.val.subset(4), inner_steps=2)


def test_discrete_tasks_refuse_online_sources_they_do_not_support(tmp_path):
    from ebmtool.errors import InputError

    with pytest.raises(InputError, match="only the task's reference negative"):
        train(tiny("connectivity", k=4), tmp_path / "x", log=lambda *a: None)


def test_cli_trains_connectivity_without_a_size(runner, tmp_path):
    r = runner.invoke(cli, ["train", "--task", "connectivity", "--steps", "2", "--width", "8", "--train-size", "32",
                            "--batch-size", "8", "--val-size", "4", "--seed", "1", "-o", str(tmp_path / "c")],
                      catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "validation accuracy" in r.stdout
