"""Negatives that are positives in disguise: kappa, the false-negative fraction, the kappa floor, the gradient
cosine between the two terms, the per-level denoising loss, the pre-flight against the exact energy, and info's
alarms. Each check has a known answer."""

import json
import math

import h5py
import pytest
import torch
from click.testing import CliRunner

from ebmtool.cli import cli
from ebmtool.config import TrainConfig
from ebmtool.method.diffusion import cosine_schedule, noised
from ebmtool.negatives import FLOOR_MARGIN, floor_kappa, kappa, noise_to_signal, renoise
from ebmtool.analysis.preflight import ExactEnergy, preflight
from ebmtool.tasks.problems import Problems
from ebmtool.training import diagnostics, train
from ebmtool.training.metrics import read_metrics

from helpers import TINY_FLAGS, seeded_losses, tiny

SCHED = cosine_schedule()


def test_kappa_of_a_hand_made_pair_is_the_ratio_of_distances_to_the_noisy_mode():
    """One positive, t = 3, eps = (1, 0): x+ sits s1 from the mode. Negative A is the clean answer itself
    re-noised (kappa 1); negative B is the noisy mode sqrt(ab) y itself (kappa 0); negative C is twice as far
    along eps (kappa 2). Computed in noisy space by hand and by kappa()."""
    t = torch.tensor([3])
    y = torch.tensor([[0.5, -0.25]])
    eps = torch.tensor([[1.0, 0.0]])
    c = noise_to_signal(SCHED, t)
    y_neg = torch.stack([y[0], y[0] - c[0] * eps[0], y[0] + c[0] * eps[0]])[None]  # (1, 3, 2)
    got = kappa(y_neg, y, eps, c)
    x_pos, x_neg, mode = noised(SCHED, y, t, eps), renoise(SCHED, y_neg, t, eps), SCHED.sqrt_ab[t][:, None] * y
    by_hand = (x_neg - mode[:, None]).norm(dim=2) / (x_pos - mode).norm(dim=1)
    assert torch.allclose(got, by_hand, atol=1e-6)
    assert torch.allclose(got, torch.tensor([[1.0, 0.0, 2.0]]), atol=1e-5)


def test_kappa_with_a_mask_counts_only_free_entries():
    t, y, eps = torch.tensor([5]), torch.zeros(1, 2), torch.tensor([[1.0, 1.0]])
    mask = torch.tensor([[0.0, 1.0]])  # the second entry is given
    c = noise_to_signal(SCHED, t)
    y_neg = torch.tensor([[[c.item(), 0.0]]])  # free entry twice as far along eps; given entry as y
    assert kappa(y_neg, y, eps, c, mask).item() == pytest.approx(2.0, rel=1e-5)


@pytest.mark.parametrize("floor", [1.0, 1.2, 2.0])
@pytest.mark.parametrize("box", [2.0, 1.0])
def test_the_floor_never_leaves_a_valid_negative_below_it(floor, box):
    gen = torch.Generator().manual_seed(0)
    b, k, d = 400, 3, 6
    t = torch.arange(b) % SCHED.levels
    y = (torch.rand(b, d, generator=gen) * 2 - 1) * box
    eps = torch.randn(b, d, generator=gen)
    c = noise_to_signal(SCHED, t)
    # negatives all over: at the mode (kappa 0), near it, at the answer, far away
    y_neg = (y[:, None, :] - c[:, None, None] * eps[:, None, :] * torch.rand(b, k, 1, generator=gen)
             + 0.1 * torch.randn(b, k, d, generator=gen)).clamp(-box, box)
    y_neg[:, 0] = (y - c[:, None] * eps).clamp(-box, box)  # exactly on the mode where the box allows
    before = kappa(y_neg, y, eps, c)
    out, moved, short = floor_kappa(y_neg, y, eps, c, floor, box)
    after = kappa(out, y, eps, c)
    assert torch.equal(moved, before < floor)
    assert (after[~short] >= floor).all()  # every kept negative is at or above the floor
    assert short.any() == bool((after < floor).any())  # and every one below it is reported, to be dropped
    assert out.abs().max() <= box  # inside the clean box
    assert torch.equal(out[~moved], y_neg[~moved])  # negatives outside the floor are untouched
    kept_moved = moved & ~short
    assert torch.allclose(after[kept_moved], torch.full_like(after[kept_moved], floor * (1 + FLOOR_MARGIN)), rtol=1e-4) \
        or (after[kept_moved] >= floor).all()


def test_the_floor_keeps_given_entries():
    gen = torch.Generator().manual_seed(1)
    b, k, d = 50, 2, 5
    t = torch.full((b,), 4)
    y, eps = torch.rand(b, d, generator=gen) - 0.5, torch.randn(b, d, generator=gen)
    mask = (torch.rand(b, d, generator=gen) > 0.5).float()
    c = noise_to_signal(SCHED, t)
    y_neg = y[:, None, :].expand(b, k, d).clone()  # duplicates of the positive: kappa 1 on the free entries
    out, moved, short = floor_kappa(y_neg, y, eps, c, 1.5, 2.0, mask)
    assert torch.equal(torch.where(mask[:, None] > 0, out, 0 * out), torch.where(mask[:, None] > 0, y_neg, 0 * out))
    some_free = (mask < 1).any(dim=1)[:, None].expand(b, k)  # a row with every entry given has no kappa
    assert (kappa(out, y, eps, c, mask)[~short & some_free] >= 1.5).all() and some_free.any()


def test_the_floor_adds_no_network_call(tmp_path):
    """Same steps, same counted compute, same network calls with and without the floor."""
    runs = {}
    for floor in (0.0, 1.2):
        out = tmp_path / f"f{floor}"
        train(tiny(seed=0, steps=4, negatives="anm", k=2, kappa_floor=floor), out, log=lambda m: None)
        cols, _ = read_metrics(out / "metrics.h5")
        runs[floor] = cols
    assert runs[0.0]["compute_flops"][-1] == runs[1.2]["compute_flops"][-1]
    assert "floored_fraction" in runs[1.2] and "floored_fraction" not in runs[0.0]
    assert runs[1.2]["source/anm/false_negative_fraction"][-1] == 0.0
    assert runs[1.2]["floored_fraction"][-1] > 0


def test_the_floor_makes_no_model_call(monkeypatch):
    calls = []

    class Spy(torch.nn.Module):
        def forward(self, x, z, t):
            calls.append(1)
            return z.sum(1)
    gen = torch.Generator().manual_seed(0)
    y, eps = torch.rand(8, 4, generator=gen), torch.randn(8, 4, generator=gen)
    floor_kappa(y[:, None].clone(), y, eps, noise_to_signal(SCHED, torch.full((8,), 2)), 1.2, 2.0)
    assert calls == []


def test_grad_cosine_equals_autograd_on_a_small_model():
    """backward_terms' cosine and norm ratio against the two terms' gradients taken by autograd separately."""
    cfg = tiny(seed=0).validate()
    model, parts = seeded_losses(cfg, 0)
    params = [p for p in model.parameters() if p.requires_grad]
    g1 = torch.autograd.grad(parts.loss_denoise.mean(), params, retain_graph=True, allow_unused=True)
    g2 = torch.autograd.grad(parts.energy_term, params, retain_graph=True, allow_unused=True)
    flat = [torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1).double() for g, p in zip(gs, params)])
            for gs in (g1, g2)]
    want_cos = float(flat[0] @ flat[1] / (flat[0].norm() * flat[1].norm()))
    want_ratio = float(flat[1].norm() / flat[0].norm())
    got = diagnostics.backward_terms(model, parts, measure=True)
    assert float(got["grad_cosine"]) == pytest.approx(want_cos, rel=1e-4, abs=1e-6)
    assert float(got["grad_ratio_energy"]) == pytest.approx(want_ratio, rel=1e-4)
    assert -1 <= float(got["grad_cosine"]) <= 1
    total = [g1i + g2i for g1i, g2i in zip(g1, g2)]  # .grad holds the sum of the two terms' gradients
    assert all(torch.allclose(p.grad, g, atol=1e-7) for p, g in zip(params, total))


def test_the_cosine_sign_follows_the_gradients():
    """Flip the energy term's sign: the cosine flips too (the check above could pass on a constant)."""
    cfg = tiny(seed=0).validate()
    model, parts = seeded_losses(cfg, 0)
    a = float(diagnostics.backward_terms(model, parts, measure=True)["grad_cosine"])
    model, parts = seeded_losses(cfg, 0)
    parts.energy_term = -parts.energy_term
    b = float(diagnostics.backward_terms(model, parts, measure=True)["grad_cosine"])
    assert b == pytest.approx(-a, rel=1e-5) and a != 0


def test_denoising_loss_per_level_is_the_mean_over_each_levels_rows():
    loss = torch.tensor([1.0, 2.0, 3.0, 10.0])
    t = torch.tensor([0, 0, 2, 9])
    got = diagnostics.level_losses(loss, t, 10, sharded=False)
    assert float(got["loss_denoise_t0"]) == 1.5 and float(got["loss_denoise_t2"]) == 3.0
    assert float(got["loss_denoise_t9"]) == 10.0 and math.isnan(float(got["loss_denoise_t5"]))


def test_a_run_logs_the_new_diagnostics(tmp_path):
    train(tiny(seed=0, steps=4, negatives="anm"), tmp_path / "r", log=lambda m: None)
    with h5py.File(tmp_path / "r" / "metrics.h5") as f:
        names = set()
        f.visit(names.add)
    for col in ("kappa", "false_negative_fraction", "p_hard_true", "p_hard_false", "grad_cosine",
                "grad_ratio_energy", "loss_denoise_t0", "loss_denoise_t9", "source/anm/kappa",
                "source/anm/false_negative_fraction", "source/anm/p_hard_true"):
        assert col in names, col
    cols, _ = read_metrics(tmp_path / "r" / "metrics.h5")
    p = cols["p_hard"]
    ok = ~torch.isnan(torch.tensor(p)).numpy()
    assert (abs(cols["p_hard_true"][ok] + cols["p_hard_false"][ok] - p[ok]) < 1e-9).all()  # a split of p_hard


def test_exact_energy_gradient_is_the_true_noise():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 3, generator=gen), torch.randn(6, 2, generator=gen)
    oracle = ExactEnergy(SCHED, Problems(x.numpy(), y.numpy()))
    t = torch.arange(6)
    eps = torch.randn(6, 2, generator=gen)
    z = noised(SCHED, y, t, eps).requires_grad_(True)
    (g,) = torch.autograd.grad(oracle(x.flip(0).flip(0), z, t).sum(), z)
    assert torch.allclose(g, eps, atol=1e-5)


def test_preflight_of_anm_defaults_finds_false_negatives_at_low_levels_and_the_floor_removes_them():
    plain = preflight(TrainConfig(negatives="anm"), n=64)
    assert all(r["false_negative_fraction"] > 0.95 for r in plain.rows[:4])
    floored = preflight(TrainConfig(negatives="anm", kappa_floor=1.2), n=64)
    assert all(r["false_negative_fraction"] == 0 or math.isnan(r["false_negative_fraction"]) for r in floored.rows)
    assert all(r["floored_fraction"] > 0.5 for r in floored.rows[:5])


def test_preflight_cli_json_and_bad_input(tmp_path):
    runner = CliRunner()
    r = runner.invoke(cli, ["preflight", "--anm", "-n", "32", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["source"] == "anm" and len(d["levels"]) == 10 and d["levels"][0]["false_negative_fraction"] == 1.0
    r = runner.invoke(cli, ["preflight", "--kappa-floor", "0.5"])
    assert r.exit_code == 2 and "--kappa-floor must be 0 (off) or at least 1" in r.output
    r = runner.invoke(cli, ["preflight", "--task", "sudoku"])
    assert r.exit_code == 2 and "given entries" in r.output


def test_train_refuses_a_floor_below_one(tmp_path):
    r = CliRunner().invoke(cli, ["train", *TINY_FLAGS, "--steps", "2", "--kappa-floor", "0.9", "-o",
                                 str(tmp_path / "r")])
    assert r.exit_code == 2 and "--kappa-floor must be 0 (off) or at least 1" in r.output


def test_info_raises_the_false_negative_alarm_with_the_fraction(tmp_path):
    out = tmp_path / "a"  # 40 steps at a high learning rate: enough for ANM's descent to reach past the answer
    train(tiny(seed=0, steps=40, lr=1e-2, log_every=10, negatives="anm"), out, log=lambda m: None)
    r = CliRunner().invoke(cli, ["info", str(out)])
    assert r.exit_code == 0
    fn = read_metrics(out / "metrics.h5")[0]["source/anm/false_negative_fraction"]
    assert fn[-1] > 0.05
    assert f"source anm: {fn[~torch.isnan(torch.tensor(fn)).numpy()].mean():.0%} of its negatives are false " \
           "negatives" in r.output
    floored = tmp_path / "f"
    train(tiny(seed=0, steps=40, lr=1e-2, log_every=10, negatives="anm", kappa_floor=1.2), floored,
          log=lambda m: None)
    assert "false negatives" not in CliRunner().invoke(cli, ["info", str(floored)]).output


def test_mine_negatives_records_the_floor(tmp_path):
    base = tmp_path / "base"
    train(tiny(seed=0, steps=2), base, log=lambda m: None)
    out = tmp_path / "negs.h5"
    r = CliRunner().invoke(cli, ["mine-negatives", str(base), "--k", "2", "--candidates", "2", "--limit", "32",
                                 "--kappa-floor", "1.5", "-o", str(out)])
    assert r.exit_code == 0, r.output
    with h5py.File(out) as f:
        prov = json.loads(f.attrs["provenance"])
        assert prov["settings"]["kappa_floor"] == 1.5 if "settings" in prov else "kappa_floor" in json.dumps(prov)
        neg, pos, eps, lvl, valid = (torch.from_numpy(f[n][()]) for n in
                                     ("negatives", "positives", "eps", "level", "valid"))
    k = kappa(neg, pos, eps, noise_to_signal(SCHED, lvl))
    assert (k[valid] >= 1.5).all() and "moved out to kappa >= 1.5" in r.output


def test_the_cosine_alarm_reads_the_last_quarter():
    from ebmtool.analysis.info import metrics_summary
    import numpy as np
    steps = np.arange(1, 9)
    healthy = {"step": steps, "grad_cosine": np.array([-0.5, -0.5, -0.5, -0.5, -0.5, -0.5, 0.3, 0.2])}
    sick = {"step": steps, "grad_cosine": np.array([0.5, 0.5, 0.5, 0.5, 0.5, 0.5, -0.3, -0.4])}
    assert not any("opposes" in a for a in metrics_summary(healthy, {})["alarms"])
    assert any("median cosine -0.35" in a for a in metrics_summary(sick, {})["alarms"])


def test_the_floor_drops_only_negatives_no_point_of_the_box_can_lift():
    """`short` is exactly where even the box corner farthest from the noisy mode is inside the floor."""
    gen = torch.Generator().manual_seed(2)
    b, d, box, floor = 600, 4, 2.0, 1.2
    t = torch.arange(b) % SCHED.levels
    y = (torch.rand(b, d, generator=gen) * 2 - 1) * box
    eps = torch.randn(b, d, generator=gen)
    c = noise_to_signal(SCHED, t)
    y_neg = (y - c[:, None] * eps).clamp(-box, box)[:, None, :]  # as near the mode as the box allows
    out, moved, short = floor_kappa(y_neg, y, eps, c, floor, box)
    q = y - c[:, None] * eps
    corner = torch.where(q < 0, box, -box)[:, None, :]
    reachable = kappa(corner, y, eps, c)[:, 0] >= floor * (1 + 1e-3)
    assert moved.all() and not short[reachable, 0].any()
    assert short.any() and (t[short[:, 0]] >= 7).all()  # only where the noise dwarfs the box
