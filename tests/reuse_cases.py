"""The cases tests/test_condition_reuse.py compares with the code before the condition's projection was reused
(377a3e9): each network-calling path of the library on a small EnergyMLP with fixed weights and seeds. Only APIs
that exist before and after are used, so `python tests/reuse_cases.py OUT.pt` run in a checkout of 377a3e9
wrote tests/data/pre_condition_reuse.pt, and the test runs the same function on this code."""

import sys

import numpy as np
import torch

from ebmtool.method.diffusion import SamplerSettings, cosine_schedule, descend, energy_and_grad, sample
from ebmtool.offline.mining import MineOptions, mine_batch, score_rows
from ebmtool.method.models import EnergyMLP
from ebmtool.negatives import NegativeSettings, generate

X_DIM, Y_DIM, WIDTH, TIME_DIM, B = 12, 16, 64, 16, 24


def model(state=None) -> EnergyMLP:
    torch.manual_seed(0)
    m = EnergyMLP(X_DIM, Y_DIM, WIDTH, TIME_DIM)
    with torch.no_grad():  # FiLM terms of a size that matters (the default init makes them small)
        for p in (*m.film2.parameters(), *m.film3.parameters()):
            p.mul_(4.0)
    if state is not None:
        m.load_state_dict(state)
    return m.requires_grad_(False)


def cases(m: EnergyMLP) -> dict:
    sched = cosine_schedule()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(B, X_DIM, generator=g), torch.randn(B, Y_DIM, generator=g)
    eps = torch.randn(B, Y_DIM, generator=g)
    t = torch.randint(0, sched.levels, (B,), generator=g)
    out = {}
    with torch.no_grad():
        out["energy"], out["grad"] = energy_and_grad(m, x, y, t)
        out["sample"] = sample(m, x, sched, Y_DIM, SamplerSettings(), torch.Generator().manual_seed(0))
        out["descend_y"], out["descend_e"], out["descend_accepted"] = descend(m, x, y, t, sched, 4)
        for source, k in (("ired", 2), ("anm", 2), ("hnm", 1)):
            nb = generate(source, m, x, y, t, eps, sched, k, NegativeSettings(), torch.Generator().manual_seed(2))
            out[f"neg_{source}"] = nb.y_neg
        out["score_pos"], out["score_neg"] = score_rows(m, sched, x, y, t, eps, out["neg_ired"])
    mined, _ = mine_batch(m, sched, x, y, np.arange(B), MineOptions(k=2, candidates=3, refine_steps=3), "cpu")
    out.update({f"mine_{k}": torch.as_tensor(mined[k]) for k in ("negatives", "energy", "energy_pos")})
    return out


if __name__ == "__main__":
    m = model()
    torch.save({"state": m.state_dict(), "cases": cases(m)}, sys.argv[1])
