"""Offline negatives: mine-negatives, score, weights (thin commands over ebmtool.offline.mining)."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from ebmtool.runtime import distributed
from ebmtool.io.artifacts import check_output, open_h5
from ebmtool.cli import cli
from ebmtool.cli.common import (
    checkpoint_argument,
    device_option,
    json_option,
    log,
    overwrite_option,
    print_json,
    setting_options,
    table,
)
from ebmtool.config import TrainConfig
from ebmtool.runtime.devices import resolve_device
from ebmtool.runtime.errors import InputError
from ebmtool.analysis.evaluate import DEFAULT_WEIGHTS, WEIGHTS
from ebmtool.offline.mining import (
    DEFAULT_SOURCE,
    SCORE_LEVELS,
    SELECT,
    SUMMARY_HEADER,
    MineOptions,
    compute_weights,
    energy_summary,
    finished_partial,
    mine,
    score,
    write_scores,
    write_weights,
)
from ebmtool.negatives import DUP_THRESHOLD, registry
from ebmtool.negatives import anm as anm_source
from ebmtool.analysis.preflight import preflight as run_preflight
from ebmtool.negatives.sans import ALPHA_SCHEDULES, DEFAULT_ALPHA, DEFAULT_ALPHA_FLOOR
from ebmtool.tasks.registry import DEFAULT_TASK



# mine-negatives' flags of the sources' settings: those a source's own mining options (hnm's --candidates, ...)
# do not already set
_MINED = {name for src in registry.sources() for _, name in src.mining_options}
MINING_SETTINGS = [st for src in registry.sources() for st in src.settings
                   if st.flag and st.training and st.name not in _MINED]
SETTING_SOURCE = {st.name: src.name for src in registry.sources() for st in src.settings}


def _refuse_other_sources_flags(ctx: click.Context, source: str, settings: dict) -> None:
    """One sentence for a flag the mining source would ignore: hnm's mining options (--candidates, ...) under
    another source, or a setting of a source other than the one that mines."""
    own = {opt for opt, _ in registry.get(source).mining_options}
    flag = {p.name: p.opts[0] for p in ctx.command.params}
    foreign = [flag[n] for n in ("candidates", "refine_steps", "lam", "select")
               if n not in own and ctx.get_parameter_source(n) == click.core.ParameterSource.COMMANDLINE]
    foreign += [flag[n] for n, v in settings.items() if v is not None and SETTING_SOURCE[n] != source]
    if foreign:
        raise InputError(f"{', '.join(foreign)} {'does' if len(foreign) == 1 else 'do'} not apply to mining with "
                         f"{source}: give only the mining source's own settings")


def _device(name):
    return resolve_device(name)


def _summary(rows, header) -> dict:
    """Summary-table rows [name, count, mean, ...] as {name: {column: value}} for --json."""
    return {r[0]: dict(zip(header[1:], r[1:])) for r in rows}


@cli.command("mine-negatives")
@checkpoint_argument
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("negs.h5"), show_default=True,
              help="HDF5 negatives file (built in the directory OUTPUT.partial; renamed when complete).")
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Mine for the problems of this HDF5 data file instead of the checkpoint's training set.")
@click.option("--k", type=click.IntRange(min=1), default=4, show_default=True, help="Negatives per problem.")
@click.option("--candidates", type=click.IntRange(min=1), default=10, show_default=True,
              help="HNM candidates per negative, started at evenly spaced noise levels.")
@click.option("--refine-steps", type=click.IntRange(min=0), default=5, show_default=True,
              help="Energy-descent steps refining each candidate at the positive's level.")
@click.option("--lambda", "lam", type=float, default=1.0, show_default=True,
              help="Deception score z(-E) + lambda * z(RMS(y- - y)), both z-scored over a negative's candidates: weight "
              "of the clean-space distance.")
@click.option("--absolute-margin", type=float, default=None, help="Keep only E- >= E+ + M (off by default).")
@click.option("--relative-margin", type=float, default=None,
              help="Keep only E- >= E+ + |E+| * M (sign-independent; off by default).")
@click.option("--max-energy", type=float, default=None, help="Keep only E- <= this (off by default).")
@click.option("--select", type=click.Choice(SELECT), default=SELECT[0], show_default=True,
              help="Per negative: the best candidate, or one drawn with probability softmax(deception score).")
@click.option("--dup-threshold", type=float, default=DUP_THRESHOLD, show_default=True,
              help="Negatives with clean-space RMS(y- - y) at or below this are near-duplicates: dropped, counted.")
@click.option("--kappa-floor", type=float, default=0.0, show_default=True,
              help="Positive-aware negatives: move every negative out to kappa >= this at its row's (t, eps), so "
              "none is more probable than its positive (recorded in the file's provenance). 0 = off.")
@click.option("--weights", type=click.Choice(WEIGHTS), default=DEFAULT_WEIGHTS, show_default=True,
              help="The checkpoint's weight set: raw (model; every command's default) or EMA.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of levels, noises and candidates (row i's level and noise depend only on (seed, i)).")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Mine only the first N problems.")
@click.option("--negatives-from", "negatives", default=DEFAULT_SOURCE, show_default=True, metavar="SOURCE",
              help="The registered negative source that mines (--candidates, --refine-steps, --lambda and --select "
              "are hnm's; another source takes its own settings' flags below).")
@setting_options(MINING_SETTINGS, help_text=lambda st: f"A setting of {SETTING_SOURCE[st.name]}, as for train.")
@device_option
@json_option
@overwrite_option
def mine_negatives(checkpoint, output, data, k, candidates, refine_steps, lam, absolute_margin, relative_margin,
                   max_energy, select, dup_threshold, kappa_floor, weights, seed, batch_size, limit, negatives,
                   device, as_json, overwrite, **settings):
    """Mine K hard negatives (HNM, or --negatives-from SOURCE) for every training problem of a checkpoint.

    A killed run leaves OUTPUT.partial (crash-safe); rerunning with the same options continues it.
    Example: ebmtool mine-negatives runs/base/ckpt.safetensors --k 4 -o negs.h5
    """
    _refuse_other_sources_flags(click.get_current_context(), negatives, settings)
    distributed.init_from_env()  # under torchrun: the batches are shared out, process 0 writes the file
    # a rerun of a mine killed after its file was in place (while removing OUTPUT.partial) only finishes that
    check_output(output, overwrite or finished_partial(output), inputs=(checkpoint, data))
    distributed.barrier()  # every process has checked the output before process 0 can write it
    opts = MineOptions(k=k, candidates=candidates, refine_steps=refine_steps, lam=lam,
                       absolute_margin=absolute_margin, relative_margin=relative_margin, max_energy=max_energy,
                       select=select, seed=seed, batch_size=batch_size, limit=limit, dup_threshold=dup_threshold,
                       weights=weights, kappa_floor=kappa_floor, negatives=negatives,
                       settings=tuple((n, v) for n, v in settings.items() if v is not None))
    res = mine(checkpoint, output, opts, data=data, device=_device(device), overwrite=overwrite, log=log)
    if not distributed.is_main():
        return
    with open_h5(res.path, "negatives") as f:
        e_pos, e_neg, valid = f["energy_pos"][()], f["energy"][()], f["valid"][()]
    rows, stats = energy_summary(e_pos, e_neg, valid)
    c = res.counts
    if as_json:
        print_json({"output": str(res.path), "rows": res.rows, "k": k, "resumed_from": res.resumed_from,
                    "energies": _summary(rows, SUMMARY_HEADER), **stats, "counts": dict(c)})
        return
    click.echo(f"wrote {res.rows} rows x {k} negatives to {res.path}"
               + (f" (resumed at row {res.resumed_from})" if res.resumed_from else ""))
    click.echo(table(rows, SUMMARY_HEADER))
    cand = max(c["candidates"], 1)
    pairs = max(res.rows * k, 1)
    click.echo(f"p_hard = P(E- < E+) {stats['p_hard']:.3g}; valid negatives {stats['valid_fraction']:.1%}")
    click.echo(f"near-duplicate candidates {c['duplicates']} ({c['duplicates'] / cand:.1%}), selected negatives "
               f"dropped as near-duplicates {c['dup_negatives']} ({c['dup_negatives'] / pairs:.1%})")
    for name, knob in (("filtered_absolute_margin", "--absolute-margin"),
                       ("filtered_relative_margin", "--relative-margin"), ("filtered_max_energy", "--max-energy")):
        if c[name]:
            click.echo(f"filtered by {knob}: {c[name]} ({c[name] / pairs:.1%})")
    if kappa_floor:
        click.echo(f"moved out to kappa >= {kappa_floor:g}: {c['floored']} ({c['floored'] / pairs:.1%}); dropped "
                   f"where the clean box kept them below it: {c['floor_dropped']} ({c['floor_dropped'] / pairs:.1%})")
    if c["rows_not_enough"]:
        click.echo(f"could not find {k} valid negatives for {c['rows_not_enough']} problems "
                   f"({c['rows_not_enough'] / max(res.rows, 1):.1%}); relax --absolute-margin/--relative-margin, "
                   "raise --max-energy, or raise --candidates")


@cli.command("score")
@checkpoint_argument
@click.argument("negatives", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("scores.h5"), show_default=True)
@click.option("--levels", type=click.Choice(SCORE_LEVELS), default=SCORE_LEVELS[0], show_default=True,
              help="Energies at each row's mined level, or also at every level.")
@click.option("--weights", type=click.Choice(WEIGHTS), default=DEFAULT_WEIGHTS, show_default=True,
              help="The checkpoint's weight set: raw (model; every command's default) or EMA.")
@click.option("--batch-size", type=click.IntRange(min=1), default=1024, show_default=True)
@device_option
@json_option
@overwrite_option
def score_cmd(checkpoint, negatives, output, levels, weights, batch_size, device, as_json, overwrite):
    """Energies of the positives and every negative of a negatives file under a checkpoint of the same task.

    Example: ebmtool score runs/base/ckpt.safetensors negs.h5 -o scores.h5
    """
    distributed.init_from_env()  # under torchrun: rows are shared out, process 0 writes the file
    check_output(output, overwrite, inputs=(checkpoint, negatives))
    distributed.barrier()  # every process has checked the output before process 0 can write it
    res = score(checkpoint, negatives, levels=levels, weights=weights, batch_size=batch_size,
                device=_device(device))
    if distributed.is_main():
        write_scores(output, res)
    distributed.barrier()  # the file is in place before any process returns
    if not distributed.is_main():
        return
    d = res["datasets"]
    rows, stats = energy_summary(d["energy_pos"], d["energy"], d["valid"])
    lrows, level_header = [], ["level", "E+ mean", "E- mean", "p_hard"]
    if levels == "all":
        ep, en, v = d["energy_pos_all_levels"], d["energy_all_levels"], d["valid"]
        for lv in range(ep.shape[1]):
            margin = (en[:, :, lv] - ep[:, lv:lv + 1])[v]
            lrows.append([lv, float(ep[:, lv].mean()), float(en[:, :, lv][v].mean()) if v.any() else np.nan,
                          float((margin < 0).mean()) if margin.size else np.nan])
    if as_json:
        print_json({"output": str(output), "rows": len(d["index"]), "checkpoint": str(checkpoint),
                    "step": res["attrs"]["step"], "energies": _summary(rows, SUMMARY_HEADER), **stats,
                    "levels": [dict(zip(("level", "energy_pos_mean", "energy_neg_mean", "p_hard"), r))
                               for r in lrows] if levels == "all" else None})
        return
    click.echo(f"scored {len(d['index'])} rows under {checkpoint} (step {res['attrs']['step']}) -> {output}")
    click.echo(table(rows, SUMMARY_HEADER))
    click.echo(f"p_hard = P(E- < E+) {stats['p_hard']:.3g}")
    if lrows:
        click.echo(table(lrows, level_header))


@cli.command("weights")
@click.argument("scores", type=click.Path(path_type=Path))
@click.option("--alpha", type=float, default=DEFAULT_ALPHA, show_default=True,
              help="SANS inverse temperature (0 = uniform), the default of train --sans too.")
@click.option("--alpha-schedule", type=click.Choice(ALPHA_SCHEDULES), default=ALPHA_SCHEDULES[0],
              show_default=True, help="constant, or linear = max(floor, alpha (1 - t/9)) over each row's level.")
@click.option("--alpha-floor", type=float, default=None, show_default=str(DEFAULT_ALPHA_FLOOR),
              help="Floor of --alpha-schedule linear.")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("weights.h5"), show_default=True)
@json_option
@overwrite_option
def weights_cmd(scores, alpha, alpha_schedule, alpha_floor, output, as_json, overwrite):
    """SANS weights softmax(-alpha E-) per row over its K valid negatives, from a scores file.

    Example: ebmtool weights scores.h5 -o weights.h5
    """
    if alpha_floor is not None and alpha_schedule != "linear":
        raise InputError("--alpha-floor is only used by --alpha-schedule linear")
    check_output(output, overwrite, inputs=(scores,))
    res = compute_weights(scores, alpha, alpha_schedule, DEFAULT_ALPHA_FLOOR if alpha_floor is None else alpha_floor)
    write_weights(output, res)
    d = res["datasets"]
    k = d["weights"].shape[1]
    has = d["weights"].sum(axis=1) > 0
    rows = [["entropy (nats)", float(np.nanmean(d["entropy"][has])) if has.any() else np.nan, float(np.log(k))],
            ["effective sample size", float(d["ess"][has].mean()) if has.any() else np.nan, float(k)],
            ["max weight", float(d["weights"][has].max(axis=1).mean()) if has.any() else np.nan, 1.0 / k]]
    if as_json:
        print_json({"output": str(output), "rows": len(d["index"]), "k": k, "alpha": alpha,
                    "alpha_schedule": alpha_schedule, "rows_without_valid": int((~has).sum()),
                    "per_row_mean": {name: {"value": v, "uniform": u} for name, v, u in rows}})
        return
    click.echo(f"weights for {len(d['index'])} rows x {k} negatives (alpha {alpha:g}, {alpha_schedule}) -> {output}")
    click.echo(table(rows, ["per row (mean)", "value", "uniform"]))
    if not has.all():
        click.echo(f"{int((~has).sum())} rows have no valid negative (all weights 0; the energy term skips them)")


@cli.command("preflight")
@click.option("--task", default=DEFAULT_TASK, show_default=True, help="A built-in task whose answer is known.")
@click.option("--size", type=click.IntRange(min=2), default=None, show_default="8 (the cpu recipe's) for matrix tasks",
              help="Matrix size.")
@click.option("--anm", is_flag=True, default=False, help="Shorthand for --negatives-from anm.")
@click.option("--negatives-from", "negatives", default=None, metavar="SOURCE[:FRACTION],...",
              help="The source(s) to check, as for train (default: ired).")
@click.option("--k", type=click.IntRange(min=1), default=None, help="Negatives per positive (as for train).")
@click.option("--kappa-floor", type=float, default=None, help="The floor to check (as for train; 0 = off).")
@click.option("--neg-steps", type=click.IntRange(min=0), default=None, help="As for train.")
@click.option("--anm-steps", type=click.IntRange(min=0), default=None, help="As for train.")
@click.option("--anm-step-size", type=float, default=None, help="As for train.")
@click.option("--anm-radius", type=float, default=None, help="As for train.")
@click.option("--anm-noise", type=float, default=None, help="As for train.")
@click.option("--hnm-candidates", type=click.IntRange(min=1), default=None, help="As for train.")
@click.option("--hnm-steps", type=click.IntRange(min=0), default=None, help="As for train.")
@click.option("--hnm-lambda", type=float, default=None, help="As for train.")
@click.option("--gaussian-scale", type=float, default=None, help="As for train.")
@click.option("--dup-threshold", type=float, default=None, help="As for train.")
@click.option("-n", "n", type=click.IntRange(min=1), default=512, show_default=True,
              help="Test problems per noise level.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the noise and draws.")
@json_option
def preflight_command(task, size, anm, n, seed, as_json, **flags):
    """Check a negative source against the exact energy of a task, in seconds, before training with it.

    Runs the source with these settings against E*(x, z, t) = |z - sqrt(ab_t) y|^2 / (2 sqrt(1 - ab_t)), the
    energy of a perfectly trained model, and prints per noise level the false-negative fraction P(kappa < 1)
    (negatives more probable than their positive), the near-duplicate fraction and the mean kappa. A source that
    descends the energy collapses toward the noisy mode under a perfect energy: a high false-negative fraction
    means a trained model will be taught to rank true answers backwards (try --kappa-floor).

    \b
    Example: ebmtool preflight --anm --k 16
    """
    given = {key: v for key, v in flags.items() if v is not None}
    if anm:
        if "negatives" in given:
            raise InputError("--anm is shorthand for --negatives-from anm; give one of them")
        given["negatives"] = anm_source.SOURCE.name
    result = run_preflight(TrainConfig(task=task, size=size, **given), n=n, seed=seed)  # size None: the task's own
    if as_json:
        print_json(result.as_dict())
        return
    click.echo(f"{result.source}, K = {result.k}, against the exact energy of {result.task} ({n} test problems "
               "per level)")
    header = ["level", "false negatives", "near-duplicates", "mean kappa", "floored", "dropped"]
    click.echo(table([[r["level"], f"{r['false_negative_fraction']:.1%}", f"{r['near_duplicate_fraction']:.1%}",
                       f"{r['kappa']:.3f}", f"{r['floored_fraction']:.1%}", f"{r['dropped_fraction']:.1%}"]
                      for r in result.rows], header))
