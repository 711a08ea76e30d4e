"""EnergyMLP's explicit input gradient (models.mlp_energy_and_grad, dispatched by diffusion.energy_and_grad)
against torch.autograd: the energy, dE/dy, the parameter gradients of the denoising loss through it (first-order
autograd against double backward), the no-grad sampler, and torch.compile of it. Every check compares with
autograd.grad through the network's own forward, never the explicit form with itself; a wrong variant fails."""

import copy

import pytest
import torch

import ebmtool.method.models as models
from ebmtool.method.diffusion import (SamplerSettings, autograd_energy_and_grad, cosine_schedule, descend, energy_and_grad,
                               sample)
from ebmtool.method.models import EnergyMLP, PathGNN, compile_explicit


SCHED = cosine_schedule()


def _net(dtype=torch.float64, x_dim=6, y_dim=5, width=24, time_dim=8, seed=0):
    torch.manual_seed(seed)
    m = EnergyMLP(x_dim, y_dim, width, time_dim).to(dtype)
    with torch.no_grad():  # FiLM terms of a size that matters (the default init makes them small)
        for p in (*m.film2.parameters(), *m.film3.parameters()):
            p.mul_(4.0)
    return m


def _inputs(m, b=7, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, m.dims["x_dim"], generator=g, dtype=dtype)
    y = 2 * torch.randn(b, m.dims["y_dim"], generator=g, dtype=dtype)
    t = torch.tensor([0, 9, 3, 3, 5, 9, 1][:b] + [2] * max(0, b - 7))  # repeated and distinct levels
    return x, y, t


def _rel(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def _explicit_vs_autograd(m, x, y, t):
    """Largest relative differences (energy, dE/dy) of the explicit form from autograd.grad of forward."""
    e_ref, g_ref = autograd_energy_and_grad(m, x, y, t)
    with torch.no_grad():
        e, g = m.energy_and_grad(x, y, t)
    with torch.enable_grad():  # the recorded form (training's) is written differently: check it too
        e2, g2 = m.energy_and_grad(x, y, t)
    return max(_rel(e, e_ref), _rel(e2, e_ref)), max(_rel(g, g_ref), _rel(g2, g_ref))


@pytest.mark.parametrize("shape", [(6, 5, 24, 8), (16, 16, 32, 16), (3, 9, 40, 8)])
def test_energy_and_gradient_equal_autograd_in_float64(shape):
    m = _net(torch.float64, *shape)
    x, y, t = _inputs(m)
    de, dg = _explicit_vs_autograd(m, x, y, t)
    assert de < 1e-12 and dg < 1e-10, (de, dg)
    e_fwd = m(x, y, t)
    assert torch.equal(m.energy_and_grad(x, y, t)[0].detach(), e_fwd.detach())  # the very same energy


def test_float32_matches_autograd_to_rounding():
    m = _net(torch.float32, 16, 16, 64, 16)
    x, y, t = _inputs(m, 64, torch.float32)
    de, dg = _explicit_vs_autograd(m, x, y, t)
    assert de < 1e-6 and dg < 1e-5, (de, dg)


def _wrong_core(kind):
    """mlp_energy_and_grad with one plausible mistake in its hand-written backward."""
    def silu_grad(dh, a):
        return dh * torch.sigmoid(a) if kind == "sigmoid_for_silu_derivative" else models._silu_grad(dh, a)

    def core(proj, y, w1y, w2, b2, s2, c2, w3, b3, s3, c3, w4, b4):
        e, out, a1, a2, a3 = models.mlp_forward(proj, y, w1y, w2, b2, s2, c2, w3, b3, s3, c3, w4, b4)
        one2, one3 = (s2, s3) if kind != "film_gain_left_out" else (None, None)
        d = silu_grad((out if kind == "factor_two_left_out" else 2 * out) @ w4, a3)
        d = silu_grad((d if one3 is None else d * one3) @ w3, a2)
        d = silu_grad((d if one2 is None else d * one2) @ w2, a1)
        if kind == "last_y_column_left_out":  # a slice of fc1's y columns one short
            return e, torch.cat([d @ w1y[:, :-1], torch.zeros_like(y[:, :1])], dim=1)
        return e, d @ w1y
    return core


@pytest.mark.parametrize("kind", ["sigmoid_for_silu_derivative", "film_gain_left_out", "factor_two_left_out",
                                  "last_y_column_left_out"])
def test_a_wrong_variant_fails_the_comparison(kind, monkeypatch):
    """The check is against autograd: a plausible mistake in the hand-written backward is caught."""
    m = _net()
    x, y, t = _inputs(m)
    monkeypatch.setattr(models, "mlp_energy_and_grad", _wrong_core(kind))
    de, dg = _explicit_vs_autograd(m, x, y, t)
    assert de < 1e-12 and dg > 1e-3, (de, dg)


def test_the_wrong_variants_harness_is_right_without_a_mistake(monkeypatch):
    m = _net()
    x, y, t = _inputs(m)
    monkeypatch.setattr(models, "mlp_energy_and_grad", _wrong_core("none"))
    assert _explicit_vs_autograd(m, x, y, t)[1] < 1e-10


def _denoise_grads(m, x, y, t, eps, explicit: bool):
    """Parameter (and x) gradients of training's denoising loss through diffusion.energy_and_grad."""
    m = copy.deepcopy(m)
    m.explicit_grad = explicit
    x = x.clone().requires_grad_(True)
    _, eps_hat = energy_and_grad(m, x, y, t, create_graph=True)
    ((eps_hat - eps) ** 2).mean(dim=1).mean().backward()
    return [p.grad for p in m.parameters()] + [x.grad], eps_hat.detach(), m.counter


def test_parameter_gradients_of_the_denoising_loss_equal_double_backward():
    m = _net()
    x, y, t = _inputs(m)
    eps = torch.randn(y.shape, generator=torch.Generator().manual_seed(5), dtype=y.dtype)
    ref, eps_ref, c_ref = _denoise_grads(m, x, y, t, eps, explicit=False)
    got, eps_got, c_got = _denoise_grads(m, x, y, t, eps, explicit=True)
    assert _rel(eps_got, eps_ref) < 1e-10
    assert len(got) == len(ref) == len(list(m.parameters())) + 1
    for (name, _), a, b in zip([*m.named_parameters(), ("x", None)], got, ref):
        assert a is not None and b is not None, name
        assert _rel(a, b) < 1e-10, (name, _rel(a, b))
    assert (c_got.calls, c_got.rows, c_got.grad_calls, c_got.grad_rows) == \
        (c_ref.calls, c_ref.rows, c_ref.grad_calls, c_ref.grad_rows) == (1, 7, 1, 7)


def test_the_explicit_training_step_never_takes_an_autograd_gradient(monkeypatch):
    """No torch.autograd.grad anywhere: the denoising loss is one first-order graph, differentiated once by
    backward(). Under a no-grad caller create_graph=True still returns a differentiable result."""
    def refuse(*a, **k):
        raise AssertionError("torch.autograd.grad called")

    m = _net()
    x, y, t = _inputs(m)
    monkeypatch.setattr(torch.autograd, "grad", refuse)
    with torch.no_grad():
        e, g = energy_and_grad(m, x, y, t, create_graph=True)
    assert e.requires_grad and g.requires_grad
    ((g - 1) ** 2).mean().backward()
    assert all(p.grad is not None for p in m.parameters())
    m.explicit_grad = False
    with pytest.raises(AssertionError, match="autograd.grad called"):
        energy_and_grad(m, x, y, t, create_graph=True)


def test_no_grad_sampler_and_descent_equal_autograd_and_record_nothing():
    m = _net(torch.float32, 9, 9, 32, 16)
    ref = copy.deepcopy(m)
    ref.explicit_grad = False
    x = torch.randn(12, 9, generator=torch.Generator().manual_seed(3))
    y0 = torch.randn(12, 9, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        e, g = energy_and_grad(m, x, y0, torch.full((12,), 4))
        assert e.grad_fn is None and g.grad_fn is None and not g.requires_grad
        answers = {}
        for name, net in (("explicit", m), ("autograd", ref)):
            net.counter.reset()
            answers[name] = sample(net, x, SCHED, 9, SamplerSettings(), torch.Generator().manual_seed(0))
        assert (m.counter.calls, m.counter.grad_calls, m.counter.rows, m.counter.grad_rows) == \
            (ref.counter.calls, ref.counter.grad_calls, ref.counter.rows, ref.counter.grad_rows)
        assert _rel(answers["explicit"], answers["autograd"]) < 1e-5
        t = torch.randint(0, 10, (12,), generator=torch.Generator().manual_seed(6))
        d = [descend(net, x, y0, t, SCHED, 4) for net in (m, ref)]
    assert torch.equal(d[0][2], d[1][2])  # the same steps accepted
    assert _rel(d[0][0], d[1][0]) < 1e-5
    # the caller's tensor is untouched and the result detached, as with autograd
    y = y0.clone()
    e, g = energy_and_grad(m, x, y, torch.zeros(12, dtype=torch.long))
    assert torch.equal(y, y0) and not g.requires_grad and not e.requires_grad


def test_other_models_keep_the_autograd_path():
    net = PathGNN(8, 8, 16)
    assert not getattr(net, "explicit_grad", False)
    n = 4
    x, y = torch.rand(2, n * n * 4), torch.randn(2, 8 * n)
    e, g = energy_and_grad(net, x, y, torch.zeros(2, dtype=torch.long))
    e_ref, g_ref = autograd_energy_and_grad(net, x, y, torch.zeros(2, dtype=torch.long))
    assert torch.equal(g, g_ref) and net.counter.grad_calls == 1


def test_compile_explicit_traces_the_explicit_path_and_can_be_undone():
    """aot_eager: the graph torch.compile captures and its AOT-autograd backward, without a C compiler (the
    inductor backend is exercised by benchmarks/bench_explicit_grad.py)."""
    torch._dynamo.reset()
    m = _net(torch.float32, 6, 5, 24, 8)
    x, y, t = _inputs(m, dtype=torch.float32)
    eps = torch.randn(y.shape, generator=torch.Generator().manual_seed(5))
    ref, eps_ref, _ = _denoise_grads(m, x, y, t, eps, explicit=False)
    assert compile_explicit(m, backend="aot_eager") is m
    got, eps_got, counter = _denoise_grads(m, x, y, t, eps, explicit=True)  # a deep copy: the EMA's case
    assert _rel(eps_got, eps_ref) < 1e-5
    assert all(_rel(a, b) < 1e-4 for a, b in zip(got, ref))
    assert (counter.calls, counter.grad_calls) == (1, 1)
    with torch.no_grad():
        _, g = energy_and_grad(m, x, y, t)
    assert _rel(g, eps_ref) < 1e-5
    compile_explicit(m, enable=False)
    assert "_explicit_core" not in m.__dict__
    with pytest.raises(TypeError):
        compile_explicit(PathGNN(8, 8, 16))
