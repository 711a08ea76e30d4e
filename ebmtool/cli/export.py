"""`ebmtool export`: a run's model as a directory to share (ebmtool.analysis.export)."""

from __future__ import annotations

from pathlib import Path

import click

from ebmtool.cli import cli
from ebmtool.cli.common import checkpoint_argument, device_option, json_option, overwrite_option, print_json, table
from ebmtool.runtime.devices import resolve_device
from ebmtool.analysis.evaluate import WEIGHTS
from ebmtool.analysis.export import EXPORT_FILES, export_run


@cli.command("export")
@checkpoint_argument
@click.option("-o", "--output", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Directory to write model.safetensors, config.json and README.md (the model card) into.")
@click.option("--weights", type=click.Choice(WEIGHTS), default=WEIGHTS[0], show_default=True,
              help="The weight set to export: the raw weights (every command's default) or the EMA weights.")
@click.option("--eval-n", type=click.IntRange(min=0), default=1024, show_default=True,
              help="Test problems the model card's evaluation samples (0: no evaluation).")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@device_option
@json_option
@overwrite_option
def export_cmd(checkpoint, output, weights, eval_n, batch_size, device, as_json, overwrite):
    """Export one weight set of a run to share: weights only (safetensors), config.json and a model card, in
    Hugging Face's save_pretrained layout. `ebmtool eval DIR` and ebmtool.load_model(DIR) read it.

    Example: ebmtool export runs/quick -o models/quick
    """
    ex = export_run(checkpoint, output, weights=weights, eval_n=eval_n, overwrite=overwrite, batch_size=batch_size,
                    device=resolve_device(device))
    if as_json:
        print_json({"output": str(ex.path), "files": list(EXPORT_FILES), "weights": weights,
                    "evaluation": ex.evaluation, "config": ex.config})
        return
    click.echo(f"exported the {weights} weights of {checkpoint} (step {ex.config['step']}) -> {ex.path}/: "
               f"{', '.join(EXPORT_FILES)}")
    if ex.evaluation is not None:
        ev = ex.evaluation
        rows = [[f"model ({weights} weights)", ev["results"][ev["metric"]]]]
        rows += [[f"baseline: {k}", v] for k, v in ev["baselines"].items()]
        click.echo(table(rows, ["", ev["metric"]]))
