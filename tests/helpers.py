"""Tiny configurations shared by the tests (seconds, not minutes): one definition, which files vary by keyword.

TINY_PROBLEM  the tiny inverse problem and network every tiny run shares (CLI or library).
TINY          a tiny library run: TINY_PROBLEM plus a small time embedding, quiet (no periodic evaluation or
              checkpoints), on the CPU. tiny(**kw) is its TrainConfig; tiny("sudoku") etc. is a discrete task's.
TINY_FLAGS    the CLI's tiny run: TINY_PROBLEM and TINY's logging and device as flags (the CLI has no --time-dim,
              so a CLI run keeps the default time embedding).
SMALL         keywords for tiny(): smaller batches and no validation, for files that make many checkpoints.
flags(**kw)   TrainConfig fields as `ebmtool train` flags, so a file's CLI and library runs cannot drift apart.

The one-thread setting is an autouse fixture in conftest.py.
"""

from ebmtool.config import TrainConfig
from ebmtool.tasks.registry import builtin_task

TINY_PROBLEM = dict(size=4, width=32, train_size=256, batch_size=32, val_size=8)
TINY = dict(task="inverse", **TINY_PROBLEM, time_dim=16, log_every=2, eval_every=0, ckpt_every=0, device="cpu",
            lr=1e-3)
SMALL = dict(batch_size=16, train_size=32, val_size=0)

# discrete tasks: each task's own network scaled down (--width/--blocks), by the architecture the task names, and
# far fewer, smaller batches
TINY_NETS = {"sudoku_cnn": {"width": 16, "blocks": 1}, "graph_nlm": {"width": 8}, "path_gnn": {"width": 8}}
TINY_DISCRETE = dict(size=None, train_size=16, batch_size=8, val_size=4, log_every=1, seed=0, steps=2)


def flags(**settings) -> list[str]:
    """["--train-size", "256", ...] for train_size=256, ...: the `ebmtool train` flags of TrainConfig fields."""
    return [a for k, v in settings.items() for a in (f"--{k.replace('_', '-')}", str(v))]


TINY_FLAGS = flags(**TINY_PROBLEM, **{k: TINY[k] for k in ("log_every", "eval_every", "device")})


def tiny_net(task: str) -> dict | None:
    """The --width/--blocks of a registered task's tiny network (TINY_NETS by its architecture); None for the MLP
    tasks and data files."""
    t = builtin_task(task)
    return None if t is None else TINY_NETS.get(t.model_dims()["arch"])


def tiny(task: str = "inverse", **kw) -> TrainConfig:
    """TINY's run (a discrete task: its TINY_NETS network on TINY_DISCRETE's problems), `kw` overriding."""
    base = {**TINY, "task": task}
    net = tiny_net(task)
    if net is not None:  # time_dim: left at the default (a discrete network's own is fixed by its task)
        base = {**{k: v for k, v in base.items() if k != "time_dim"}, **TINY_DISCRETE, **net}
    return TrainConfig(**{**base, **kw})


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


def seeded_losses(cfg: TrainConfig, seed: int):
    """(model, parts): a fresh tiny MLP (torch seed 0) and the objective of step 0 of `cfg`'s data under the
    training stream of (seed, 0), energy weight 0.5: one real loss evaluation, for tests of the objective."""
    import torch

    from ebmtool.tasks.data import TrainingData
    from ebmtool.method.diffusion import cosine_schedule
    from ebmtool.method.models import EnergyMLP
    from ebmtool.runtime.rng import step_generator
    from ebmtool.training.losses import Batch, Objective, ired_losses

    data = TrainingData(cfg)
    torch.manual_seed(0)
    model = EnergyMLP(16, 16, 32, 16)
    x, y = data.batch(0, "cpu")
    gen = step_generator(seed, 0)
    t = torch.randint(0, 10, (x.shape[0],), generator=gen)
    return model, ired_losses(model, Batch(x, y, t, gen), Objective(cfg, cosine_schedule(), energy_weight=0.5))
