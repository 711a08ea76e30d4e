"""Training: losses at initialisation, the energy term matters, checkpoints round-trip, resume is exact,
evaluation changes nothing."""

import hashlib

import numpy as np
import pytest
import torch

from ebmtool.io.checkpoints import load_checkpoint
from ebmtool.io.artifacts import sha256_file
from ebmtool.method.diffusion import cosine_schedule
from ebmtool.runtime.errors import InputError
from ebmtool.analysis.evaluate import evaluate_model, evaluation_problems, load_model
from ebmtool.method.models import EnergyMLP
from ebmtool.config import TrainConfig
from ebmtool.tasks.data import TrainingData
from ebmtool.training.losses import Batch, Objective, ired_losses
from ebmtool.runtime.rng import step_generator
from ebmtool.training.loop import train

from helpers import seeded_losses, tiny


def quiet(*a, **k):
    pass


def test_initial_losses_match_the_reference_smoke_values():
    # The reference's smoke values: at initialisation L_mse ~ 1.0 and L_E just below log 2 (0.60-0.68).
    cfg = TrainConfig(task="inverse", size=20, seed=0, train_size=512, batch_size=256)
    data = TrainingData(cfg)
    torch.manual_seed(0)
    model = EnergyMLP(400, 400)
    x, y = data.batch(0, "cpu")
    gen = step_generator(0, 0)
    t = torch.randint(0, 10, (256,), generator=gen)
    parts = ired_losses(model, Batch(x, y, t, gen), Objective(cfg, cosine_schedule(), energy_weight=0.5))
    assert 0.9 < parts.loss_denoise.mean().item() < 1.1
    assert 0.55 < float(parts.energy.loss_energy.detach().mean()) < 0.70
    assert parts.loss_denoise.shape == parts.energy.loss_energy.shape == (256,)


def test_energy_term_changes_the_parameter_gradient():
    # The energy loss must actually reach the parameters when it is on.
    grads = {}
    for on in (True, False):
        model, parts = seeded_losses(tiny(seed=3, supervise_energy=on), 3)
        parts.loss_total.backward()
        grads[on] = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert not torch.allclose(grads[True], grads[False])


def _tensors(path):
    ck = load_checkpoint(path)
    return ck, {k: v for k, v in ck.tensors.items()}


def test_checkpoint_round_trip_and_metadata(tmp_path):
    res = train(tiny(seed=5, steps=6), tmp_path / "run", log=quiet)
    ck = load_checkpoint(tmp_path / "run" / "ckpt.safetensors")
    assert res.step == ck.step == 6 and ck.seed == 5 and ck.task == "inverse"
    assert ck.config["steps"] == 6 and ck.config["seed"] == 5
    assert ck.meta["ebmtool.data_fingerprint"] == TrainingData(tiny(seed=5)).fingerprint
    assert ck.meta["format"] == "pt"
    assert all(isinstance(v, str) for v in ck.meta.values())
    model = load_model(ck, "model")
    assert torch.equal(model.fc1.weight, ck.tensors["model/fc1.weight"])
    assert (tmp_path / "run" / "metrics.h5").exists()


def test_resume_is_bit_exact(tmp_path):
    train(tiny(seed=11, steps=10, ckpt_every=4), tmp_path / "full", log=quiet)
    train(tiny(seed=11, steps=4), tmp_path / "part", log=quiet)
    train(TrainConfig(), tmp_path / "part", resume=tmp_path / "part" / "ckpt.safetensors",
          overrides={"steps": 10}, log=quiet)
    a, ta = _tensors(tmp_path / "full" / "ckpt.safetensors")
    b, tb = _tensors(tmp_path / "part" / "ckpt.safetensors")
    assert a.step == b.step == 10
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
    import h5py

    with h5py.File(tmp_path / "full" / "metrics.h5") as fa, h5py.File(tmp_path / "part" / "metrics.h5") as fb:
        assert list(fa["step"][()]) == list(fb["step"][()]) == [2, 4, 6, 8, 10]
        assert np.array_equal(fa["loss_total"][()], fb["loss_total"][()])


def test_resume_refuses_to_change_the_configuration(tmp_path):
    train(tiny(seed=1, steps=2), tmp_path / "r", log=quiet)
    with pytest.raises(InputError, match="cannot change on resume"):
        train(TrainConfig(), tmp_path / "r", resume=tmp_path / "r" / "ckpt.safetensors", overrides={"lr": 0.1},
              log=quiet)


def test_same_seed_same_result_different_seed_different_result(tmp_path):
    for name, seed in (("a", 2), ("b", 2), ("c", 3)):
        train(tiny(seed=seed, steps=3), tmp_path / name, log=quiet)
    a, b, c = (load_checkpoint(tmp_path / n / "ckpt.safetensors").tensors["model/fc4.weight"] for n in "abc")
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_evaluation_changes_neither_weights_nor_file(tmp_path):
    train(tiny(seed=4, steps=3), tmp_path / "r", log=quiet)
    path = tmp_path / "r" / "ckpt.safetensors"
    before = sha256_file(path)
    ck = load_checkpoint(path)
    model = load_model(ck, "ema")
    digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()
    task, problems, _ = evaluation_problems(ck, n=16)
    errs = evaluate_model(model, task, problems)
    assert errs["mse"].shape == (16,)
    after = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()
    assert digest == after and sha256_file(path) == before


def test_seed_is_drawn_and_recorded_when_absent(tmp_path):
    res = train(tiny(seed=None, steps=1), tmp_path / "r", log=quiet)
    ck = load_checkpoint(tmp_path / "r" / "ckpt.safetensors")
    assert isinstance(res.config["seed"], int) and ck.seed == res.config["seed"]


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    from ebmtool.training import step as tr

    train(tiny(seed=1, steps=2), tmp_path / "r", log=quiet)
    before = sha256_file(tmp_path / "r" / "ckpt.safetensors")
    real = tr.ired_losses

    def poisoned(*a, **k):
        parts = real(*a, **k)
        parts.energy.loss_energy = parts.energy.loss_energy * float("nan")
        parts.loss_total = parts.loss_total * float("nan")
        return parts

    monkeypatch.setattr(tr, "ired_losses", poisoned)
    from ebmtool.runtime.errors import RunError

    with pytest.raises(RunError, match="non-finite loss_energy at step 2"):
        train(TrainConfig(), tmp_path / "r", resume=tmp_path / "r" / "ckpt.safetensors", overrides={"steps": 4},
              log=quiet)
    assert sha256_file(tmp_path / "r" / "ckpt.safetensors") == before


def test_training_step_costs_five_network_calls():
    # The release spends 6: denoise, 2 x 2 in opt_step, energies of [x+; x-]. Reuse in `descend` saves one.
    cfg = tiny(seed=0)
    data = TrainingData(cfg)
    model = EnergyMLP(16, 16, 32, 16)
    x, y = data.batch(0, "cpu")
    gen = step_generator(0, 0)
    t = torch.randint(0, 10, (32,), generator=gen)
    model.counter.reset()
    ired_losses(model, Batch(x, y, t, gen), Objective(cfg, cosine_schedule(), energy_weight=0.5))
    assert model.counter.calls == 5
    assert model.counter.rows == 32 * 6  # the last call scores positives and negatives together (2B rows)
