"""The IRED reference's training step and sampler, re-implemented for timing: the published release's loop as
docs/training.md describes it, on the same network weights and problems as ebmtool's, so that a benchmark can
time both in one run. It is not the release's code: what it leaves out (the release's data loader, trainer
logging, and the first-example clamp, which costs the same) only makes it faster, so a ratio to it is in the
reference's favour.

What the reference computes, and ebmtool no longer does:
- the network takes [x, y] through fc1 in every call, and runs its time MLP and FiLM layers once per row;
- dE/dy by torch.autograd.grad (create_graph=True in training: double backward through the whole network);
- `opt_step` spends two calls per descent step (energy and gradient, then the energy of the proposal);
- training: 6 calls per step (denoise 1, the reference negative's 2 x 2, the energies of [x+; x-] 1); Adam
  (lr 1e-4, betas 0.9 / 0.99) updated tensor by tensor; EMA (0.995) every 10 steps; gradient clipping at 1;
- sampling: 10 levels x (1 + 5 x 2) = 110 calls per problem.
"""

from __future__ import annotations

import copy

import torch
from torch.nn import functional as F

from ebmtool.method.diffusion import Schedule, noised


class ReleaseMLP(torch.nn.Module):
    """EnergyMLP's function, computed as the release does (see the module docstring); wraps an EnergyMLP's
    parameters so both score the same weights."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x, y, t):
        m = self.m
        temb = m.time(t)  # per row
        gain2, bias2 = m.film2(temb).chunk(2, dim=-1)
        gain3, bias3 = m.film3(temb).chunk(2, dim=-1)
        h = F.silu(m.fc1(torch.cat([x, y], dim=-1)))
        h = F.silu(m.fc2(h) * (1 + gain2) + bias2)
        h = F.silu(m.fc3(h) * (1 + gain3) + bias3)
        return m.fc4(h).pow(2).sum(dim=-1)


def energy_and_grad(net, x, y, t, create_graph=False):
    with torch.enable_grad():
        y = y.detach().requires_grad_(True)
        e = net(x, y, t)
        (g,) = torch.autograd.grad(e.sum(), y, create_graph=create_graph)
    return (e, g) if create_graph else (e.detach(), g.detach())


def opt_step(net, x, y, t, sched: Schedule, steps, clamp=2.0, multiplier=2.0):
    """The release's descent: two calls per step, revert where the energy rose."""
    eta = sched.step_size[t][:, None]
    bound = clamp * sched.sqrt_ab[t][:, None]
    for i in range(steps):
        e, g = energy_and_grad(net, x, y, t)
        y_new = torch.maximum(torch.minimum(y - (1.0 if i == 0 else multiplier) * eta * g, bound), -bound)
        with torch.no_grad():
            e_new = net(x, y_new, t)
        y = torch.where((e_new > e)[:, None], y, y_new).detach()
    return y


class ReleaseStep:
    """One training step of the release on `model`'s weights (a copy: the caller's model is not trained)."""

    def __init__(self, model, sched: Schedule, energy_weight: float = 0.5):
        self.model = copy.deepcopy(model)
        self.net = ReleaseMLP(self.model)
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-4, betas=(0.9, 0.99), foreach=False)
        self.sched, self.energy_weight, self.calls = sched, energy_weight, 0

    def __call__(self, x, y, gen: torch.Generator):
        sched, net, b = self.sched, self.net, x.shape[0]
        t = torch.randint(0, sched.levels, (b,), generator=gen)
        eps, eps2 = torch.randn(y.shape, generator=gen), torch.randn(y.shape, generator=gen)
        _, eps_hat = energy_and_grad(net, x, noised(sched, y, t, eps), t, create_graph=True)
        loss_mse = ((eps_hat - eps) ** 2).mean()
        z = opt_step(net, x, noised(sched, y, t, 3 * eps2), t, sched, 2)
        y_neg = (z / sched.sqrt_ab[t][:, None]).clamp(-2, 2)
        x_pos, x_neg = noised(sched, y, t, eps2), noised(sched, y_neg, t, eps2)
        e = net(torch.cat([x, x]), torch.cat([x_pos, x_neg]), torch.cat([t, t]))
        loss = loss_mse + self.energy_weight * F.softplus(e[:b] - e[b:]).mean()
        self.opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.calls += 1
        if self.calls % 10 == 0:  # ema_pytorch, update_every=10
            with torch.no_grad():
                for pe, p in zip(self.ema.parameters(), self.model.parameters()):
                    pe.lerp_(p, 0.005)
        return float(loss.detach())


@torch.no_grad()
def sample(model, x, sched: Schedule, out_dim: int, generator=None, inner_steps: int = 5):
    """The release's sampler (110 network calls per problem at 5 inner steps), clamps as ebmtool's."""
    net = ReleaseMLP(model)
    b = x.shape[0]
    y = torch.randn(b, out_dim, generator=generator)
    for level in reversed(range(sched.levels)):
        t = torch.full((b,), level, dtype=torch.long)
        sab, s1 = sched.sqrt_ab[level], sched.sqrt_1mab[level]
        _, eps_hat = energy_and_grad(net, x, y, t)
        y = sab * (y / sab - (s1 / sab) * eps_hat).clamp(-2, 2)
        y = opt_step(net, x, y, t, sched, inner_steps)
        y = y.clamp(-2 * sab, 2 * sab)
        if level > 0:
            y = sched.sqrt_ab[level - 1] * y / sab
    return y / sched.sqrt_ab[0]
