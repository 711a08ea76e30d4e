"""Negative sources: the registry (registry.py), what sources share (common.py), one module per built-in source
(ired.py, anm.py, hnm.py, gaussian.py, each registering itself on import), mixes and curricula of sources
(curriculum.py) and SANS weighting (sans.py).

One signature for every source: `generate(source, model, x, y, t, eps, sched, k, settings, gen)` returns a
`NegativeBatch` with y_neg (B, K, D), a validity mask (B, K) after the near-duplicate filter, and counts.
Everything is generated, refined and scored at the positive's own level t. Every source returns clean-space
candidates y_neg, detached; only the framework noises them (common.renoise).
"""

from ebmtool.negatives.common import (  # noqa: F401
    CLAMP_MODES,
    CLEAN_CLAMP,
    DISCRETE_CLAMP,
    DUP_THRESHOLD,
    FLOOR_MARGIN,
    NegativeBatch,
    floor_kappa,
    kappa,
    masked_mean,
    noise_to_signal,
    refine_renoised,
    renoise,
    repeat_rows,
    rms,
    start_noise,
)
from ebmtool.negatives.registry import (  # noqa: F401
    NegativeSettings,
    NegativeSource,
    Setting,
    draw_noise,
    generate,
)
from ebmtool.negatives import ired, anm, hnm, gaussian  # noqa: E402,F401  (the built-in sources register themselves)
from ebmtool.negatives.ired import ired_negative  # noqa: F401
from ebmtool.negatives.hnm import hnm_levels, standardise  # noqa: F401
