"""Golden values: the reference's schedule table and parameter counts."""

import torch

import ebmtool.method.models as models
from ebmtool.method.diffusion import cosine_schedule
from ebmtool.method.models import EnergyMLP, parameter_count, sinusoidal_embedding

# t, beta, alpha_bar, sqrt(alpha_bar), sqrt(1 - alpha_bar), eta
TABLE = [
    (0, 0.02791, 0.97209, 0.98595, 0.16705, 0.16705),
    (1, 0.07549, 0.89871, 0.94800, 0.31827, 0.23720),
    (2, 0.12440, 0.78691, 0.88708, 0.46162, 0.26948),
    (3, 0.17719, 0.64748, 0.80466, 0.59374, 0.29843),
    (4, 0.23728, 0.49384, 0.70274, 0.71145, 0.33352),
    (5, 0.30988, 0.34081, 0.58379, 0.81191, 0.38167),
    (6, 0.40400, 0.20312, 0.45069, 0.89268, 0.45257),
    (7, 0.53700, 0.09405, 0.30667, 0.95182, 0.56418),
    (8, 0.74383, 0.02409, 0.15522, 0.98788, 0.75295),
    (9, 0.99900, 0.00002, 0.00491, 0.99999, 0.99901),
]


def test_schedule_matches_reference_table():
    s = cosine_schedule()
    assert s.levels == 10
    for t, beta, ab, sab, s1mab, eta in TABLE:
        got = [s.betas[t], s.alphas_cumprod[t], s.sqrt_ab[t], s.sqrt_1mab[t], s.step_size[t]]
        for g, want in zip(got, [beta, ab, sab, s1mab, eta]):
            assert abs(float(g) - want) < 1e-5 + 5e-6, (t, float(g), want)


def test_parameter_counts_match_reference():
    assert parameter_count(EnergyMLP(800, 400)) == 1_642_640  # addition
    assert parameter_count(EnergyMLP(400, 400)) == 1_437_840  # inverse, lowrank


def test_energy_is_the_squared_norm_of_the_output_layer_per_example():
    """E(x, y, t) = ||W4 h3||^2, one scalar per example: the squared norm of what the output layer computed (read
    by a spy, not recomputed), each row's energy unchanged when it is evaluated alone, and dE/dy (the denoiser)
    equal to finite differences of E."""
    torch.manual_seed(0)
    m = EnergyMLP(6, 4, width=16, time_dim=8)
    for layer in (m.fc1, m.fc2, m.fc3, m.fc4):  # the path through y in float64, for finite differences (the
        layer.double()                          # time branch is float32 by construction and constant in y)
    x, y = torch.randn(5, 6, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    t = torch.tensor([3, 0, 9, 3, 7])
    out = []
    forward = models.mlp_forward

    def spy(*args):  # the output layer's value as the forward pass computed it
        res = forward(*args)
        out.append(res[1].detach())
        return res

    models.mlp_forward = spy
    try:
        e = m(x, y, t)
    finally:
        models.mlp_forward = forward
    assert e.shape == (5,)
    assert torch.allclose(e, out[0].pow(2).sum(dim=-1), rtol=1e-12, atol=0)
    alone = torch.cat([m(x[i:i + 1], y[i:i + 1], t[i:i + 1]) for i in range(5)])
    assert torch.allclose(e, alone, rtol=1e-6, atol=0)  # (float32 time branch: rounding only)
    assert torch.autograd.gradcheck(lambda y: m(x, y, t), (y.clone().requires_grad_(True),))


def test_time_embedding_uses_raw_integer_levels():
    emb = sinusoidal_embedding(torch.tensor([0, 9]), 8)
    assert torch.allclose(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    # f_0 = 1, so the first sine is sin(9): t enters unscaled
    assert abs(float(emb[1, 0]) - float(torch.sin(torch.tensor(9.0)))) < 1e-6


def _per_row_reference(m, x, y, t):
    """EnergyMLP's function written row by row: time MLP and FiLM evaluated for every row (the form of the
    code before the time branch was batched)."""
    from torch.nn import functional as F

    temb = m.time(t)
    gain2, bias2 = m.film2(temb).chunk(2, dim=-1)
    gain3, bias3 = m.film3(temb).chunk(2, dim=-1)
    h = F.silu(m.fc1(torch.cat([x, y], dim=-1)))
    h = F.silu(m.fc2(h) * (1 + gain2) + bias2)
    h = F.silu(m.fc3(h) * (1 + gain3) + bias3)
    return m.fc4(h).pow(2).sum(dim=-1)


def test_film_once_per_level_equals_the_per_row_network():
    """The time/FiLM branch runs once per distinct level; energies, input gradients and the double-backprop
    parameter gradients of the denoising loss equal the per-row network's."""
    from helpers import denoise_grads

    torch.manual_seed(0)
    m = EnergyMLP(6, 5, width=32, time_dim=16)
    x, y0 = torch.randn(40, 6), torch.randn(40, 5)
    t = torch.tensor([3, 0, 9, 3] * 10)
    grads = [denoise_grads(m, fn, x, y0, t) for fn in (m, lambda *a: _per_row_reference(m, *a))]
    (e1, g1, p1), (e2, g2, p2) = grads
    assert torch.allclose(e1, e2, rtol=1e-6, atol=1e-6) and torch.allclose(g1, g2, rtol=1e-5, atol=1e-6)
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(p1, p2))
    assert m.film2.weight.grad.abs().sum() > 0  # the gathered branch does get gradients


def test_film_rows_of_the_cuda_path_equal_the_gathered_ones():
    """On CUDA the FiLM rows are evaluated per row (no torch.unique, so no host stall); same values."""
    torch.manual_seed(0)
    m = EnergyMLP(6, 5, width=32, time_dim=16)
    t = torch.tensor([3, 0, 9, 3, 7, 0])
    for a, b in zip(m._film(t, per_row=True), m._film(t, per_row=False)):
        assert a.shape == (6, 32) and torch.allclose(a, b, rtol=1e-6, atol=1e-6)


def test_one_level_without_gradients_folds_its_film_rows_into_the_weights_and_changes_nothing():
    """A batch at one level (the sampler's every call) under no_grad gets (1, width) FiLM rows, folded into fc2's
    and fc3's weights (W' = diag(1 + gain) W, b' = b (1 + gain) + bias), instead of gathered (B, width) copies
    applied per row: the same energies and input gradients, to rounding in float32 and to 1e-12 in float64."""
    for dtype, tol in ((torch.float32, 1e-5), (torch.float64, 1e-12)):
        torch.manual_seed(0)
        m = EnergyMLP(6, 5, width=32, time_dim=16).to(dtype)
        x, y, t = torch.randn(7, 6, dtype=dtype), torch.randn(7, 5, dtype=dtype), torch.full((7,), 4)
        with torch.no_grad():
            assert m._film(t)[0].shape == (1, 32) and m._layers(t)[2] is None  # folded
            e_fast, g_fast = m.energy_and_grad(x, y, t)
            e_fwd = m(x, y, t)
        assert m._film(t)[0].shape == (7, 32) and m._layers(t)[2] is not None  # gradients recorded: per row
        e_ref, g_ref = m.energy_and_grad(x, y, t)
        assert torch.equal(e_fwd, e_fast)
        for a, b in ((e_fast, e_ref), (g_fast, g_ref)):
            assert float((a - b.detach()).abs().max() / b.detach().abs().max()) < tol
