"""Option decorators shared by several commands (the sqlite-utils pattern) and small output helpers."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from ebmtool.io.artifacts import json_text
from ebmtool.io.checkpoints import resolve_checkpoint_path
from ebmtool.runtime.devices import PRECISIONS
from ebmtool.runtime.errors import InputError


def log(msg: str):
    """Logs and progress go to stderr; stdout carries data and summaries."""
    click.echo(msg, err=True)


def checkpoint_argument(f):
    return click.argument("checkpoint", type=click.Path(path_type=Path), callback=_ckpt_cb)(f)


def _ckpt_cb(ctx, param, value):
    return resolve_checkpoint_path(value) if value is not None else None


def overwrite_option(f=None, *, option=click.option):
    """--overwrite. `@overwrite_option(option=optgroup.option)` puts it in a group of options (click-option-group),
    as `train --help` shows them; so do precision_option and seed_option."""
    if f is None:
        return lambda g: overwrite_option(g, option=option)
    return option("--overwrite", is_flag=True, help="Replace an existing output file.")(f)


def device_option(f):
    return click.option("--device", default="auto", show_default=True,
                        help="auto (CUDA when available), cpu, or cuda[:N].")(f)


def precision_option(f=None, *, option=click.option):
    if f is None:
        return lambda g: precision_option(g, option=option)
    return option("--precision", type=click.Choice(PRECISIONS), default=None, show_default=PRECISIONS[0],
                        help="bf16: autocast the network's matrix products on CUDA (CUDA only).")(f)


RENAMED_PREFIX = "renamed__"  # the parameter name of a hidden option that holds an old flag's spelling
RENAMED: dict[str, str] = {}  # parameter name -> the old spelling that still works


def renamed_option(old: str, new_name: str | None, advice: str = "", **kw):
    """A hidden option for a flag's old spelling. With `new_name` (the new option's parameter name) the old
    spelling still works, with a note (`take_renamed`); without one it would be ambiguous, and giving it is an
    error in one sentence whose `advice` names the new flags."""
    def refuse(ctx, param, value):
        if value is not None and new_name is None:
            raise InputError(f"{old} was renamed: {advice}")
        return value

    if new_name is not None:
        RENAMED[new_name] = old
    return click.option(old, f"{RENAMED_PREFIX}{new_name or old.strip('-').replace('-', '_')}", default=None,
                        hidden=True, callback=refuse, **kw)


def take_renamed(params: dict, log) -> dict:
    """`params` with the values of old spellings (renamed_option) moved to their new parameter; both is an error."""
    out = {k: v for k, v in params.items() if not k.startswith(RENAMED_PREFIX)}
    for key, value in params.items():
        name = key[len(RENAMED_PREFIX):]
        if not key.startswith(RENAMED_PREFIX) or value is None:
            continue
        new = "--" + name.replace("_", "-")
        if out.get(name) is not None:
            raise InputError(f"{RENAMED[name]} is the old spelling of {new}: give {new} alone")
        log(f"note: {RENAMED[name]} is now {new} (the old spelling still works)")
        out[name] = value
    return out


def seed_option(help_text="Seed; drawn at random and recorded when not given.", option=click.option):
    return option("--seed", type=click.IntRange(min=0), default=None, help=help_text)


def json_option(f):
    """--json: the command's report as JSON on stdout, and nothing else there (docs/cli.md)."""
    return click.option("--json", "as_json", is_flag=True,
                        help="Print the report as JSON on stdout instead of text (nothing else goes to stdout; "
                        "notes go to stderr).")(f)


def print_json(obj):
    """The --json report: the only thing a command writes to stdout under --json."""
    click.echo(json_text(obj))


def say(msg: str, as_json: bool = False):
    """A line of the human report: stdout, or stderr under --json (stdout then carries the JSON alone)."""
    click.echo(msg, err=as_json)


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



def command_line(ctx: click.Context, drop: tuple[str, ...] = ()) -> str:
    """The command as typed, rebuilt from the parameters given on the command line (less `drop`): what a message
    can tell the user to run again."""
    words = ["ebmtool", ctx.info_name]
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name)
        if param.name in drop or source is None or source.name != "COMMANDLINE":
            continue
        value = ctx.params[param.name]
        if not isinstance(param, click.Option):
            words.append(str(value))
        elif param.is_flag:
            words.append(max(param.opts if value or not param.secondary_opts else param.secondary_opts, key=len))
        else:
            words += [max(param.opts, key=len), str(value)]
    return shlex.join(words)


def setting_type(st):
    """The click type of a negative source's setting (ebmtool.negatives.registry.Setting): a choice, an int range
    from its minimum (ints), or its type (floats are range-checked by TrainConfig.validate, in one sentence)."""
    if st.choices is not None:
        return click.Choice(st.choices)
    if st.type is int and st.minimum is not None:
        return click.IntRange(min=int(st.minimum) + (1 if st.exclusive else 0))
    return st.type


def setting_options(settings, *, option=click.option, help_text=None):
    """One option per setting (`--NAME`, unset by default, the declared default shown): the flags a registered
    negative source gets for free. `help_text(setting)` replaces the declared help."""
    def decorate(f):
        for st in reversed(settings):
            f = option(f"--{st.flag_name}", st.name, type=setting_type(st), default=None,
                       show_default=str(st.default), help=help_text(st) if help_text else st.help)(f)
        return f
    return decorate
