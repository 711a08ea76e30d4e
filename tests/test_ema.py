"""The EMA against ema-pytorch itself: training documents that it follows that package's schedule, so the test
runs both on the same sequence of weights and asks for the same EMA weights, bit for bit."""

import pytest
import torch

from ebmtool.method.models import EnergyMLP
from ebmtool.training.state import EMA

ema_pytorch = pytest.importorskip("ema_pytorch")


def _walk(model, calls, seed):
    """Yield after each of `calls` random changes of the model's weights (an optimiser's steps, in effect)."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(calls):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 0.01)
        yield


@pytest.mark.parametrize("beta,every,start", [(0.995, 10, 100), (0.9, 3, 7)])
def test_ema_equals_ema_pytorch_bit_for_bit(beta, every, start):
    torch.manual_seed(0)
    model = EnergyMLP(4, 4, 16, 8)
    ours = EMA(model, beta=beta, every=every, start=start)
    ref = ema_pytorch.EMA(model, beta=beta, update_every=every, update_after_step=start)
    for _ in _walk(model, 400, seed=1):
        ours.update(model)
        ref.update()
    for (name, a), b in zip(ours.model.named_parameters(), ref.ema_model.parameters()):
        assert torch.equal(a, b), name
    assert ours.updates == int(ref.step)


def test_the_first_average_uses_ema_pytorchs_decay():
    """The first averaging update (call 110 with start 100, every 10) decays by 1 - 11^(-2/3), as ema-pytorch."""
    m = torch.nn.Linear(1, 1, bias=False)
    ema = EMA(m, beta=0.995, every=10, start=100)
    with torch.no_grad():
        m.weight.fill_(1.0)
    for _ in range(101):
        ema.update(m)
    with torch.no_grad():
        m.weight.fill_(0.0)
    for _ in range(10):
        ema.update(m)
    assert float(ema.model.weight) == pytest.approx(1 - 11 ** (-2 / 3), abs=1e-6)
