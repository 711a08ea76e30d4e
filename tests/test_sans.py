"""SANS weights and loss forms: sign, normalisation, no gradient through the weights, parity with
the reference loss at K = 1, the plain mean at alpha = 0, golden values, and the alpha schedule."""

import math

import pytest
import torch
from torch.nn import functional as F

from ebmtool.negatives import sans


def test_lower_energy_gets_higher_weight_and_rows_sum_to_one():
    e = torch.tensor([[1.0, 2.0, 3.0], [5.0, 0.0, 5.0]])
    w = sans.weights(e, 1.0)
    assert torch.allclose(w.sum(dim=1), torch.ones(2))
    assert w[0, 0] > w[0, 1] > w[0, 2]  # hard = low energy = high weight
    assert w[1, 1] > w[1, 0] and torch.isclose(w[1, 0], w[1, 2])
    # golden: softmax(-[1, 2, 3])
    assert torch.allclose(w[0], torch.tensor([0.66524096, 0.24472847, 0.09003057]), atol=1e-7)


def test_alpha_zero_is_uniform_and_larger_alpha_is_sharper():
    e = torch.randn(4, 8)
    assert torch.allclose(sans.weights(e, 0.0), torch.full((4, 8), 1 / 8))
    ess = [sans.weight_stats(sans.weights(e, a))["weight_ess"] for a in (0.0, 1.0, 10.0)]
    assert ess[0] == pytest.approx(8.0) and ess[0] > ess[1] > ess[2]


def test_invalid_negatives_get_zero_weight_and_empty_rows_get_none():
    e = torch.tensor([[1.0, 0.0, 2.0], [1.0, 1.0, 1.0]])
    valid = torch.tensor([[True, False, True], [False, False, False]])
    w = sans.weights(e, 1.0, valid)
    assert w[0, 1] == 0 and torch.isclose(w[0].sum(), torch.tensor(1.0))
    assert (w[1] == 0).all()
    assert torch.equal(sans.uniform_weights(valid), torch.tensor([[0.5, 0.0, 0.5], [0.0, 0.0, 0.0]]))


def test_no_gradient_flows_through_the_weights():
    e_pos = torch.randn(5, requires_grad=True)
    e_neg = torch.randn(5, 4, requires_grad=True)
    w = sans.weights(e_neg, 2.0)
    assert not w.requires_grad
    loss = sans.loss("pairwise", e_pos, e_neg, w).sum()
    loss.backward()
    # with w constant, dL/dE_i = -w_i * sigmoid(E+ - E_i) exactly
    expected = -w * torch.sigmoid(e_pos.detach()[:, None] - e_neg.detach())
    assert torch.allclose(e_neg.grad, expected, atol=1e-6)


@pytest.mark.parametrize("form", ["infonce", "pairwise"])
def test_k1_equals_the_reference_softplus(form):
    e_pos, e_neg = torch.randn(64) * 3, torch.randn(64, 1) * 3
    ref = F.softplus(e_pos - e_neg[:, 0])
    for w in (sans.weights(e_neg, 1.7), sans.uniform_weights(torch.ones(64, 1, dtype=torch.bool))):
        assert torch.allclose(sans.loss(form, e_pos, e_neg, w), ref, atol=1e-6)


def test_pairwise_at_alpha_zero_is_the_plain_mean_over_negatives():
    e_pos, e_neg = torch.randn(16), torch.randn(16, 8)
    got = sans.loss("pairwise", e_pos, e_neg, sans.weights(e_neg, 0.0))
    assert torch.allclose(got, F.softplus(e_pos[:, None] - e_neg).mean(dim=1), atol=1e-6)


def test_golden_values_of_every_form():
    e_pos = torch.tensor([1.0])
    e_neg = torch.tensor([[0.0, 2.0]])
    w = torch.tensor([[0.25, 0.75]])
    assert sans.loss("infonce", e_pos, e_neg, w).item() == pytest.approx(
        math.log(1 + 0.25 * math.e + 0.75 * math.exp(-1)), rel=1e-6)
    sp = lambda v: math.log1p(math.exp(v))
    assert sans.loss("pairwise", e_pos, e_neg, w).item() == pytest.approx(0.25 * sp(1) + 0.75 * sp(-1), rel=1e-6)
    assert sans.loss("logistic", e_pos, e_neg, w, margin=3.0).item() == pytest.approx(
        0.5 * (sp(1 - 3) + 0.25 * sp(3 - 0) + 0.75 * sp(3 - 2)), rel=1e-6)
    with pytest.raises(ValueError):
        sans.loss("hinge", e_pos, e_neg, w)


def test_zero_weight_entries_contribute_nothing_to_infonce():
    e_pos = torch.tensor([0.0])
    a = sans.loss("infonce", e_pos, torch.tensor([[1.0, -50.0]]), torch.tensor([[1.0, 0.0]]))
    b = sans.loss("infonce", e_pos, torch.tensor([[1.0]]), torch.tensor([[1.0]]))
    assert torch.allclose(a, b)


def test_alpha_schedule():
    t = torch.arange(10)
    assert torch.equal(sans.alpha_at(t, 0.5, "constant"), torch.full((10,), 0.5))
    lin = sans.alpha_at(t, 2.0, "linear", floor=0.1)
    assert lin[0] == pytest.approx(2.0) and lin[9] == pytest.approx(0.1)
    assert (lin[1:] <= lin[:-1]).all()  # decreasing over diffusion levels, to the floor
    with pytest.raises(ValueError):
        sans.alpha_at(t, 1.0, "cosine")
