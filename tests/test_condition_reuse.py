"""The condition's projection shared by the network calls that share x (diffusion.condition, EnergyMLP.condition),
input gradients through fc1's y columns only, and a level's FiLM terms shared (folded into the weights at one
level): the same mathematics as before, checked two ways.

- Against the code before the change (377a3e9), on fixed weights and seeds: tests/reuse_cases.py run there wrote
  tests/data/pre_condition_reuse.pt (float32). Energies and gradients agree to rounding. A descent's acceptance
  test (E' <= E) can flip where E' and E are equal to rounding, which moves one row's answer by up to a descent
  step; the float64 checks below show that the mathematics is the same.
- Against the network's function as it was written before (`Before`: fc1 on [x, y], FiLM applied per call,
  dE/dy by torch.autograd.grad), in float64: sampler, descent, every negative source, scoring and the training
  loss's parameter gradients agree to 1e-10.
"""

import copy

import pytest
import torch
from torch.nn import functional as F

from ebmtool.config import TrainConfig
from ebmtool.method.diffusion import (SamplerSettings, condition, cosine_schedule, descend, energy, energy_and_grad,
                               sample)
from ebmtool.offline.mining import score_rows
from ebmtool.negatives import NegativeSettings, generate
from ebmtool.training.losses import Batch, Objective, ired_losses

import reuse_cases

SCHED = cosine_schedule()
FIXTURE = reuse_cases.__file__.replace("reuse_cases.py", "data/pre_condition_reuse.pt")


class Before(torch.nn.Module):
    """EnergyMLP's function as written before the change, through the same parameters: fc1 on [x, y] in every
    call, FiLM applied per row, dE/dy by autograd (no `condition`: the library passes it x as it is)."""

    explicit_grad = False

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x, y, t):
        m = self.m
        gain2, bias2, gain3, bias3 = m._film(t, per_row=True)
        h = F.silu(m.fc1(torch.cat([x, y], dim=-1)))
        h = F.silu(m.fc2(h) * (1 + gain2) + bias2)
        h = F.silu(m.fc3(h) * (1 + gain3) + bias3)
        return m.fc4(h).pow(2).sum(dim=-1)


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def test_every_path_agrees_with_the_code_before_the_change():
    pre = torch.load(FIXTURE, weights_only=True)
    got = reuse_cases.cases(reuse_cases.model(pre["state"]))
    assert set(got) == set(pre["cases"])
    for key, want in pre["cases"].items():
        if key == "descend_accepted":
            assert torch.equal(got[key], want)
        elif key.startswith(("neg_", "mine_negatives", "sample")):  # after descents: see the module docstring
            assert (got[key] - want).abs().max() < 1e-3, key
            assert ((got[key] - want).abs() > 1e-5).float().mean() < 0.02, key  # all but a row or two to 1e-5
        else:
            assert _rel(got[key], want) < 1e-6, (key, _rel(got[key], want))


def _pair(dtype=torch.float64):
    m = reuse_cases.model(torch.load(FIXTURE, weights_only=True)["state"]).to(dtype)
    return m, Before(m)


def _inputs(dtype=torch.float64, b=24):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(b, reuse_cases.X_DIM, generator=g, dtype=dtype)
    y = torch.randn(b, reuse_cases.Y_DIM, generator=g, dtype=dtype)
    eps = torch.randn(b, reuse_cases.Y_DIM, generator=g, dtype=dtype)
    t = torch.randint(0, SCHED.levels, (b,), generator=g)
    return x, y, eps, t


def test_sampler_descent_and_scoring_equal_the_function_before_in_float64():
    m, before = _pair()
    x, y, eps, t = _inputs()
    with torch.no_grad():
        for net_t in (t, torch.full_like(t, 4)):  # mixed levels (training's descents) and one (folded FiLM)
            (e, g), (e0, g0) = (energy_and_grad(n, x, y, net_t) for n in (m, before))
            assert _rel(e, e0) < 1e-12 and _rel(g, g0) < 1e-10
            d, d0 = (descend(n, x, y, net_t, SCHED, 4) for n in (m, before))
            assert torch.equal(d[2], d0[2]) and _rel(d[0], d0[0]) < 1e-10 and _rel(d[1], d0[1]) < 1e-10
        y_neg = torch.randn(24, 3, reuse_cases.Y_DIM, generator=torch.Generator().manual_seed(3), dtype=x.dtype)
        for s, s0 in zip(score_rows(m, SCHED, x, y, t, eps, y_neg), score_rows(before, SCHED, x, y, t, eps, y_neg)):
            assert _rel(s, s0) < 1e-12


def test_the_sampler_equals_the_function_before_to_float32_rounding():
    """The sampler starts from float32 noise whatever the network's dtype (and autograd returns dE/dy in y's
    dtype), so it is compared in float32, as tests/test_explicit_grad.py compares it with autograd."""
    m, before = _pair(torch.float32)
    x = _inputs(torch.float32)[0]
    with torch.no_grad():
        a, a0 = (sample(n, x, SCHED, reuse_cases.Y_DIM, SamplerSettings(), torch.Generator().manual_seed(0))
                 for n in (m, before))
    assert _rel(a, a0) < 1e-5


@pytest.mark.parametrize("source,k", [("ired", 2), ("anm", 2), ("hnm", 2)])
def test_negative_sources_equal_the_function_before_in_float64(source, k):
    m, before = _pair()
    x, y, eps, t = _inputs()
    got = [generate(source, n, x, y, t, eps, SCHED, k, NegativeSettings(), torch.Generator().manual_seed(2))
           for n in (m, before)]
    assert _rel(got[0].y_neg, got[1].y_neg) < 1e-10
    assert torch.equal(got[0].valid, got[1].valid)


@pytest.mark.parametrize("negatives", ["ired", "anm"])
def test_training_loss_and_parameter_gradients_equal_the_function_before_in_float64(negatives):
    """ired_losses with one shared projection (denoising and scoring calls) against the network before, whose
    denoising gradient is autograd's double backward."""
    cfg = TrainConfig(task="inverse", size=4, k=2, negatives=negatives).validate()
    grads, losses = [], []
    for use_before in (False, True):
        m = reuse_cases.model(torch.load(FIXTURE, weights_only=True)["state"]).to(torch.float64).requires_grad_(True)
        x, y, _, t = _inputs()
        net = Before(m) if use_before else m
        batch = Batch(x, y, t, torch.Generator().manual_seed(4), torch.Generator().manual_seed(5))
        # the loss draws its noise in float32 on the CPU: cast the model's inputs instead of the draws
        parts = ired_losses(_Float64(net), batch, Objective(cfg, SCHED))
        parts.loss_total.backward()
        losses.append(parts.loss_total.detach())
        grads.append([p.grad.clone() for p in m.parameters()])
    assert _rel(losses[0], losses[1]) < 1e-12
    for (name, _), a, b in zip(reuse_cases.model().named_parameters(), *grads):
        assert _rel(a, b) < 1e-9, (name, _rel(a, b))


class _Float64(torch.nn.Module):
    """The network with float64 inputs (the loss's noise comes in float32); keeps its condition and counters."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.explicit_grad = getattr(net, "explicit_grad", False)
        if hasattr(net, "condition"):
            self.condition = lambda x, t=None: net.condition(x if not torch.is_tensor(x) else x.double(), t)

    def forward(self, x, y, t):
        return self.net(x if not torch.is_tensor(x) else x.double(), y.double(), t)

    def energy_and_grad(self, x, y, t):
        return self.net.energy_and_grad(x if not torch.is_tensor(x) else x.double(), y.double(), t)


def test_each_path_projects_its_condition_once():
    """The counter's projected rows: one per problem in the sampler, one per row in a descent, one per
    positive in training (recorded for backward), however many calls share them; and the FiLM rows of a level
    tensor once for the calls that share it."""
    m = reuse_cases.model()
    x, y, eps, t = _inputs(torch.float32)
    with torch.no_grad():
        m.counter.reset()
        sample(m, x, SCHED, reuse_cases.Y_DIM, SamplerSettings(), torch.Generator().manual_seed(0))
        assert (m.counter.calls, m.counter.proj_rows, m.counter.proj_grad_rows) == (70, 24, 0)
        m.counter.reset()
        descend(m, x, y, t, SCHED, 5)
        assert (m.counter.calls, m.counter.proj_rows) == (6, 24)
        cond = condition(m, x)
        m.counter.reset()
        energy(m, cond, y, t), energy_and_grad(m, cond, y, t)
        assert (m.counter.calls, m.counter.proj_rows) == (2, 0)
    m.requires_grad_(True)
    cfg = TrainConfig(task="inverse", size=4, k=2).validate()
    m.counter.reset()
    films = []
    film = m._film
    m._film = lambda t, per_row=None: films.append(t.shape[0]) or film(t, per_row)
    ired_losses(m, Batch(x, y, t, torch.Generator().manual_seed(4)), Objective(cfg, SCHED))
    # the denoising and scoring calls share one recorded projection and one set of FiLM rows (the scoring call's
    # 24 x (1 + 2) rows repeat them); the descent of the 2 x 24 negatives has its own, for its 3 calls
    assert (m.counter.proj_grad_rows, m.counter.proj_rows) == (24, 24 + 48)
    assert films == [24, 48] and m.counter.calls == 1 + 3 + 1


def test_a_condition_keeps_its_level_terms_only_for_the_same_level_tensor():
    m = copy.deepcopy(reuse_cases.model()).double()
    x, y, _, t = _inputs()
    t4 = torch.full_like(t, 4)
    with torch.no_grad():
        at4 = condition(m, x, t4)
        assert at4.layers[2] is None  # one level, nothing recorded: folded into the weights
        assert condition(m, at4, t4) is at4
        # another tensor (even of the same values) gets its own terms: a stale level is never used
        assert _rel(energy(m, at4, y, t), energy(m, x, y, t)) < 1e-14
        assert _rel(energy(m, at4, y, t4), energy(Before(m), x, y, t4)) < 1e-12
