"""Every file ebmtool writes follows the umask, checkpoints included (safetensors' writer creates 0600 files, which
colleagues sharing a run directory could not read)."""

import os

import pytest
import torch

from ebmtool.io.artifacts import write_text
from ebmtool.io.checkpoints import save_checkpoint


@pytest.fixture(params=[0o022, 0o027])
def umask(request):
    before = os.umask(request.param)
    yield request.param
    os.umask(before)


def _mode(path):
    return os.stat(path).st_mode & 0o777


def test_a_checkpoint_follows_the_umask_like_any_other_file(tmp_path, umask):
    ckpt, text = tmp_path / "ckpt.safetensors", tmp_path / "a.txt"
    save_checkpoint(ckpt, {"w": torch.zeros(2)}, {"ebmtool.step": "0"})
    write_text(text, "x\n")
    assert _mode(text) == 0o666 & ~umask
    assert _mode(ckpt) == 0o666 & ~umask


def test_replacing_a_checkpoint_keeps_following_the_umask(tmp_path, umask):
    ckpt = tmp_path / "ckpt.safetensors"
    for step in range(2):
        save_checkpoint(ckpt, {"w": torch.zeros(2)}, {"ebmtool.step": str(step)})
    assert _mode(ckpt) == 0o666 & ~umask
