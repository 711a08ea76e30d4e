"""Curriculum and source mixes: parsing, validation (exit 2), stage by step, and the stage after a resume."""

import h5py
import numpy as np
import pytest
import torch

from ebmtool.negatives import curriculum as cur
from ebmtool.runtime.errors import InputError
from ebmtool.config import TrainConfig
from ebmtool.training.loop import train

from helpers import tiny


def quiet(*a, **k):
    pass


def test_parse_inline_spec_and_presets():
    st = cur.parse_curriculum("0:ired,0.3:ired=0.5+anm=0.5,0.7:anm")
    assert [s.start for s in st] == [0, 0.3, 0.7]
    assert st[1].fractions() == {"ired": 0.5, "anm": 0.5}
    assert cur.parse_curriculum("ired-to-anm") == st
    assert cur.parse_mix("ired:0.25,hnm:0.75") == (("ired", 0.25), ("hnm", 0.75))
    assert cur.parse_mix("gaussian") == (("gaussian", 1.0),)


@pytest.mark.parametrize("spec, msg", [
    ("0:ired=0.5+anm=0.4", "sum to 0.9"),
    ("0:ired,0.5:clean", "unknown negative source 'clean'"),
    ("0.1:ired", "first stage must start at 0"),
    ("0:ired,0.6:anm,0.5:hnm", "increase"),
    ("0:ired=0.5+ired=0.5", "named twice"),
    ("nonsense", "needs START:MIX"),
])
def test_bad_curricula_are_input_errors(spec, msg):
    with pytest.raises(InputError, match=msg):
        cur.parse_curriculum(spec)


def test_bad_mix_is_an_input_error():
    with pytest.raises(InputError, match="sum to"):
        cur.parse_mix("ired:0.5,anm:0.6")
    with pytest.raises(InputError, match="fraction for every source"):
        cur.parse_mix("ired,anm")


def test_stage_by_step():
    st = cur.parse_curriculum("0:ired,0.3:ired=0.5+anm=0.5,0.7:anm")
    assert [cur.stage_at(st, s, 10) for s in range(10)] == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]


def test_assignment_follows_the_mix():
    st = cur.parse_curriculum("0:ired=0.25+anm=0.75")[0]
    a = cur.assign(st, 20000, torch.Generator().manual_seed(0))
    assert abs(float((a == 1).float().mean()) - 0.75) < 0.02


def test_curriculum_stage_is_logged_and_survives_a_resume_that_extends_the_run(tmp_path):
    kw = dict(seed=3, curriculum="0:ired,0.5:gaussian", log_every=1, batch_size=16, val_size=0)
    train(tiny(steps=4, **kw), tmp_path / "full", log=quiet)
    train(tiny(steps=2, **kw, curriculum_total=4), tmp_path / "part", log=quiet)
    # resume and extend to 6 steps: the boundary stays at step 2 of the 4-step layout
    train(TrainConfig(), tmp_path / "part", resume=tmp_path / "part" / "ckpt.safetensors",
          overrides={"steps": 6}, log=quiet)
    with h5py.File(tmp_path / "full" / "metrics.h5") as f, h5py.File(tmp_path / "part" / "metrics.h5") as g:
        assert list(f["stage"][()]) == [0, 0, 1, 1]
        assert list(g["stage"][()]) == [0, 0, 1, 1, 1, 1]
        assert np.array_equal(f["loss_total"][()], g["loss_total"][()][:4])  # same steps, same losses
        assert list(g["source/gaussian/fraction"][()][2:]) == [1, 1, 1, 1]


def test_unknown_source_in_config_is_an_input_error():
    with pytest.raises(InputError, match="unknown negative source"):
        tiny(negatives="clean").validate()
