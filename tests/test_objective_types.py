"""The objective's typed result (training.losses.Losses), its shape checks, and the cross-process agreement
built from named values (training.step.Agreement, distributed.all_reduce_named)."""

import dataclasses
import signal

import pytest
import torch

from ebmtool.runtime import distributed as dist
from ebmtool.runtime.errors import RunError
from ebmtool.training import losses as L
from ebmtool.training.step import Agreement

from helpers import seeded_losses, tiny


def test_the_objective_returns_its_parts_as_fields():
    _, parts = seeded_losses(tiny(seed=0).validate(), 0)
    assert isinstance(parts, L.Losses) and isinstance(parts.energy, L.EnergyParts)
    b = parts.loss_denoise.shape[0]
    assert list(parts.per_example()) == ["loss_denoise", "loss_energy", "energy_pos", "energy_neg", "norm_ratio"]
    assert all(v.shape == (b,) for v in parts.per_example().values())
    assert list(parts.per_example(checked_only=True)) == ["loss_denoise", "loss_energy", "energy_pos", "energy_neg"]
    assert torch.equal(parts.loss_total, parts.loss_denoise.mean() + parts.energy_term)
    assert "loss_denoise_t0" in parts.diagnostics and "p_hard" in parts.diagnostics


def test_without_the_energy_term_its_fields_are_none():
    _, parts = seeded_losses(tiny(seed=0, supervise_energy=False).validate(), 0)
    assert parts.energy is None and parts.energy_term is None
    assert list(parts.per_example()) == ["loss_denoise"]
    assert torch.equal(parts.loss_total, parts.loss_denoise.mean())
    with pytest.raises(ValueError, match="both"):
        L.Losses(parts.loss_total, parts.loss_denoise, None, parts.loss_total)


def test_a_part_of_the_wrong_shape_is_refused_in_one_sentence(monkeypatch):
    """A (B, K) part (a broadcast gone wrong) raises RunError naming both shapes; not an assert, so python -O
    keeps it."""
    real = L.energy_term

    def broadcast(*a, **k):
        parts, diag, included = real(*a, **k)
        parts.energy_pos = parts.energy_pos[:, None].expand(-1, 3)
        return parts, diag, included

    monkeypatch.setattr(L, "energy_term", broadcast)
    cfg = tiny(seed=0).validate()
    with pytest.raises(RunError) as e:
        seeded_losses(cfg, 0)
    b = cfg.batch_size
    assert str(e.value) == (f"the objective's part energy_pos has shape ({b}, 3) where ({b},) was expected "
                            f"(one value per example of the batch's {b} rows)")
    L.check_shapes({"loss_denoise": torch.zeros(4)}, 4)  # the right shape passes


def _agreement(losses: dict, flops=10.0) -> Agreement:
    return Agreement({"loss_denoise": 0.0, "loss_total": 0.0, "gradient norm": 0.0},
                     {s.name: 0.0 for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)},
                     losses, 1.0, flops)


def _as_two_processes(monkeypatch, peer: dict):
    """all_reduce_sum as two processes, the other holding `peer`'s values (packed as it packs them)."""
    monkeypatch.setattr(dist, "active", lambda: True)
    monkeypatch.setattr(dist, "world_size", lambda: 2)
    monkeypatch.setattr(dist, "all_reduce_sum", lambda t: t + dist.pack_named(peer))


def test_named_values_are_summed_by_name_whatever_order_a_process_holds_them(monkeypatch):
    mine = {"a": 1.0, "b": 2.0, "c": 4.0}
    _as_two_processes(monkeypatch, {"c": 40.0, "a": 10.0, "b": 20.0})  # another insertion order
    assert dist.all_reduce_named(mine) == {"a": 11.0, "b": 22.0, "c": 44.0}


def test_processes_with_different_names_fail_instead_of_summing_misaligned(monkeypatch):
    _as_two_processes(monkeypatch, {"a": 10.0, "x": 20.0})  # same count, one name differs
    with pytest.raises(RunError, match="differently named values"):
        dist.all_reduce_named({"a": 1.0, "b": 2.0})


def test_a_new_loss_in_the_agreement_cannot_misalign_the_others(monkeypatch):
    """A loss added to the agreement (here one sorting before and one after the existing names) is summed under
    its own name, and every other value keeps its own sum: offsets into one list would have shifted them."""
    base = {"loss_total": 1.0, "loss_denoise": 2.0, "loss_energy": 3.0}
    for extra in ({"a_new_term": 100.0}, {"z_new_term": 100.0}):
        mine = _agreement({**base, **extra})
        peer = _agreement({**{k: 10 * v for k, v in base.items()}, **{k: 10 * v for k, v in extra.items()}}, 5.0)
        peer.non_finite["loss_total"] = 1.0
        peer.signals["SIGTERM"] = 1.0
        _as_two_processes(monkeypatch, peer.named())
        got = mine.all_reduced()
        assert got.losses == {k: 11 * v for k, v in {**base, **extra}.items()}
        assert got.flops == 15.0 and got.grad_norm == 1.0
        assert got.fault() == "loss_total" and got.signal() == signal.SIGTERM


def test_the_agreement_of_a_real_step_names_its_values():
    cfg = tiny(seed=0).validate()
    _, parts = seeded_losses(cfg, 0)
    a = Agreement.of(parts, torch.tensor(2.5), signal.SIGUSR1, 7.0)
    assert list(a.non_finite) == ["loss_denoise", "loss_energy", "energy_pos", "energy_neg", "loss_total",
                                  "gradient norm"]
    assert a.fault() is None and a.signal() == signal.SIGUSR1 and a.grad_norm == 2.5
    assert a.losses["loss_total"] == pytest.approx(float(parts.loss_total.detach()))
    assert a.losses["loss_energy"] == pytest.approx(float(parts.energy.loss_energy.detach().mean()))
    parts = dataclasses.replace(parts, loss_denoise=parts.loss_denoise * float("nan"))
    assert Agreement.of(parts, torch.tensor(2.5), None, 7.0).fault() == "loss_denoise"
