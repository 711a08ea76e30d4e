"""`ebmtool compare`: the same held-out problems for every model, confidence intervals, paired tests, plots."""

from __future__ import annotations

from pathlib import Path

import click

from ebmtool.analysis.arms import named_arms
from ebmtool.io.artifacts import check_output, write_json, write_text
from ebmtool.cli import cli
from ebmtool.cli.common import (
    device_option,
    json_option,
    log,
    overwrite_option,
    print_json,
    say,
    table,
)
from ebmtool.analysis.compare import DEFAULT_SEED
from ebmtool.analysis.compare import compare as run_compare
from ebmtool.runtime.devices import resolve_device
from ebmtool.runtime.errors import RunError
from ebmtool.analysis.evaluate import DEFAULT_WEIGHTS, WEIGHTS, problems_label
from ebmtool.analysis.plots import FIGURE_FORMATS, check_plot_dir, write_all
from ebmtool.analysis.reporting import diagnostics_rows, fmt_number, format_markdown, summary_lines


def _parse_group(ctx, param, values):
    out = []
    for v in values:
        name, sep, spec = v.partition("=")
        if not sep or not name.strip() or not spec.strip():
            raise click.BadParameter(f"{v!r}: use NAME=PATHS, e.g. base='runs/base/seed-*' or "
                                     "anm=runs/a/ckpt.safetensors,runs/b", ctx=ctx, param=param)
        out.append((name.strip(), spec))
    return out


@cli.command()
@click.argument("checkpoints", nargs=-1, type=click.Path(path_type=Path))
@click.option("--group", "groups", multiple=True, callback=_parse_group, metavar="NAME=PATHS",
              help="An arm of several seeds (replicates): NAME=comma-separated checkpoints, run directories or "
              "quoted glob patterns, e.g. --group base='runs/base/seed-*'. Repeat for each arm.")
@click.option("--baseline", default=None, help="Name of the baseline arm (a group name, or a checkpoint's run "
              "directory name); without it, the first arm.")
@click.option("--vary", "declared", multiple=True, metavar="KEY",
              help="The configuration key(s) the comparison is about (glob patterns allowed, e.g. 'anm_*'); any "
              "other differing key is warned about (without --vary: a warning when more than one key differs). Keys "
              "that follow from others (trained_steps, curriculum_total, checksums) and unset defaults of a used "
              "negative source are never warned about. --vary compute declares an intended difference in "
              "training compute; without it an arm whose FLOPs differ from the baseline's by more than 10 % is "
              "warned about.")
@click.option("-n", "--n", "n", type=click.IntRange(min=2), default=1024, show_default=True,
              help="Number of held-out problems (the task's fixed, seeded test split).")
@click.option("--harder", is_flag=True, help="The out-of-distribution test split of the task.")
@click.option("--data", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="Evaluate on this HDF5 data set instead of the task's test split.")
@click.option("--weights", type=click.Choice(WEIGHTS), default=DEFAULT_WEIGHTS, show_default=True,
              help="The raw weights (model; every command's default) or the EMA weights (what the reference "
              "evaluates; warned about where an arm's EMA never averaged or the arms' step counts differ 2x or "
              "more).")
@click.option("--confidence", type=click.FloatRange(0.5, 0.999), default=0.95, show_default=True,
              help="Level of every interval; the tests use alpha = 1 - confidence.")
@click.option("--bootstrap", "n_boot", type=click.IntRange(min=100), default=2000, show_default=True,
              help="Bootstrap resamples.")
@click.option("--permutations", "n_perm", type=click.IntRange(min=100), default=10000, show_default=True,
              help="Monte Carlo sign flips (the test is exact up to 16 problems).")
@click.option("--seed", type=click.IntRange(min=0), default=DEFAULT_SEED, show_default=True,
              help="Seed of the bootstrap and permutation draws (recorded in the outputs).")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@device_option
@click.option("--allow-identical", is_flag=True,
              help="Exit 0 even when replicates give identical results (otherwise exit 1 after the report).")
@json_option
@click.option("--json-file", "json_file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write the full report (every number, config diff, checkpoint sha256s) to this JSON file.")
@click.option("--markdown-file", "md_file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write the tables as Markdown to this file.")
@click.option("--plot", "plot_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Write figures into this directory (scatter vs baseline, error distributions, energy "
              "histograms, training curves, per-seed means), each with a CSV of its data (same name, .csv).")
@click.option("--plot-format", type=click.Choice(FIGURE_FORMATS), default=FIGURE_FORMATS[0], show_default=True,
              help="File type of the --plot figures.")
@overwrite_option
def compare(checkpoints, groups, baseline, declared, n, harder, data, weights, confidence, n_boot, n_perm, seed,
            batch_size, device, allow_identical, as_json, json_file, md_file, plot_dir, plot_format, overwrite):
    """Does a variant beat the baseline? Evaluates every checkpoint on the identical held-out problems and reports
    the task's declared metric with bootstrap intervals, paired differences with a sign-flip permutation test,
    Holm-corrected verdicts and, for arms of several seeds, the across-seed test.

    The first checkpoint or group is the baseline (or --baseline). Never trains and never changes a checkpoint.
    Each arm's training compute (FLOPs recorded in the checkpoint) is shown with its ratio to the baseline's.
    With one seed in an arm the verdict compares checkpoints ("checkpoints differ" or "no difference shown"),
    not training methods: train >= 2 seeds per arm for "better" or "worse".

    \b
    Examples:
      ebmtool compare runs/base runs/variant
      ebmtool compare --group base='runs/base/seed-*' --group noenergy='runs/noenergy/seed-*' \\
          --plot figs --markdown-file cmp.md --json-file cmp.json
    """
    if not checkpoints and not groups:
        raise click.UsageError("give checkpoints (or run directories) to compare, or --group NAME=PATHS")
    arms = named_arms(checkpoints, groups)
    inputs = tuple(p for _, ps in arms for p in ps)
    for out in (json_file, md_file):
        if out is not None:
            check_output(out, overwrite, inputs=inputs)
    if plot_dir is not None:
        check_plot_dir(plot_dir, overwrite)
    report, extras = run_compare(arms, baseline=baseline, n=n, harder=harder, data=data, weights=weights,
                                 confidence=confidence, n_boot=n_boot, n_perm=n_perm, seed=seed,
                                 batch_size=batch_size, device=resolve_device(device), declared=declared, log=log)
    if as_json:
        print_json(report)
        for w in report["warnings"]:
            log(f"WARNING: {w}")
    else:
        click.echo(format_text(report))
    if json_file is not None:
        say(f"wrote {write_json(json_file, report)}", as_json)
    if md_file is not None:
        say(f"wrote {write_text(md_file, format_markdown(report))}", as_json)
    if plot_dir is not None:
        for p in write_all(report, extras, plot_dir, fmt=plot_format):
            say(f"wrote {p}", as_json)
    if report["identical_replicates"] and not allow_identical:
        raise RunError(f"{len(report['identical_replicates'])} pair(s) of replicates gave identical results "
                       "(see the warnings above); fix the runs or pass --allow-identical")


def format_text(report: dict) -> str:
    """The report as plain text tables for stdout."""
    rows = summary_lines(report)
    desc = report["problems"]
    out = [f"task        {report['task']}; primary metric {report['metric']} ({report['direction']} is better)",
           f"problems    {problems_label(desc)}, {report['n_problems']} problems (fingerprint {desc.get('fingerprint', '')[:12]}), "
           f"{report['weights']} weights",
           "", "configuration (what differs between the runs):"]
    out.append(table(rows["diff"], rows["diff_header"]) if len(rows["diff"]) > 1 or report["config_diff"]["keys"]
               else "  (only the seeds differ)")
    out += ["", table(rows["groups"], rows["groups_header"]), ""]
    if rows["comps"]:
        out += [table(rows["comps"], rows["comps_header"]), "", table(rows["verdicts"], rows["verdicts_header"]), ""]
    out.append(f"differences are variant - baseline in {report['metric']} ({report['direction']} is better); "
               f"bootstrap {report['bootstrap']} resamples, seed {report['seed']}; alpha {report['alpha']:.3g}")
    out.append(f"tests: problems = {report['tests']['problems']}; seeds = paired t by seed (Welch if the seeds "
               "differ); one Holm correction; verdict 'better' only if the whole interval is on the better side "
               "and the Holm p < alpha, and only across seeds (one seed: 'checkpoints differ')")
    out.append("compute = training FLOPs (mean over the arm's runs); x base = over the baseline arm's")
    out.append("trivial predictors: " + ", ".join(f"{k} {fmt_number(v)}" for k, v in report["trivial_baselines"].items()))
    if report.get("diagnostics"):
        out += ["", "training diagnostics (tail means; kappa < 1: a false negative; grad_cosine < 0: the energy "
                "term opposes the denoiser):", table(*diagnostics_rows(report))]
    for note in report["notes"]:
        out.append(f"note: {note}")
    for w in report["warnings"]:
        out.append(f"WARNING: {w}")
    return "\n".join(out)
