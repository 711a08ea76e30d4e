"""`ebmtool report`: the Markdown page of a whole study (tasks x arms x seeds), from its files alone."""

from __future__ import annotations

from pathlib import Path

import click

from ebmtool.cli import cli
from ebmtool.cli.common import overwrite_option
from ebmtool.analysis.study import VERDICT_WEIGHTS, WEIGHTS, write_report


@cli.command()
@click.argument("study_dir", type=click.Path(path_type=Path))
@click.option("--verdict-weights", type=click.Choice(WEIGHTS), default=VERDICT_WEIGHTS, show_default=True,
              help="Which compare JSONs give the verdicts: raw weights (the EMA lags at CPU budgets) or EMA; the "
              "other set's means are reported beside them.")
@overwrite_option
def report(study_dir, verdict_weights, overwrite):
    """Write STUDY_DIR/REPORT.md: per task and split the arms' means, differences to the baseline with intervals
    and verdicts (from the compare JSONs), trivial predictors, training diagnostics, compute and wall time.

    Trains and evaluates nothing; needs the study's run directories, and replaces an existing REPORT.md only with
    --overwrite. Example: ebmtool report studies/negatives --overwrite
    """
    click.echo(f"wrote {write_report(study_dir, weights_for_verdicts=verdict_weights, overwrite=overwrite)}")
