"""Ctrl-C during `train --seeds`: the message names the command that finishes every seed, not one seed's resume."""

import os
import shlex
import signal

from ebmtool.io.checkpoints import load_checkpoint
from ebmtool.cli import cli
from ebmtool.training import loop

from helpers import TINY_FLAGS


def test_an_interrupted_seeds_run_names_the_command_that_finishes_all_seeds(runner, tmp_path, monkeypatch):
    out = tmp_path / "x"
    draw = loop.draw_batch

    def interrupting(st, step):
        if st.cfg.seed == 5 and step == 3:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: the loop finishes this step, saves and stops
        return draw(st, step)

    monkeypatch.setattr(loop, "draw_batch", interrupting)
    args = ["train", *TINY_FLAGS, "--steps", "6", "--seeds", "5,6", "--overwrite", "-o", str(out)]
    r = runner.invoke(cli, args)
    assert r.exit_code == 130, r.output
    last = r.output.strip().splitlines()[-1]
    assert "--resume" not in last and "continue every seed with: ebmtool train " in last
    again = shlex.split(last.split("continue every seed with: ")[1])
    assert again[:2] == ["ebmtool", "train"] and "--seeds" in again and "--overwrite" not in again
    monkeypatch.setattr(loop, "draw_batch", draw)
    r = runner.invoke(cli, again[1:])
    assert r.exit_code == 0, r.output
    assert [load_checkpoint(out / f"seed-{s}" / "ckpt.safetensors").step for s in (5, 6)] == [6, 6]
