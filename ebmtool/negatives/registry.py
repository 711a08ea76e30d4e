"""The registry of negative sources: the one place that knows which sources exist.

A source is declared once, in its own module, as a `NegativeSource` and registered with `register(source)`: its
name, its settings (each a `Setting`: default, type, valid range, help text; the setting's name is its
TrainConfig field and, dashed, its command-line flag), how it draws its random noise, how it generates negatives,
whether it refines them by accepted/rejected descent steps, and its own diagnostics. Everything else reads the
registry: the configuration (defaults and validation), the CLI's flags and help (`train`, `mine-negatives`),
the curriculum, the training step's diagnostics and metrics columns, and mining. The built-in sources
(ired.py, anm.py, hnm.py, gaussian.py) register themselves when ebmtool.negatives is imported; outside code
registers through ebmtool.plugins (a module named in EBMTOOL_PLUGINS).

The noise contract (distributed training): `draw(n, k, d, settings, gen)` makes every random draw the source
makes for n positives, in the order it makes them, as CPU tensors whose first axis is the positive, and
`generate(..., noise=draw(...)[rows])` equals `generate(..., gen)` on those rows of the whole batch: the trainer
draws for the global batch, as one process does, and each process keeps its rows. N processes therefore equal
one process for any registered source.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from ebmtool.method.diffusion import Schedule
from ebmtool.runtime.errors import InputError
from ebmtool.negatives.common import CLEAN_CLAMP, DUP_THRESHOLD, NegativeBatch, rms

# Settings every source reads (not a source's own): the near-duplicate threshold, the clean box, the kappa floor.
COMMON_SETTINGS = {"dup_threshold": DUP_THRESHOLD, "clean_clamp": CLEAN_CLAMP, "kappa_floor": 0.0}


@dataclass(frozen=True)
class Setting:
    """One knob of a source. `name` is the TrainConfig field, the attribute of NegativeSettings and (dashed) the
    `train` flag: one name everywhere. A source's name should prefix it (anm_steps), so that sources never clash."""

    name: str
    default: Any
    help: str
    type: type = float  # int, float or str
    minimum: float | None = None  # valid range: value >= minimum, or > minimum when `exclusive`
    exclusive: bool = False
    choices: tuple | None = None  # a str setting's allowed values
    flag: bool = True  # a `train` flag (ired's noise scale has none)
    training: bool = True  # False: a setting of offline mining only (hnm's candidate selection)

    @property
    def flag_name(self) -> str:
        return self.name.replace("_", "-")

    def check(self, value) -> None:
        """The valid range: one InputError sentence naming the flag."""
        if self.choices is not None and value not in self.choices:
            raise InputError(f"--{self.flag_name} must be one of {', '.join(self.choices)}")
        if self.minimum is None:
            return
        if self.exclusive and not value > self.minimum:
            raise InputError(f"--{self.flag_name} must be "
                             f"{'positive' if self.minimum == 0 else f'above {self.minimum}'}, got {value}")
        if not self.exclusive and value < self.minimum:
            raise InputError(f"--{self.flag_name} must be "
                             f"{'non-negative' if self.minimum == 0 else f'at least {self.minimum}'}")


@dataclass(frozen=True)
class NegativeSource:
    """A negative source. `generate(model, x, y, t, eps, sched, k, settings, gen, mask=None, noise=None)` returns
    (y_neg (B*K, D) clean space, info dict) with rows laid out as common.repeat_rows does; `noise` is what `draw`
    returned for these rows. info's optional keys: "candidates" and "candidate_duplicates" (a source that examines
    several candidates per negative counts those), "accepted" and "attempted" (descent steps of a refining
    source), and `per_negative` (a (B, K) value per negative that the diagnostics read, hnm's start level)."""

    name: str
    generate: Callable
    draw: Callable  # (n, k, d, settings, gen) -> {key: (n, ...) CPU tensor}: the noise contract
    settings: tuple[Setting, ...] = ()
    refines: bool = False  # its negatives are refined by accepted/rejected descent steps (logs accept_fraction)
    describe: str = ""  # shown after the name in --negatives-from's help ("reference")
    reference: bool = False  # the reference negative: the default source, and the one a discrete task replaces
    check: Callable | None = None  # (settings) -> None: validation across its resolved settings
    per_negative: str | None = None  # the info key of a per-negative diagnostic value
    columns: Callable | None = None  # (settings, levels) -> names of its extra per-source metrics columns
    diagnose: Callable | None = None  # (per-negative value, valid, settings, levels) -> {column: 0-d tensor}
    mining_options: tuple[tuple[str, str], ...] = ()  # (mine-negatives option, setting): its offline flags


_SOURCES: dict[str, NegativeSource] = {}


def register(source: NegativeSource) -> NegativeSource:
    """Add a source; a name or a setting name that is already taken is one InputError sentence."""
    if source.name in _SOURCES:
        raise InputError(f"a negative source named {source.name!r} is already registered; known sources are "
                         f"{', '.join(_SOURCES)}")
    taken = {s.name: n for n, src in _SOURCES.items() for s in src.settings}
    for s in source.settings:
        if s.name in taken or s.name in COMMON_SETTINGS:
            raise InputError(f"negative source {source.name!r}: its setting {s.name!r} is already a setting of "
                             f"{taken.get(s.name, 'every source')!r}")
    _SOURCES[source.name] = source
    return source


def get(name: str) -> NegativeSource:
    """The registered source `name`; an unknown name is one InputError sentence listing the known ones."""
    try:
        return _SOURCES[name]
    except KeyError:
        raise InputError(f"unknown negative source {name!r}; known sources are {', '.join(_SOURCES)}") from None


def names() -> tuple[str, ...]:
    """Every registered source, built-ins first, in registration order."""
    return tuple(_SOURCES)


def sources() -> tuple[NegativeSource, ...]:
    return tuple(_SOURCES.values())


def reference() -> NegativeSource:
    """The reference source (ired): the default of --negatives-from."""
    return next(s for s in _SOURCES.values() if s.reference)


def setting(name: str) -> Setting | None:
    """The declared setting `name` of any source (None if no source declares it)."""
    return next((s for src in _SOURCES.values() for s in src.settings if s.name == name), None)


class NegativeSettings:
    """The settings of every source, by their names, plus the common ones (COMMON_SETTINGS): what a source reads
    as `settings.anm_steps`. A name not given takes the declared default; an unknown name is a TypeError."""

    def __init__(self, **values):
        for name in values:
            if name not in COMMON_SETTINGS and setting(name) is None:
                raise TypeError(f"unknown negative setting {name!r}")
        object.__setattr__(self, "_values", dict(values))

    def __getattr__(self, name):
        values = self.__dict__.get("_values", {})
        if name in values:
            return values[name]
        if name in COMMON_SETTINGS:
            return COMMON_SETTINGS[name]
        s = setting(name)
        if s is None:
            raise AttributeError(name)
        return s.default

    def __setattr__(self, name, value):
        raise AttributeError("NegativeSettings is immutable; use replace()")

    def replace(self, **changes) -> "NegativeSettings":
        return NegativeSettings(**{**self._values, **changes})

    def __eq__(self, other):
        return isinstance(other, NegativeSettings) and self.resolved() == other.resolved()

    def __hash__(self):
        return hash(tuple(sorted(self.resolved().items())))

    def resolved(self) -> dict:
        """Every value, the defaults of what was not given included."""
        every = [*COMMON_SETTINGS, *(s.name for src in _SOURCES.values() for s in src.settings)]
        return {n: getattr(self, n) for n in every}

    def __repr__(self):
        return f"NegativeSettings({', '.join(f'{k}={v!r}' for k, v in self._values.items())})"


def draw_noise(source: str, n: int, k: int, d: int, settings: NegativeSettings,
               gen: torch.Generator | None) -> dict[str, torch.Tensor]:
    """Every random draw `source` makes for n positives (its `draw`; see the noise contract above)."""
    return get(source).draw(n, k, d, settings, gen)


@torch.no_grad()
def generate(source: str, model, x, y, t, eps, sched: Schedule, k: int, settings: NegativeSettings,
             gen: torch.Generator | None = None, mask: torch.Tensor | None = None,
             noise: dict[str, torch.Tensor] | None = None) -> NegativeBatch:
    """K negatives per positive from `source`, in clean space, with the near-duplicate filter applied.

    eps is the positive's own noise (B, D): sources refine and score at (t, eps) and the framework re-noises
    with it. `gen` supplies every extra random draw (fresh start noises for j >= 1, gaussian and hnm noise).
    `mask` (B, D), given entries = 1: every source returns negatives whose given entries equal y's.
    `noise` (from `draw_noise`, possibly some rows of a larger draw) replaces the draws from `gen`.
    """
    src = get(source)
    b, d = y.shape
    if noise is None:
        noise = src.draw(b, k, d, settings, gen)
    y_neg, info = src.generate(model, x, y, t, eps, sched, k, settings, gen, mask=mask, noise=noise)
    y_neg = y_neg.detach().view(b, k, d)
    valid = rms(y_neg - y[:, None, :]) > settings.dup_threshold
    cands = info.pop("candidates", b * k)
    # hnm counts dropped candidates (a selected near-duplicate implies all its candidates were); others count picks
    dups = info.pop("candidate_duplicates", None)
    dups = (~valid).sum() if dups is None else dups  # a tensor: read when logged, not here
    return NegativeBatch(y_neg, valid, cands, dups, info)
