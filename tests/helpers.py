"""Tiny configurations shared by the tests (seconds, not minutes)."""

from ebmtool.config import TrainConfig

TINY = dict(task="inverse", size=4, width=32, time_dim=16, train_size=256, batch_size=32, val_size=8,
            log_every=2, eval_every=0, ckpt_every=0, device="cpu", lr=1e-3)

TINY_FLAGS = ["--size", "4", "--width", "32", "--train-size", "256", "--batch-size", "32", "--val-size", "8",
              "--log-every", "2", "--eval-every", "0", "--device", "cpu"]


def tiny(**kw) -> TrainConfig:
    return TrainConfig(**{**TINY, **kw})


def single_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared, loaded CPU two spinning threads make
    them several times slower; tests that train use one thread and restore the setting afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def denoise_grads(model, fn, x, y0, t, target: float = 1.0):
    """(E, dE/dy, parameter gradients of mean((dE/dy - target)^2)) of energy function fn(x, y, t) whose weights
    are `model`'s: the double backprop of training's denoising loss, to compare two forms of one network."""
    import torch

    model.zero_grad()
    y = y0.clone().requires_grad_(True)
    e = fn(x, y, t)
    (g,) = torch.autograd.grad(e.sum(), y, create_graph=True)
    ((g - target) ** 2).mean().backward()
    return e.detach(), g.detach(), [p.grad.clone() for p in model.parameters()]
