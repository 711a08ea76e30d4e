"""Discrete tasks train end to end: the task's network (scaled down by --width/--blocks), masks kept in
training, in every negative source and in sampling, the task's primary metric logged and evaluated, and
checkpoints that rebuild their task (also when trained from an `ebmtool data` file)."""

import h5py
import numpy as np
import pytest
import torch

from ebmtool.io.checkpoints import load_checkpoint
from ebmtool.cli import cli
from ebmtool.method.diffusion import cosine_schedule
from ebmtool.runtime.errors import InputError
from ebmtool.analysis.evaluate import checkpoint_task, evaluate_model, evaluation_problems, load_model, sample_answers
from ebmtool.method.models import build_model
from ebmtool.negatives import NegativeSettings, generate, registry
from ebmtool.config import TrainConfig
from ebmtool.tasks.data import TrainingData
from ebmtool.training.negatives import discrete_reference
from ebmtool.training.losses import Batch, Objective, ired_losses
from ebmtool.runtime.rng import step_generator
from ebmtool.training.loop import train
from ebmtool.tasks.registry import get_task, names

from helpers import tiny, tiny_net

SCHED = cosine_schedule()


@pytest.mark.parametrize("task", [n for n in names() if get_task(n).reference_negative_source])
def test_each_task_trains_checkpoints_and_evaluates_its_metric(task, tmp_path):
    res = train(tiny(task), tmp_path / task, log=lambda *a: None)
    ck = load_checkpoint(tmp_path / task / "ckpt.safetensors")
    t = checkpoint_task(ck)
    assert ck.task == task and t.name == task and t.discrete
    assert ck.dims == t.model_dims(**tiny_net(task))  # the tiny network, rebuilt from the checkpoint
    assert res.final_eval["metric_name"] == t.metric
    with h5py.File(tmp_path / task / "metrics.h5") as f:
        assert f["step"][()].tolist() == [1, 2]
        for col in ("loss_denoise", "loss_energy", "energy_pos", "energy_neg"):
            assert np.isfinite(f[col][()]).all(), col
        assert f.attrs["metric"] == t.metric and bool(f.attrs["higher_is_better"])
        assert 0.0 <= f["eval/metric_ema"][-1] <= 1.0 and 0.0 <= f["eval/metric_model"][-1] <= 1.0
    # round trip: the frozen checkpoint evaluates on the task's own test split with the task's metrics
    task_, problems, _ = evaluation_problems(ck, n=3)
    errs = evaluate_model(load_model(ck, "ema"), task_, problems, inner_steps=1)
    assert set(errs) >= {t.metric} and errs[t.metric].shape == (3,)
    assert ((errs[t.metric] >= 0) & (errs[t.metric] <= 1)).all()


def _sudoku_batch(n=6):
    data = TrainingData(tiny("sudoku", train_size=n, batch_size=n))
    x, y, mask = data.batch_with_mask(0, "cpu")
    return data, x, y, mask


@pytest.mark.parametrize("source", registry.names())
def test_every_negative_source_keeps_the_given_cells(source):
    data, x, y, mask = _sudoku_batch()
    given = mask > 0
    assert given.any() and (~given).any()
    torch.manual_seed(0)
    model = build_model(data.task.model_dims(8, 1))
    gen = torch.Generator().manual_seed(1)
    t = torch.randint(0, 10, (x.shape[0],), generator=gen)
    eps = torch.randn(y.shape, generator=gen)
    k = 2
    if source == "ired":  # for discrete tasks `ired` means the task's reference negative
        nb = discrete_reference(data.task, y, mask, k, gen)
    else:
        nb = generate(source, model, x, y, t, eps, SCHED, k, NegativeSettings(clean_clamp=1.0), gen, mask=mask)
    y_neg = nb.y_neg
    assert y_neg.shape == (x.shape[0], k, y.shape[1])
    g = given[:, None, :].expand_as(y_neg)
    assert torch.equal(y_neg[g], y[:, None, :].expand_as(y_neg)[g])  # given cells exactly the positive's
    assert (y_neg[~g] != y[:, None, :].expand_as(y_neg)[~g]).any()  # while free cells did change
    assert y_neg.abs().max() <= 1.0  # the discrete clean box
    if source != "ired":  # the same source without the mask does change given cells: the check can fail
        free = generate(source, model, x, y, t, eps, SCHED, k, NegativeSettings(clean_clamp=1.0),
                        torch.Generator().manual_seed(1))
        assert not torch.equal(free.y_neg[g], y[:, None, :].expand_as(y_neg)[g])


@pytest.mark.parametrize("negatives,extra", [("anm", {}), ("gaussian", {}), ("hnm", {"hnm_candidates": 2}),
                                             ("ired:0.5,gaussian:0.5", {"k": 2, "sans": True})])
def test_sudoku_losses_with_every_source_are_finite(negatives, extra):
    cfg = tiny("sudoku", negatives=negatives, **extra).validate()
    data, x, y, mask = _sudoku_batch(8)
    torch.manual_seed(0)
    model = build_model(data.task.model_dims(8, 1))
    gen = step_generator(0, 0)
    t = torch.randint(0, 10, (x.shape[0],), generator=gen)
    parts = ired_losses(model, Batch(x, y, t, gen, neg_gen=step_generator(0, 0, purpose=3), mask=mask), Objective(cfg, SCHED, task=data.task, energy_weight=data.task.energy_weight))
    assert torch.isfinite(parts.loss_total) and torch.isfinite(parts.energy.loss_energy).all()
    assert 0.0 <= parts.diagnostics["dup_fraction"] <= 1.0
    parts.loss_total.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_given_cells_contribute_no_denoising_loss():
    """Where every cell is given, the denoising loss is exactly zero (prediction replaced by the target)."""
    cfg = tiny("sudoku", supervise_energy=False).validate()
    data, x, y, mask = _sudoku_batch(4)
    model = build_model(data.task.model_dims(8, 1))
    gen = step_generator(0, 0)
    t = torch.randint(0, 10, (4,), generator=gen)
    full = torch.ones_like(mask)
    parts = ired_losses(model, Batch(y, y, t, gen, mask=full), Objective(cfg, SCHED, task=data.task, energy_weight=0.0))
    assert float(parts.loss_denoise.detach().abs().max()) == 0.0
    parts = ired_losses(model, Batch(x, y, t, step_generator(0, 0), mask=mask), Objective(cfg, SCHED, task=data.task, energy_weight=0.0))
    assert float(parts.loss_denoise.detach().min()) > 0.0


def test_shortest_path_weights_the_path_entries():
    """The reference's element weight 10 where y > 0, 0.5 elsewhere, recomputed here from the same draws."""
    from ebmtool.method.diffusion import energy_and_grad, noised

    cfg = tiny("shortest-path", supervise_energy=False).validate()
    data = TrainingData(cfg)
    x, y, _ = data.batch_with_mask(0, "cpu")
    model = build_model(data.task.model_dims(8))
    t = torch.randint(0, 10, (x.shape[0],), generator=step_generator(0, 0))
    got = ired_losses(model, Batch(x, y, t, step_generator(0, 1)), Objective(cfg, SCHED, task=data.task, energy_weight=0.0)).loss_denoise
    eps = torch.randn(y.shape, generator=step_generator(0, 1))  # the first draw inside ired_losses
    _, eps_hat = energy_and_grad(model, x, noised(SCHED, y, t, eps), t)
    sq = (eps_hat - eps) ** 2
    assert torch.allclose(got, (sq * torch.where(y > 0, 10.0, 0.5)).mean(1), rtol=1e-5)
    assert not torch.allclose(got, sq.mean(1), rtol=1e-3)


def test_sampler_never_changes_a_given_cell():
    data, _, _, _ = _sudoku_batch()
    torch.manual_seed(0)
    model = build_model(data.task.model_dims(8, 1))
    val = data.val.subset(4)
    y_hat = torch.from_numpy(sample_answers(model, data.task, val, inner_steps=2))
    given = torch.from_numpy(val.mask).bool()
    assert torch.allclose(y_hat[given], torch.from_numpy(val.x)[given], atol=1e-5)
    assert not torch.allclose(y_hat[~given], torch.from_numpy(val.y)[~given], atol=1e-2)  # an untrained model


def test_blocks_is_for_discrete_networks_only(tmp_path):
    with pytest.raises(InputError, match="--blocks"):
        train(TrainConfig(task="inverse", size=2, blocks=2, steps=1, batch_size=4, train_size=4, val_size=0,
                          device="cpu", seed=0), tmp_path / "x", log=lambda *a: None)
    with pytest.raises(InputError, match="--blocks"):
        train(tiny("shortest-path", blocks=1), tmp_path / "y", log=lambda *a: None)


def test_cli_trains_sudoku_with_a_tiny_network(runner, tmp_path):
    r = runner.invoke(cli, ["train", "--task", "sudoku", "--steps", "2", "--width", "16", "--blocks", "1",
                            "--train-size", "8", "--batch-size", "8", "--val-size", "2", "--seed", "1",
                            "-o", str(tmp_path / "s")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "validation board_solved" in r.stdout
    assert load_checkpoint(tmp_path / "s" / "ckpt.safetensors").dims["blocks"] == 1


def test_a_run_from_a_cached_data_file_records_its_task(runner, tmp_path):
    f = tmp_path / "conn.h5"
    assert runner.invoke(cli, ["data", "connectivity", "-n", "20", "--seed", "3", "-o", str(f)]).exit_code == 0
    r = runner.invoke(cli, ["train", "--task", str(f), "--steps", "1", "--width", "8", "--train-size", "8",
                            "--batch-size", "8", "--val-size", "2", "--seed", "1", "-o", str(tmp_path / "c")],
                      catch_exceptions=False)
    assert r.exit_code == 0, r.output
    ck = load_checkpoint(tmp_path / "c" / "ckpt.safetensors")
    assert ck.task == "connectivity" and ck.config["task"] == str(f)
    t = checkpoint_task(ck)
    assert t.name == "connectivity" and t.size == 12 and t.discrete
    r = runner.invoke(cli, ["eval", str(tmp_path / "c"), "-n", "3"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "accuracy" in r.stdout and "higher is better" in r.stdout
