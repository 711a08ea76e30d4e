"""The one descent routine: direction, acceptance rule, evaluation reuse; the sampler's cost and clamps."""

import torch
from torch import nn

from ebmtool.method.diffusion import (
    CallCounter, SamplerSettings, cosine_schedule, descend, energy, energy_and_grad, sample,
)
from ebmtool.method.models import EnergyMLP

SCHED = cosine_schedule()


class Quadratic(nn.Module):
    """Analytic energy E = ||y - y*||^2 (y* = target)."""

    def __init__(self, target):
        super().__init__()
        self.target = target
        self.counter = CallCounter()

    def forward(self, x, y, t):
        return ((y - self.target) ** 2).sum(dim=1)


def fixed_net(seed=0, d=6):
    torch.manual_seed(seed)
    return EnergyMLP(d, d, width=32, time_dim=8)


def test_descent_lowers_analytic_energy_for_every_example():
    torch.manual_seed(0)
    target = torch.zeros(64, 5)
    y0 = torch.randn(64, 5)
    t = torch.randint(0, 10, (64,))
    m = Quadratic(target)
    y, e, acc = descend(m, torch.zeros(64, 1), y0, t, SCHED, 5, clamp=None)
    e0 = m(None, y0, t)
    assert (e <= e0).all()
    assert ((e < e0).float().mean() >= 0.95)
    assert torch.allclose(e, m(None, y, t))


def test_descent_lowers_energy_of_a_fixed_network():
    net = fixed_net()
    x, y0 = torch.randn(128, 6), torch.randn(128, 6) * 0.5
    t = torch.randint(0, 10, (128,))
    y, e, _ = descend(net, x, y0, t, SCHED, 3, clamp=None)
    e0 = energy(net, x, y0, t)
    assert (e <= e0 + 1e-6).all()
    assert (e < e0).float().mean() >= 0.95


def test_acceptance_reverts_only_examples_whose_energy_rises():
    # A step of 1x eta on E = ||y||^2 with eta >= 1 overshoots: y - 2 eta y = (1 - 2 eta) y.
    # At t = 9 (eta = 0.999) |1 - 2 eta| < 1 still descends; at step_scale 2 it overshoots to |1 - 4 eta| > 1.
    m = Quadratic(torch.zeros(4, 3))
    y0 = torch.ones(4, 3)
    t = torch.full((4,), 9)
    y, e, acc = descend(m, torch.zeros(4, 1), y0, t, SCHED, 3, clamp=None, step_scale=2.0)
    assert torch.equal(y, y0) and (acc == 0).all()
    y, e, acc = descend(m, torch.zeros(4, 1), y0, t, SCHED, 1, clamp=None, step_scale=0.5)
    assert (acc == 1).all() and (e < 3).all()


def reference_opt_step(model, x, y, t, steps, c=2.0):
    """The release's opt_step, 2 calls per step, no reuse."""
    eta = SCHED.step_size[t][:, None]
    bound = c * SCHED.sqrt_ab[t][:, None]
    for i in range(steps):
        e, g = energy_and_grad(model, x, y, t)
        m = 1.0 if i == 0 else 2.0
        y_new = torch.maximum(torch.minimum(y - m * eta * g, bound), -bound)
        e_new = energy(model, x, y_new, t)
        y = torch.where((e_new > e)[:, None], y, y_new)
    return y


def test_reuse_returns_the_same_answers_as_the_reference_opt_step():
    net = fixed_net(1)
    x, y0 = torch.randn(32, 6), torch.randn(32, 6) * 0.3
    t = torch.randint(0, 10, (32,))
    ours, _, _ = descend(net, x, y0, t, SCHED, 5)
    ref = reference_opt_step(net, x, y0, t, 5)
    assert torch.allclose(ours, ref, atol=1e-6)


def test_sampler_costs_70_calls_per_problem_and_respects_clamps():
    net = fixed_net(2)
    net.counter.reset()
    x = torch.randn(16, 6)
    y = sample(net, x, SCHED, 6, SamplerSettings(), generator=torch.Generator().manual_seed(0))
    assert y.shape == (16, 6)
    assert net.counter.calls == 70  # 10 levels x (eps prediction + initial gradient + 5 steps)
    assert y.abs().max() <= 2.0 + 1e-5
    y2 = sample(net, x, SCHED, 6, SamplerSettings(), generator=torch.Generator().manual_seed(0))
    assert torch.equal(y, y2)  # deterministic given the initial noise


def test_energy_and_grad_does_not_mutate_input_and_works_under_no_grad():
    net = fixed_net(3)
    y = torch.randn(4, 6)
    before = y.clone()
    with torch.no_grad():
        e, g = energy_and_grad(net, torch.randn(4, 6), y, torch.zeros(4, dtype=torch.long))
    assert torch.equal(y, before) and not y.requires_grad
    assert g.shape == y.shape and torch.isfinite(g).all()
