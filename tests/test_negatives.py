"""Negative sources: descent direction, shared noise, near-duplicate filter, batching over B*K, sensitivity of
every hyper-parameter, ANM harder than the reference on a trained model, K = 1 parity with the baseline, and the
command-line guards."""

import h5py
import pytest
import torch

from ebmtool.cli import cli
from ebmtool.method.diffusion import cosine_schedule, energy
from ebmtool.negatives import sans as sans_mod
from ebmtool.runtime.errors import InputError
from ebmtool.method.models import EnergyMLP
from ebmtool.negatives import (
    NegativeSettings,
    generate,
    hnm_levels,
    ired_negative,
    refine_renoised,
    registry,
    renoise,
)
from ebmtool.tasks.data import TrainingData
from ebmtool.training.losses import Batch, Objective, ired_losses
from ebmtool.runtime import rng
from ebmtool.runtime.rng import step_generator
from ebmtool.training.loop import train
from ebmtool.io.checkpoints import load_checkpoint
from ebmtool.analysis.evaluate import load_model

from helpers import seeded_losses, TINY_FLAGS, tiny

SCHED = cosine_schedule()
SOURCES = registry.names()  # every registered source (the built-ins when the tests are collected)


def quiet(*a, **k):
    pass


def problem(b=64, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(b, d, generator=g), 0.5 * torch.randn(b, d, generator=g)
    t = torch.randint(0, 10, (b,), generator=g)
    eps = torch.randn(b, d, generator=g)
    return x, y, t, eps


def fixed_net(seed=0, d=16):
    torch.manual_seed(seed)
    return EnergyMLP(d, d, width=32, time_dim=16)


@pytest.fixture(scope="module")
def trained():
    """A tiny model after 80 IRED steps (seconds): its landscape is shaped, unlike a random network's."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        train(tiny(seed=0, steps=80, time_dim=16, val_size=0, log_every=80), Path(d) / "r", log=quiet)
        model = load_model(load_checkpoint(Path(d) / "r" / "ckpt.safetensors"), "model")
    data = TrainingData(tiny(seed=0))
    x, y = data.batch(0, "cpu")
    return model, x, y


# ------------------------------------------------------------------------------------------------ descent

@pytest.mark.parametrize("radius", [None, 0.5])
def test_anm_refinement_lowers_the_scored_energy(radius):
    model = fixed_net()
    x, y, t, eps = problem(256)
    y0 = (y + torch.randn(y.shape, generator=torch.Generator().manual_seed(1))).clamp(-2, 2)
    y1, e1, _ = refine_renoised(model, x, y0, t, eps, SCHED, 5, radius=radius)
    e0 = energy(model, x, renoise(SCHED, y0[:, None], t, eps)[:, 0], t)
    e1_check = energy(model, x, renoise(SCHED, y1[:, None], t, eps)[:, 0], t)
    assert torch.allclose(e1, e1_check, rtol=1e-4, atol=1e-5)  # the energy descended is the one the loss scores
    assert (e1 <= e0 + 1e-6).all()
    assert float((e1 < e0).float().mean()) >= 0.95
    if radius is not None:
        assert float(((y1 - y0) ** 2).mean(dim=1).sqrt().max()) <= radius + 1e-5


@pytest.mark.parametrize("source", ["ired", "hnm"])
def test_ired_and_hnm_refinement_lower_the_energy(source):
    """opt_step (ired) and HNM refinement with 0 vs 2 steps on the same starts: energy goes down for >= 95%."""
    model = fixed_net()
    x, y, t, eps = problem(256)
    if source == "ired":
        from ebmtool.method.diffusion import descend, noised

        bound = 2 * SCHED.sqrt_ab[t][:, None]
        z0 = torch.maximum(torch.minimum(noised(SCHED, y, t, eps), bound), -bound)  # a start inside the box
        _, e1, _ = descend(model, x, z0, t, SCHED, 2, bound=bound)
        e0 = energy(model, x, z0, t)
    else:
        y0 = (y + 0.7 * eps.flip(0)).clamp(-2, 2)
        _, e1, _ = refine_renoised(model, x, y0, t, eps, SCHED, 2)
        e0 = energy(model, x, renoise(SCHED, y0[:, None], t, eps)[:, 0], t)
    assert (e1 <= e0 + 1e-6).all() and float((e1 < e0).float().mean()) >= 0.95


def test_anm_negatives_have_lower_energy_than_ired_on_a_trained_model(trained):
    model, x, y = trained
    g = torch.Generator().manual_seed(5)
    t = torch.randint(0, 10, (x.shape[0],), generator=g)
    eps = torch.randn(y.shape, generator=g)
    e = {}
    for source in ("ired", "anm"):
        nb = generate(source, model, x, y, t, eps, SCHED, 4, NegativeSettings(), torch.Generator().manual_seed(1))
        xn = renoise(SCHED, nb.y_neg, t, eps)
        e[source] = energy(model, x.repeat_interleave(4, 0), xn.reshape(-1, y.shape[1]),
                           t.repeat_interleave(4, 0)).view(-1, 4)
    assert e["anm"].mean() < e["ired"].mean()
    assert float((e["anm"] < e["ired"]).float().mean()) > 0.6


# ------------------------------------------------------------------------------------------------ shared noise

@pytest.mark.parametrize("source", SOURCES)
def test_shared_noise_identity_and_detached(source):
    """x- - sqrt(ab_t) y- == x+ - sqrt(ab_t) y for every negative of every source."""
    model = fixed_net()
    x, y, t, eps = problem(32)
    nb = generate(source, model, x, y, t, eps, SCHED, 3, NegativeSettings(), torch.Generator().manual_seed(0))
    assert nb.y_neg.shape == (32, 3, 16) and nb.valid.shape == (32, 3) and not nb.y_neg.requires_grad
    x_pos = SCHED.sqrt_ab[t][:, None] * y + SCHED.sqrt_1mab[t][:, None] * eps
    x_neg = renoise(SCHED, nb.y_neg, t, eps)
    lhs = x_neg - SCHED.sqrt_ab[t][:, None, None] * nb.y_neg
    rhs = (x_pos - SCHED.sqrt_ab[t][:, None] * y)[:, None, :].expand_as(lhs)
    assert torch.allclose(lhs, rhs, atol=1e-6)
    assert (nb.y_neg.abs() <= 2).all()


def test_k_negatives_are_one_batch_of_b_times_k_rows():
    model = fixed_net()
    x, y, t, eps = problem(32)
    for k in (1, 8):
        model.counter.reset()
        generate("anm", model, x, y, t, eps, SCHED, k, NegativeSettings(anm_steps=3),
                 torch.Generator().manual_seed(0))
        assert model.counter.calls == 4  # 3 steps = 4 calls whatever K is (descend reuses evaluations)
        assert model.counter.rows == 4 * 32 * k
    model.counter.reset()
    generate("hnm", model, x, y, t, eps, SCHED, 2, NegativeSettings(hnm_candidates=4, hnm_steps=2),
             torch.Generator().manual_seed(0))
    assert model.counter.calls == 3 and model.counter.rows == 3 * 32 * 2 * 4


def test_k1_ired_source_is_the_reference_negative():
    model = fixed_net()
    x, y, t, eps = problem(32)
    nb = generate("ired", model, x, y, t, eps, SCHED, 1, NegativeSettings(), None)
    assert torch.equal(nb.y_neg[:, 0], ired_negative(model, x, y, t, eps, SCHED))


def test_negatives_of_one_positive_differ():
    model = fixed_net()
    x, y, t, eps = problem(32)
    for source in SOURCES:
        nb = generate(source, model, x, y, t, eps, SCHED, 4, NegativeSettings(), torch.Generator().manual_seed(0))
        t_small = t < 8  # at t >= 8 the clean clamp can map different starts to the same corner
        assert (nb.y_neg[t_small, 0] - nb.y_neg[t_small, 1]).abs().amax(dim=1).min() > 0, source


# ------------------------------------------------------------------------------------------------ near-duplicates

def test_no_near_duplicate_survives_and_duplicates_are_counted():
    model = fixed_net()
    x, y, t, eps = problem(64)
    tiny_noise = NegativeSettings(gaussian_scale=1e-4, dup_threshold=1e-3)
    nb = generate("gaussian", model, x, y, t, eps, SCHED, 4, tiny_noise, torch.Generator().manual_seed(0))
    assert not nb.valid.any() and nb.duplicates == nb.candidates == 256
    mixed = NegativeSettings(gaussian_scale=1e-3, dup_threshold=1e-3)
    nb = generate("gaussian", model, x, y, t, eps, SCHED, 4, mixed, torch.Generator().manual_seed(0))
    dist = ((nb.y_neg - y[:, None]) ** 2).mean(dim=2).sqrt()
    assert 0 < nb.duplicates < 256 and nb.duplicates == int((~nb.valid).sum())
    assert (dist[nb.valid] > 1e-3).all() and (dist[~nb.valid] <= 1e-3).all()


def test_hnm_never_selects_a_near_duplicate_candidate():
    model = fixed_net()
    x, y, t, eps = problem(64)
    # a huge threshold makes the level-0 candidates (close to y) duplicates; lambda < 0 would prefer them
    s = NegativeSettings(hnm_candidates=4, hnm_lambda=-100.0, dup_threshold=0.5)
    nb = generate("hnm", model, x, y, t, eps, SCHED, 2, s, torch.Generator().manual_seed(0))
    dist = ((nb.y_neg - y[:, None]) ** 2).mean(dim=2).sqrt()
    assert (dist[nb.valid] > 0.5).all() and nb.duplicates > 0


def test_examples_without_valid_negatives_leave_the_energy_term_and_are_counted():
    cfg = tiny(seed=1, negatives="gaussian", gaussian_scale=1e-5, k=2).validate()
    cfg.curriculum_total = 10
    data = TrainingData(cfg)
    model = EnergyMLP(16, 16, 32, 16)
    x, y = data.batch(0, "cpu")
    gen = step_generator(1, 0)
    t = torch.randint(0, 10, (32,), generator=gen)
    parts = ired_losses(model, Batch(x, y, t, gen, neg_gen=step_generator(1, 0, rng.NEGATIVES)), Objective(cfg, SCHED, energy_weight=0.5))
    d = parts.diagnostics
    assert d["dup_fraction"] == 1.0 and d["excluded_fraction"] == 1.0
    assert parts.energy_term.item() == 0.0  # nothing is learnt from duplicates
    assert torch.isclose(parts.loss_total, parts.loss_denoise.mean())


# ------------------------------------------------------------------------------------------------ sensitivity

# a value other than the default for every setting of every registered source
CHANGED = {"anm_steps": 2, "anm_step_size": 0.3, "anm_radius": 0.05, "anm_noise": 3.0, "hnm_candidates": 2,
           "hnm_steps": 0, "hnm_lambda": 20.0, "hnm_select": "sample", "gaussian_scale": 0.3, "neg_steps": 0,
           "neg_noise_scale": 1.0, "clamp_mode": "first-example"}
SETTINGS = [(src.name, st.name) for src in registry.sources() for st in src.settings]


def test_every_registered_setting_has_a_changed_value_to_test():
    assert sorted(n for _, n in SETTINGS) == sorted(CHANGED)


@pytest.mark.parametrize("source, field", SETTINGS)
def test_every_hyper_parameter_changes_the_negatives(trained, source, field):
    value = CHANGED[field]
    model, x, y = trained
    g = torch.Generator().manual_seed(2)
    t = torch.randint(0, 6, (x.shape[0],), generator=g)
    eps = torch.randn(y.shape, generator=g)
    base = NegativeSettings()
    a = generate(source, model, x, y, t, eps, SCHED, 2, base, torch.Generator().manual_seed(0)).y_neg
    b = generate(source, model, x, y, t, eps, SCHED, 2, base.replace(**{field: value}),
                 torch.Generator().manual_seed(0)).y_neg
    assert not torch.allclose(a, b), f"{field} has no effect"


def test_hnm_levels_span_the_schedule():
    assert hnm_levels(4).tolist() == [0, 3, 6, 9] and hnm_levels(1).tolist() == [0]


# ------------------------------------------------------------------------------------------------ losses

def test_default_configuration_reproduces_the_baseline_loss_golden():
    """Golden values computed with the code of commit 37c0756 for the same seeded step."""
    model, parts = seeded_losses(tiny(seed=7).validate(), 7)
    parts.loss_total.backward()
    gnorm = torch.cat([p.grad.flatten() for p in model.parameters()]).norm().item()
    assert parts.loss_total.item() == pytest.approx(1.407025694847107, rel=1e-6)
    assert parts.energy.loss_energy.mean().item() == pytest.approx(0.6922881603240967, rel=1e-6)
    assert parts.energy.energy_neg.sum().item() == pytest.approx(7.359838008880615, rel=1e-6)
    assert gnorm == pytest.approx(0.022984404116868973, rel=1e-5)


@pytest.mark.parametrize("form", ["infonce", "pairwise"])
def test_k1_sans_is_refused_because_it_equals_the_baseline_loss(form):
    with pytest.raises(InputError, match="--sans with --k 1 .* always 1"):
        tiny(seed=7, sans=True, sans_loss=form, alpha=3.0).validate()
    # why: the weights of one negative are exactly 1 whatever alpha, so the weighted loss is the unweighted one
    e_pos, e_neg = torch.randn(32), torch.randn(32, 1)
    valid = torch.ones(32, 1, dtype=torch.bool)
    w = sans_mod.weights(e_neg, torch.full((32,), 3.0), valid)
    assert torch.equal(w, torch.ones(32, 1))
    assert torch.allclose(sans_mod.loss(form, e_pos, e_neg, w), sans_mod.loss(form, e_pos, e_neg,
                                                                                 sans_mod.uniform_weights(valid)))


def test_one_energy_call_scores_positives_and_all_k_negatives():
    cfg = tiny(seed=0, k=8).validate()
    data = TrainingData(cfg)
    model = EnergyMLP(16, 16, 32, 16)
    x, y = data.batch(0, "cpu")
    gen = step_generator(0, 0)
    t = torch.randint(0, 10, (32,), generator=gen)
    model.counter.reset()
    parts = ired_losses(model, Batch(x, y, t, gen, neg_gen=step_generator(0, 0, rng.NEGATIVES)), Objective(cfg, SCHED, energy_weight=0.5))
    # denoise (1) + ired descent 2 steps (3 calls of B*K rows) + one scoring call of B(1+K) rows
    assert model.counter.calls == 5
    assert model.counter.rows == 32 + 3 * 32 * 8 + 32 * 9
    assert parts.diagnostics["weight_ess"] == pytest.approx(8.0)


# ------------------------------------------------------------------------------------------------ config + CLI

@pytest.mark.parametrize("kw, msg", [
    (dict(supervise_energy=False, negatives="anm"), "without energy supervision"),
    (dict(supervise_energy=False, k=4), "without energy supervision"),
    (dict(anm_steps=3), "no negative source 'anm' is used"),
    (dict(negatives="anm", neg_steps=5), "ired source"),
    (dict(alpha=0.5), "needs --sans"),
    (dict(sans=True, k=2, margin=3.0), "only used by --sans-loss logistic"),
    (dict(sans=True, k=2, alpha_floor=0.2), "only used by --alpha-schedule linear"),
    (dict(negatives="anm", anm_steps=0), "--anm-steps 0 leaves ANM negatives where they start"),
    (dict(energy_weight=0.0), "energy-weight 0"),
    (dict(curriculum="0:ired", negatives="anm"), "exclude each other"),
    (dict(negatives="ired:0.5,anm:0.4"), "sum to"),
])
def test_unused_or_contradictory_settings_are_rejected(kw, msg):
    with pytest.raises(InputError, match=msg):
        tiny(**kw).validate()


def test_used_settings_are_resolved_and_stored():
    cfg = tiny(negatives="ired:0.5,hnm:0.5", sans=True, k=2, sans_loss="logistic").validate()
    assert cfg.hnm_candidates == 4 and cfg.hnm_lambda == 1.0 and cfg.anm_steps is None
    assert cfg.alpha == 1.0 and cfg.margin == 9.0 and cfg.alpha_floor is None


def invoke(runner, args):
    return runner.invoke(cli, [str(a) for a in args])


def test_cli_anm_k16_trains_logs_diagnostics_and_stores_the_config(runner, tmp_path):
    out = tmp_path / "r"
    r = invoke(runner, ["train", *TINY_FLAGS, "--steps", "2", "--seed", "0",
                        "--anm", "--k", "16", "--val-size", "0", "-o", out])
    assert r.exit_code == 0, r.output
    assert "negatives from step 0: anm 1; K = 16" in r.stderr
    ck = load_checkpoint(out / "ckpt.safetensors")
    assert ck.config["negatives"] == "anm" and ck.config["k"] == 16 and ck.config["anm_steps"] == 5
    with h5py.File(out / "metrics.h5") as f:
        for col in ("stage", "dup_fraction", "weight_ess", "grad_share_energy", "source/anm/p_hard",
                    "source/anm/fraction", "source/anm/configured", "source/anm/norm_ratio", "source/anm/seconds"):
            assert col in f, col
        assert f["weight_ess"][-1] == pytest.approx(16.0)
        assert 0 < f["grad_share_energy"][-1] < 1
    info = invoke(runner, ["info", out / "metrics.h5"])
    assert info.exit_code == 0 and "sources" in info.output and "anm" in info.output


@pytest.mark.parametrize("args, msg", [
    (["--no-supervise-energy", "--anm"], "without energy supervision"),
    (["--no-supervise-energy", "--k", "1"], "without energy supervision"),
    (["--anm-steps", "3"], "no negative source 'anm'"),
    (["--anm", "--neg-steps", "2"], "ired source"),
    (["--alpha", "1"], "needs --sans"),
    (["--anm", "--negatives-from", "hnm"], "shorthand"),
    (["--curriculum", "0:ired,0.5:anm=0.5+hnm=0.6"], "sum to"),
    (["--curriculum", "0:ired,0.5:clean"], "unknown negative source"),
])
def test_cli_rejects_unused_flags_with_exit_2(runner, tmp_path, args, msg):
    r = invoke(runner, ["train", *TINY_FLAGS, "--steps", "1", *args, "-o", tmp_path / "r"])
    assert r.exit_code == 2, r.output
    assert msg in r.output
