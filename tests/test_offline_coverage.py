"""An offline negatives file that covers part of the training set: the start line names the file and its
coverage, and a warning gives the fraction of each batch that will really use it."""

from ebmtool.cli import cli
from ebmtool.offline.mining import MineOptions, mine
from ebmtool.training.loop import train

from helpers import TINY_FLAGS, tiny


def test_a_partial_file_is_announced_with_its_coverage(runner, tmp_path):
    train(tiny(steps=2, seed=1, time_dim=128), tmp_path / "base", log=lambda m: None)
    ckpt = tmp_path / "base" / "ckpt.safetensors"
    assert mine(ckpt, tmp_path / "negs.h5", MineOptions(k=2, candidates=2, refine_steps=1, seed=5, limit=32)).complete
    r = runner.invoke(cli, ["train", *TINY_FLAGS, "--seed", "1", "--steps", "2", "--init", str(ckpt),
                            "--offline-negatives", str(tmp_path / "negs.h5"), "-o", str(tmp_path / "refined")])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    start = next(ln for ln in lines if ln.startswith("offline negatives "))
    assert str(tmp_path / "negs.h5") in start and "32 of the 256 training problems" in start
    warning = next(ln for ln in lines if ln.startswith("warning: ") and "negs.h5" in ln)
    assert "covers 32 of the 256" in warning and "about 6 %" in warning and "50 %" in warning
