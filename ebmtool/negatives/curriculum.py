"""Mixes of negative sources and curricula over training steps.

A curriculum is a list of stages (start fraction of the run, mix {source: fraction}). `--negatives-from` is a
one-stage curriculum. The stage of a step is a pure function of the step counter (stored in every checkpoint) and
of `total`, the run length the curriculum was laid out for (also stored), so a resume that extends `--steps` keeps
every stage boundary where it was (a curriculum counter that restarts on resume would shift every stage).

Spec forms:
    --negatives-from anm            --negatives-from ired:0.5,anm:0.5
    --curriculum 0:ired,0.3:ired=0.5+anm=0.5,0.7:anm      or a preset name (PRESETS)
Every stage's mix must sum to 1 (within 1e-6) and name only registered sources (ebmtool.negatives.registry),
else InputError (exit 2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ebmtool.runtime.errors import InputError
from ebmtool.negatives import registry

PRESETS = {
    "ired-to-anm": "0:ired,0.3:ired=0.5+anm=0.5,0.7:anm",
    "ired-to-hnm": "0:ired,0.3:ired=0.5+hnm=0.5,0.7:hnm",
    "ired-anm-hnm": "0:ired,0.25:ired=0.5+anm=0.5,0.5:ired=0.34+anm=0.33+hnm=0.33,0.75:anm=0.5+hnm=0.5",
}


@dataclass(frozen=True)
class Stage:
    start: float  # fraction of the run at which the stage begins
    mix: tuple[tuple[str, float], ...]  # (source, fraction), fractions sum to 1

    def fractions(self) -> dict[str, float]:
        return dict(self.mix)


def _check_mix(mix: list[tuple[str, float]], where: str) -> tuple[tuple[str, float], ...]:
    names = [n for n, _ in mix]
    for n, f in mix:
        if n not in registry.names():
            raise InputError(f"{where}: unknown negative source {n!r}; known sources are "
                             f"{', '.join(registry.names())}")
        if not (0 < f <= 1):
            raise InputError(f"{where}: fraction of {n} must be in (0, 1], got {f}")
    if len(set(names)) != len(names):
        raise InputError(f"{where}: a source is named twice")
    total = sum(f for _, f in mix)
    if abs(total - 1.0) > 1e-6:
        raise InputError(f"{where}: source fractions sum to {total:.6g}, not 1")
    return tuple(mix)


def _float(s: str, where: str) -> float:
    try:
        return float(s)
    except ValueError:
        raise InputError(f"{where}: {s!r} is not a number") from None


def parse_mix(spec: str, sep: str = ",", kv: str = ":", where: str = "--negatives-from") -> tuple:
    """'anm' or 'ired:0.5,anm:0.5' -> (('ired', 0.5), ('anm', 0.5)). A lone source without a fraction means 1."""
    items = [s.strip() for s in spec.split(sep) if s.strip()]
    if not items:
        raise InputError(f"{where}: empty source list")
    mix = []
    for it in items:
        if kv in it:
            n, f = it.split(kv, 1)
            mix.append((n.strip(), _float(f.strip(), where)))
        elif len(items) == 1:
            mix.append((it, 1.0))
        else:
            raise InputError(f"{where}: give a fraction for every source when mixing ({it!r} has none)")
    return _check_mix(mix, where)


def parse_curriculum(spec: str) -> tuple[Stage, ...]:
    """'0:ired,0.3:ired=0.5+anm=0.5,0.7:anm' or a preset name -> stages with increasing starts from 0."""
    where = "--curriculum"
    text = PRESETS.get(spec, spec)
    stages = []
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        if ":" not in part:
            raise InputError(f"{where}: stage {part!r} needs START:MIX (or use a preset: {', '.join(PRESETS)})")
        start, mix = part.split(":", 1)
        stages.append(Stage(_float(start, where), parse_mix(mix, sep="+", kv="=", where=f"{where} stage {part!r}")))
    if not stages:
        raise InputError(f"{where}: empty curriculum")
    if stages[0].start != 0:
        raise InputError(f"{where}: the first stage must start at 0, not {stages[0].start}")
    for a, b in zip(stages, stages[1:]):
        if not (a.start < b.start < 1):
            raise InputError(f"{where}: stage starts must increase strictly within [0, 1)")
    return tuple(stages)


def resolve(negatives: str, curriculum: str | None) -> tuple[Stage, ...]:
    """The stages a run uses: the curriculum if given, else one stage with the --negatives-from mix."""
    if curriculum:
        return parse_curriculum(curriculum)
    return (Stage(0.0, parse_mix(negatives)),)


def sources_of(stages) -> list[str]:
    """Every source any stage uses, in the registry's order."""
    used = {n for s in stages for n, _ in s.mix}
    return [n for n in registry.names() if n in used]


def stage_at(stages, step: int, total: int) -> int:
    """Index of the stage that holds `step` (0-based step of the update being computed) in a run of `total`."""
    return stage_at_fraction(stages, step / max(total, 1))


def stage_at_fraction(stages, frac: float) -> int:
    """Index of the stage that holds the point `frac` of a run (steps done / total, or compute spent / budget)."""
    idx = 0
    for i, s in enumerate(stages):
        if frac >= s.start:
            idx = i
    return idx


def assign(stage: Stage, b: int, gen: torch.Generator) -> torch.Tensor:
    """Source index (into stage.mix) for each of b examples, drawn independently from the stage's mix.

    One source: all zeros, nothing drawn. The realised mix is logged against the configured one.
    """
    if len(stage.mix) == 1:
        return torch.zeros(b, dtype=torch.long)
    p = torch.tensor([f for _, f in stage.mix], dtype=torch.float64)
    return torch.multinomial(p, b, replacement=True, generator=gen)
