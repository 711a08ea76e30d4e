"""The offline-negatives pipeline on discrete tasks, through the CLI: train -> mine-negatives -> score -> weights
-> train --negatives -> compare. Mined Sudoku negatives keep every given cell and stay in the box +-1."""

import h5py
import numpy as np
import pytest

from ebmtool.cli import cli

SUDOKU = ["--task", "sudoku", "--width", "16", "--blocks", "1", "--train-size", "16", "--batch-size", "8",
          "--val-size", "4", "--eval-every", "0", "--device", "cpu"]
CONNECTIVITY = ["--task", "connectivity", "--width", "8", "--train-size", "16", "--batch-size", "8",
                "--val-size", "4", "--eval-every", "0", "--device", "cpu"]


def ok(runner, args):
    r = runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r


@pytest.mark.parametrize("flags", [SUDOKU, CONNECTIVITY], ids=["sudoku", "connectivity"])
def test_offline_pipeline_on_a_discrete_task(runner, tmp_path, flags):
    base, refined = tmp_path / "base", tmp_path / "refined"
    negs, scores, weights = tmp_path / "negs.h5", tmp_path / "scores.h5", tmp_path / "w.h5"
    ok(runner, ["train", *flags, "--steps", "2", "--seed", "0", "-o", base])
    ok(runner, ["mine-negatives", base, "-o", negs, "--k", "2", "--candidates", "2", "--refine-steps", "1",
                "--batch-size", "8", "--device", "cpu"])
    with h5py.File(negs) as f:
        y, yn = f["positives"][()], f["negatives"][()]
        assert yn.shape == (16, 2, y.shape[1])
        assert np.abs(yn).max() <= 1.0 + 1e-6  # discrete tasks: negatives stay in the box +-1
        if "--task" in flags and flags[flags.index("--task") + 1] == "sudoku":
            mask = f["mask"][()].astype(bool)
            assert mask.any() and not mask.all()
            given = np.broadcast_to(mask[:, None, :], yn.shape)
            np.testing.assert_array_equal(yn[given], np.broadcast_to(y[:, None, :], yn.shape)[given])
            assert (yn != y[:, None, :]).any()  # the free cells did move
        else:
            assert "mask" not in f
    r = ok(runner, ["score", base, negs, "-o", scores, "--device", "cpu"])
    assert "p_hard" in r.output
    ok(runner, ["weights", scores, "--alpha", "1", "-o", weights])
    ok(runner, ["train", *flags, "--steps", "2", "--seed", "0", "--negatives", negs, "--weights", weights,
                "-o", refined])
    r = ok(runner, ["compare", base, refined, "-n", "4", "--device", "cpu", "--bootstrap", "200", "--permutations", "200"])
    assert "refined" in r.output
