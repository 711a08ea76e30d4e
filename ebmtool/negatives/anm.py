"""anm, adversarial negatives: start from the ired start mapped to clean space, then projected descent on the energy
the loss will actually see (the re-noised point, positive's noise), inside an RMS radius around the start."""

from __future__ import annotations

from ebmtool.runtime.errors import InputError
from ebmtool.negatives.common import acceptance, clean_start, keep_given, refine_renoised, repeat_rows, start_noise
from ebmtool.negatives.ired import draw_start
from ebmtool.negatives.registry import NegativeSource, Setting, register

SETTINGS = (
    Setting("anm_steps", 5, "ANM descent steps.", type=int, minimum=0),
    Setting("anm_step_size", 1.0, "ANM step, as a multiple of eta_t.", minimum=0, exclusive=True),
    Setting("anm_radius", 1.0, "ANM radius around the start (clean RMS).", minimum=0, exclusive=True),
    Setting("anm_noise", 1.0, "ANM start noise scale (ired uses 3)."),
)


def _generate(model, x, y, t, eps, sched, k, s, gen, mask=None, noise=None):
    xr, yr, tr, er = repeat_rows(x, k), repeat_rows(y, k), repeat_rows(t, k), repeat_rows(eps, k)
    mr = None if mask is None else repeat_rows(mask, k)
    start = start_noise(eps, k, gen, noise.get("start"))
    y0 = keep_given(clean_start(sched, yr, tr, start, s.anm_noise, s.clean_clamp), yr, mr)
    y_neg, _, accepted = refine_renoised(model, xr, y0, tr, er, sched, s.anm_steps, step_scale=s.anm_step_size,
                                         radius=s.anm_radius, box=s.clean_clamp, mask=mr)
    return y_neg, acceptance(accepted, s.anm_steps)


def _check(s) -> None:
    if s.anm_steps == 0:
        raise InputError("--anm-steps 0 leaves ANM negatives where they start (a noisier ired source): give at "
                         "least 1 descent step")


SOURCE = register(NegativeSource("anm", _generate, draw_start, settings=SETTINGS, refines=True, check=_check))
