"""Option decorators shared by several commands (the sqlite-utils pattern) and small output helpers."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ebmtool.artifacts import resolve_checkpoint_path


def log(msg: str):
    """Logs and progress go to stderr; stdout carries data and summaries."""
    click.echo(msg, err=True)


def checkpoint_argument(f):
    return click.argument("checkpoint", type=click.Path(path_type=Path), callback=_ckpt_cb)(f)


def _ckpt_cb(ctx, param, value):
    return resolve_checkpoint_path(value) if value is not None else None


def overwrite_option(f):
    return click.option("--overwrite", is_flag=True, help="Replace an existing output file.")(f)


def device_option(f):
    return click.option("--device", default="auto", show_default=True,
                        help="auto (CUDA when available), cpu, or cuda[:N].")(f)


def precision_option(f):
    return click.option("--precision", type=click.Choice(["fp32", "bf16"]), default=None,
                        help="bf16: autocast the network's matrix products on CUDA (CUDA only) [fp32].")(f)


def seed_option(help_text="Seed; drawn at random and recorded when not given."):
    return click.option("--seed", type=click.IntRange(min=0), default=None, help=help_text)


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(f)


def print_json(obj):
    click.echo(json.dumps(obj, indent=2, sort_keys=True, default=_jsonable))


def _jsonable(v):
    if hasattr(v, "tolist"):
        return v.tolist()
    if isinstance(v, Path):
        return str(v)
    raise TypeError(f"not JSON serialisable: {type(v)}")


def table(rows: list[list], header: list[str] | None = None) -> str:
    """A plain left-aligned text table (first column left, numbers right)."""
    cells = [[_fmt(c) for c in r] for r in ([header] if header else []) + rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    lines = []
    for j, r in enumerate(cells):
        lines.append("  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)).rstrip())
        if header and j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(c) -> str:
    if isinstance(c, float):
        return f"{c:.4g}" if abs(c) < 1e5 else f"{c:.3e}"
    return str(c)

