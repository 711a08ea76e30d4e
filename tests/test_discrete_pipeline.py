"""The offline-negatives pipeline on discrete tasks, through the CLI: train -> mine-negatives -> score -> weights
-> train --offline-negatives -> compare. Mined Sudoku negatives keep every given cell and stay in the box +-1."""

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
    ok(runner, ["train", *flags, "--steps", "2", "--seed", "0", "--offline-negatives", negs, "--offline-weights", weights,
                "-o", refined])
    r = ok(runner, ["compare", base, refined, "-n", "4", "--device", "cpu", "--bootstrap", "200", "--permutations", "200"])
    assert "refined" in r.output


def test_data_from_rrn_csv_and_satnet_npy(runner, tmp_path):
    """Puzzles a user has on disk become the dataset layout train/eval read, equal to our own encoding."""
    from ebmtool.io.artifacts import read_dataset
    from ebmtool.tasks import sudoku

    gen = tmp_path / "gen.h5"
    ok(runner, ["data", "sudoku", "-n", "6", "--seed", "4", "-o", gen])
    ref = read_dataset(gen)
    puzzles, sols = sudoku.puzzles_from_x(ref.x), sudoku.decode(ref.y)
    text = lambda b: "".join(str(v) if v else "." for v in b)
    csv = tmp_path / "rrn.csv"
    csv.write_text("quizzes,solutions\n" + "".join(f"{text(a)},{text(b)}\n" for a, b in zip(puzzles, sols)))
    onehot = lambda b: (b[..., None] == np.arange(1, 10)).astype(np.float32).reshape(-1, 9, 9, 9)
    np.save(tmp_path / "features.npy", onehot(puzzles))
    np.save(tmp_path / "labels.npy", onehot(sols))

    r = ok(runner, ["data", "sudoku", "--from", csv, "-o", tmp_path / "a.h5"])
    assert r.output.startswith(f"wrote 6 sudoku 9x9 problems from {csv}")
    ok(runner, ["data", "sudoku", "--from", tmp_path / "features.npy", "--labels", tmp_path / "labels.npy",
                "-n", "4", "-o", tmp_path / "b.h5"])
    a, b = read_dataset(tmp_path / "a.h5"), read_dataset(tmp_path / "b.h5")
    for got, n in ((a, 6), (b, 4)):
        np.testing.assert_array_equal(got.x, ref.x[:n])
        np.testing.assert_array_equal(got.y, ref.y[:n])
        np.testing.assert_array_equal(got.mask, ref.mask[:n])

    ok(runner, ["train", "--task", tmp_path / "a.h5", "--width", "8", "--blocks", "1", "--steps", "1",
                "--batch-size", "4", "--val-size", "2", "--eval-every", "0", "--device", "cpu", "--seed", "0",
                "-o", tmp_path / "run"])
    r = ok(runner, ["eval", tmp_path / "run", "--data", tmp_path / "b.h5", "-n", "4", "--device", "cpu"])
    assert "board_solved" in r.output


@pytest.mark.parametrize("args, message", [
    (["data", "connectivity", "--from", "{csv}"], "--from converts Sudoku files"),
    (["data", "sudoku", "--from", "{features}"], "needs its solutions too: add --labels labels.npy"),
    (["data", "sudoku", "--from", "{csv}", "--seed", "3"], "--seed does not apply to --from"),
    (["data", "sudoku", "--from", "{bad}"], "1 puzzles have givens that differ from their solution"),
    (["data", "sudoku", "--from", "{tmp}/missing.csv"], "missing.csv: no such file"),
])
def test_data_from_bad_input_exits_2(runner, tmp_path, args, message):
    solved = "123456789456789123789123456214365897365897214897214365531642978642978531978531642"
    (tmp_path / "ok.csv").write_text(f"{'.' * 80 + solved[-1]},{solved}\n")
    wrong = str((int(solved[0]) % 9) + 1) + "." * 80
    (tmp_path / "bad.csv").write_text(f"{wrong},{solved}\n")
    np.save(tmp_path / "features.npy", np.zeros((1, 9, 9, 9), np.float32))
    paths = {"csv": tmp_path / "ok.csv", "bad": tmp_path / "bad.csv", "features": tmp_path / "features.npy",
             "tmp": tmp_path}
    r = runner.invoke(cli, [a.format(**paths) for a in args] + ["-o", str(tmp_path / "out.h5")])
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert not (tmp_path / "out.h5").exists()
