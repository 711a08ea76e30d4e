"""Same seed, same weights: a run's trajectory does not depend on how often it logs, on which steps measured
diagnostics, or on where it was split and resumed (bit for bit on the CPU)."""

import pytest

from ebmtool.io.checkpoints import load_checkpoint
from ebmtool.training import train

from helpers import tiny

ARMS = {"ired": {}, "anm_k2": dict(negatives="anm", k=2), "anm_floor": dict(negatives="anm", kappa_floor=1.2),
        "denoise_only": dict(supervise_energy=False)}


def weights(run):
    ck = load_checkpoint(run / "ckpt.safetensors")
    return {k: v for k, v in ck.tensors.items() if k.startswith(("model/", "ema/", "optim/"))}


def assert_same(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    differ = [k for k in wa if not (wa[k].shape == wb[k].shape and (wa[k] == wb[k]).all())]
    assert not differ, f"{len(differ)} of {len(wa)} tensors differ, e.g. {differ[:3]}"


@pytest.mark.parametrize("arm", sorted(ARMS))
def test_the_log_cadence_does_not_change_the_weights(arm, tmp_path):
    for every in (3, 10):
        train(tiny(seed=3, steps=12, log_every=every, **ARMS[arm]), tmp_path / f"e{every}", log=lambda m: None)
    assert_same(tmp_path / "e3", tmp_path / "e10")


@pytest.mark.parametrize("arm", ["ired", "anm_floor"])
def test_a_split_and_resumed_run_equals_one_in_one_go(arm, tmp_path):
    train(tiny(seed=3, steps=12, log_every=10, **ARMS[arm]), tmp_path / "whole", log=lambda m: None)
    train(tiny(seed=3, steps=5, log_every=10, **ARMS[arm]), tmp_path / "split", log=lambda m: None)
    train(None, tmp_path / "split", resume=tmp_path / "split" / "ckpt.safetensors", overrides={"steps": 12},
          log=lambda m: None)
    assert load_checkpoint(tmp_path / "split" / "ckpt.safetensors").step == 12
    assert_same(tmp_path / "whole", tmp_path / "split")
