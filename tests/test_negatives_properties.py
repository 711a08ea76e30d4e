"""Properties a comparison of negative sources rests on, tested directly: the shared noise inside the real step
(spied on the network's input), p_hard's sign, HNM's standardised deception score, accepted descent steps, and
offline negatives that must belong to the run's training problems."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from ebmtool.negatives import hnm as neg_mod  # the module whose refine_renoised the spy replaces
from ebmtool.training import diagnostics, negatives as train_negatives
from ebmtool.io.checkpoints import load_checkpoint
from ebmtool.method.diffusion import cosine_schedule, raw
from ebmtool.runtime.errors import InputError
from ebmtool.analysis.evaluate import load_model
from ebmtool.offline.mining import MineOptions, mine
from ebmtool.method.models import EnergyMLP
from ebmtool.negatives import NegativeSettings, generate, standardise
from ebmtool.tasks.data import TrainingData
from ebmtool.training.state import checkpoint_compute
from ebmtool.training.losses import Batch, Objective, ired_losses
from ebmtool.runtime.rng import step_generator
from ebmtool.training.loop import train

from helpers import tiny

SCHED = cosine_schedule()


def quiet(*a, **k):
    pass


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("trained")
    train(tiny(seed=0, steps=80, val_size=0, log_every=80), d / "r", log=quiet)
    model = load_model(load_checkpoint(d / "r" / "ckpt.safetensors"), "model")
    x, y = TrainingData(tiny(seed=0)).batch(0, "cpu")
    return model, x, y


@pytest.mark.parametrize("source,k", [("ired", 1), ("anm", 2), ("hnm", 2), ("gaussian", 3)])
def test_positive_and_negatives_share_the_noise_inside_the_real_step(source, k, monkeypatch):
    """Spy on the network's input in the step's scoring call (B(1+K) rows) and on the negatives the step
    generated: x- - sqrt(ab_t) y- == x+ - sqrt(ab_t) y, row by row, as the network saw them."""
    cfg = tiny(seed=3, negatives=source, k=k).validate()
    torch.manual_seed(0)
    model = EnergyMLP(16, 16, 32, 16)
    seen, made = [], []
    model.register_forward_pre_hook(lambda m, args: seen.append([raw(a).detach().clone() for a in args]))
    real_generate = train_negatives.generate

    def spy(*a, **kw):
        nb = real_generate(*a, **kw)
        made.append(nb.y_neg.clone())
        return nb

    monkeypatch.setattr(train_negatives, "generate", spy)
    x, y = TrainingData(cfg).batch(0, "cpu")
    b = x.shape[0]
    gen = step_generator(3, 0)
    t = torch.randint(0, 10, (b,), generator=gen)
    ired_losses(model, Batch(x, y, t, gen, neg_gen=step_generator(3, 0, 3)), Objective(cfg, SCHED, energy_weight=0.5))
    (scoring,) = [s for s in seen if s[1].shape[0] == b * (1 + k)]
    zs, ts = scoring[1], scoring[2]
    x_pos, x_neg = zs[:b], zs[b:].view(b, k, -1)
    sab = SCHED.sqrt_ab[t]
    assert torch.equal(ts[:b], t) and torch.equal(ts[b:].view(b, k), t[:, None].expand(b, k))
    (y_neg,) = made
    lhs = x_neg - sab[:, None, None] * y_neg
    rhs = (x_pos - sab[:, None] * y)[:, None, :].expand_as(lhs)
    assert torch.allclose(lhs, rhs, atol=1e-5)
    assert not torch.allclose(x_neg, x_pos[:, None, :].expand_as(x_neg))  # they differ in their clean part


def test_p_hard_counts_negatives_below_their_positive():
    e_pos = torch.tensor([1.0, 1.0])
    e_neg = torch.tensor([[0.5, 2.0], [3.0, 4.0]])  # one negative of four has a lower energy than its positive
    ratio = torch.ones(2, 2)
    kap = torch.tensor([[0.5, 2.0], [3.0, 4.0]])  # the hard pair's negative is nearer the mode: a false negative
    s = diagnostics.pair_stats(e_pos, e_neg, ratio, torch.ones(2, 2, dtype=torch.bool), kap)
    assert s["p_hard_false"] == 0.25 and s["p_hard_true"] == 0.0 and s["false_negative_fraction"] == 0.25
    assert s["p_hard"] == 0.25 and s["margin"] == pytest.approx((-0.5 + 1 + 2 + 3) / 4)
    s = diagnostics.pair_stats(e_pos, e_neg, ratio, torch.tensor([[False, True], [True, True]]), kap)
    assert s["p_hard"] == 0.0  # the hard one is invalid: not counted


def test_standardise_uses_valid_entries_and_scores_a_flat_row_zero():
    v = torch.tensor([[1.0, 2.0, 3.0, 100.0], [5.0, 5.0, 5.0, 5.0]])
    valid = torch.tensor([[True, True, True, False], [True, True, True, True]])
    z = standardise(v, valid)
    assert torch.allclose(z[0, :3], torch.tensor([-1.0, 0.0, 1.0]) * (1.5 ** 0.5))
    assert torch.equal(z[1], torch.zeros(4))


def _candidates(monkeypatch):
    """Record HNM's refined candidates and their energies (rows (b*K + j)*C + c) as the source scores them."""
    real, out = neg_mod.refine_renoised, {}

    def spy(*a, **kw):
        y_c, e_c, acc = real(*a, **kw)
        out.update(y_c=y_c, e_c=e_c)
        return y_c, e_c, acc

    monkeypatch.setattr(neg_mod, "refine_renoised", spy)
    return out


@pytest.mark.parametrize("lam,pick", [(0.0, "lowest energy"), (1e6, "farthest")])
def test_hnm_lambda_zero_picks_the_lowest_energy_and_a_huge_lambda_the_farthest(lam, pick, trained,
                                                                               monkeypatch):
    model, x, y = trained
    b, d, c, k = x.shape[0], y.shape[1], 4, 2
    g = torch.Generator().manual_seed(1)
    t, eps = torch.randint(0, 10, (b,), generator=g), torch.randn(b, d, generator=g)
    rec = _candidates(monkeypatch)
    s = NegativeSettings(hnm_candidates=c, hnm_lambda=lam)
    nb = generate("hnm", model, x, y, t, eps, SCHED, k, s, torch.Generator().manual_seed(0))
    y_c, e_c = rec["y_c"].view(b * k, c, d), rec["e_c"].view(b * k, c)
    dist = (y_c - y.repeat_interleave(k * c, 0).view(b * k, c, d)).pow(2).mean(2).sqrt()
    best = e_c.argmin(1) if pick == "lowest energy" else dist.argmax(1)
    expected = y_c[torch.arange(b * k), best].view(b, k, d)
    assert torch.equal(nb.y_neg, expected)


def test_hnm_candidates_on_a_trained_model_are_all_valid_and_refinement_is_accepted(trained):
    model, x, y = trained
    b, d = y.shape
    g = torch.Generator().manual_seed(2)
    t, eps = torch.randint(0, 10, (b,), generator=g), torch.randn(b, d, generator=g)
    nb = generate("hnm", model, x, y, t, eps, SCHED, 2, NegativeSettings(), torch.Generator().manual_seed(0))
    assert nb.valid.all()
    assert nb.info["attempted"] == b * 2 * 4 * 2  # B * K * C rows, 2 refinement steps each
    assert 0 < int(nb.info["accepted"]) <= nb.info["attempted"]


def test_refining_sources_log_their_accepted_fraction_and_hnm_its_level_histogram(tmp_path):
    train(tiny(seed=1, steps=4, negatives="anm:0.5,hnm:0.5", k=2, log_every=2), tmp_path / "r", log=quiet)
    with h5py.File(tmp_path / "r" / "metrics.h5", "r") as f:
        for name in ("anm", "hnm"):
            acc = f[f"source/{name}/accept_fraction"][()]
            assert len(acc) == 2 and np.all((acc >= 0) & (acc <= 1)) and np.all(np.isfinite(acc))
        hist = sum(f[f"source/hnm/selected_level_{lv}"][()] for lv in (0, 3, 6, 9))
        assert np.allclose(hist, 1.0)
        assert "source/ired/accept_fraction" not in f


def test_accept_alarm_names_a_source_whose_steps_are_rejected():
    from ebmtool.analysis.info import source_alarms

    assert source_alarms({"accept_fraction": np.array([0.0, 0.02])}) == [
        "only 1.0% of its descent steps were accepted: its negatives barely move from where they start "
        "(smaller step size?)"]
    assert source_alarms({"accept_fraction": np.array([0.4, 0.6])}) == []


def test_offline_negatives_for_other_problems_are_refused_even_with_force(tmp_path):
    train(tiny(steps=2, seed=1, time_dim=128), tmp_path / "base", log=quiet)
    ckpt = tmp_path / "base" / "ckpt.safetensors"
    mine(ckpt, tmp_path / "negs.h5", MineOptions(k=2, candidates=2, refine_steps=1, seed=5, batch_size=64, limit=64))
    with h5py.File(tmp_path / "negs.h5", "r") as f:
        mined = float(f.attrs["compute_flops"])
    assert mined > 0
    same = tiny(steps=2, seed=1, time_dim=128, k=2, offline_negatives=str(tmp_path / "negs.h5"))
    train(same, tmp_path / "refined", log=quiet)  # the run is charged for the mining that made its file
    base_step = checkpoint_compute(load_checkpoint(ckpt)) / 2
    refined = checkpoint_compute(load_checkpoint(tmp_path / "refined" / "ckpt.safetensors"))
    assert refined > mined + base_step  # mining plus two steps that also score K = 2 negatives
    other = tiny(steps=2, seed=2, time_dim=128, k=2, offline_negatives=str(tmp_path / "negs.h5"))  # other rows
    with pytest.raises(InputError, match="positives stored with 64 of its 64 rows differ"):
        train(other, tmp_path / "other", log=quiet, force=True)
