"""Built-in tasks: deterministic, fixed evaluation splits independent of the training seed, trivial baselines."""

import h5py
import numpy as np
import pytest
import torch

from ebmtool.io.artifacts import read_dataset
from ebmtool.runtime.errors import InputError
from ebmtool.tasks.files import split_user_data
from ebmtool.tasks.registry import get_task


def test_generation_is_deterministic_and_seed_dependent():
    t = get_task("inverse", 4)
    a, b, c = t.generate(8, "train", seed=1), t.generate(8, "train", seed=1), t.generate(8, "train", seed=2)
    assert np.array_equal(a.x, b.x) and not np.array_equal(a.x, c.x)


def test_evaluation_splits_are_fixed_and_distinct_from_training_draws():
    t = get_task("addition", 3)
    val, test, harder = t.generate(64, "val"), t.generate(64, "test"), t.generate(64, "test", harder=True)
    assert np.array_equal(val.x, t.generate(64, "val").x)
    train = np.concatenate([t.generate(64, "train", seed=s).x for s in range(20)])
    rows = {r.tobytes() for r in train}
    assert not any(r.tobytes() in rows for r in np.concatenate([val.x, test.x]))
    assert not np.array_equal(val.x, test.x)
    assert np.abs(harder.x).max() > 1.5 >= np.abs(test.x).max() - 1e-9  # OOD range U(-2.5, 2.5)


def test_inverse_targets_are_inverses_and_zero_baseline_matches_reference():
    t = get_task("inverse", 20)
    p = t.generate(2000, "test")
    m, inv = p.x[0].reshape(20, 20), p.y[0].reshape(20, 20)
    assert np.allclose(m @ inv, np.eye(20), atol=1e-3)
    base = t.baselines(p)
    assert abs(base["zeros"].mean() - 0.0208) < 0.002  # the reference's zeros baseline
    assert base["scaled identity"].mean() < base["zeros"].mean()


def test_lowrank_and_addition_shapes_and_zero_baselines():
    lr = get_task("lowrank", 20).generate(2000, "test")
    assert lr.x.shape == lr.y.shape == (2000, 400)
    assert abs((lr.y ** 2).mean() - 0.0349) < 0.004  # predict 0: 0.0349
    ad = get_task("addition", 20).generate(500, "test")
    assert ad.x.shape == (500, 800) and np.allclose(ad.y, ad.x[:, :400] + ad.x[:, 400:], atol=1e-6)


def test_unknown_task_is_an_input_error():
    with pytest.raises(InputError, match="unknown task 'sudokku'"):
        get_task("sudokku")


def test_user_data_file_is_read_and_validated(tmp_path):
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        f["inputs"] = np.ones((10, 2, 3), dtype=np.float32)
        f["targets"] = np.zeros((10, 4), dtype=np.float32)
    p = read_dataset(path)
    assert p.x.shape == (10, 6) and p.y.shape == (10, 4)
    tr, va = split_user_data(p)
    assert len(tr) == 9 and len(va) == 1
    bad = tmp_path / "bad.h5"
    with h5py.File(bad, "w") as f:
        x = np.ones((5, 3), dtype=np.float32)
        x[3, 2] = np.nan
        f["inputs"], f["targets"] = x, np.zeros((5, 2), dtype=np.float32)
    with pytest.raises(InputError, match="non-finite value at row 3, column 2"):
        read_dataset(bad)
    nokeys = tmp_path / "nokeys.h5"
    with h5py.File(nokeys, "w") as f:
        f["x"] = np.ones((3, 3))
    with pytest.raises(InputError, match="no 'inputs' or 'targets' dataset"):
        read_dataset(nokeys)


def test_fresh_training_batches_are_a_pure_function_of_seed_and_step():
    """--train-size 0: every step draws its own problems from the task, seeded by (seed, step)."""
    from ebmtool.config import TrainConfig
    from ebmtool.tasks.data import TrainingData

    data = TrainingData(TrainConfig(task="inverse", size=4, train_size=0, batch_size=8, val_size=0, seed=3))
    x0, y0 = data.batch(0, "cpu")
    x0_again, y0_again = TrainingData(TrainConfig(task="inverse", size=4, train_size=0, batch_size=8, val_size=0,
                                                  seed=3)).batch(0, "cpu")
    x1, _ = data.batch(1, "cpu")
    assert x0.shape == (8, 16) and y0.shape == (8, 16)
    assert torch.equal(x0, x0_again) and torch.equal(y0, y0_again) and not torch.equal(x0, x1)
    # an inverse problem: y is x's inverse
    eye = torch.eye(4).expand(8, 4, 4)
    assert torch.allclose(x0.view(8, 4, 4) @ y0.view(8, 4, 4), eye, atol=1e-3)
