"""The `ebmtool` command line: a click group of thin commands over the library.

Library errors become one sentence and an exit code: InputError -> 2, RunError -> 1, Interrupted -> 130/143.
`ebmtool --debug CMD` shows the traceback instead.
Under torchrun a failing process's exception is also written to torchrun's error file, so that torchrun's
end-of-job summary names it (messages and exit codes stay the same).
Plugins (ebmtool.plugins: EBMTOOL_PLUGINS, entry points) are loaded before the commands are built, so that a
plugin's tasks and negative sources are in their choices, flags and help; a plugin that fails to load is one
sentence, exit 2.
"""

from __future__ import annotations

import json
import os
import time

import click
from torch.distributed.elastic.multiprocessing.errors import record

from ebmtool import __version__
from ebmtool.runtime import distributed
from ebmtool.runtime.errors import EbmtoolError, InputError, RunError
from ebmtool.plugins import load_plugins

try:  # before the commands below are built
    load_plugins()
    PLUGIN_ERROR: InputError | None = None
except InputError as _exc:  # reported as every command's error (one sentence, exit 2), not as a traceback
    PLUGIN_ERROR = _exc


class EbmtoolGroup(click.Group):
    def invoke(self, ctx):
        try:
            if PLUGIN_ERROR is not None:
                raise PLUGIN_ERROR
            return super().invoke(ctx)
        except EbmtoolError as exc:
            if ctx.params.get("debug"):
                raise
            if distributed.active():  # under torchrun
                if exc.every_process:
                    # every process raised it at the same point: process 0 says it once, and nobody exits before
                    # it has (torchrun stops the remaining processes as soon as one exits with an error)
                    if distributed.is_main():
                        click.echo(f"Error: {exc}", err=True)
                        record_for_torchrun(exc)
                    try:
                        distributed.barrier()
                    except RunError:
                        pass  # a process already left; nothing more to wait for
                else:
                    click.echo(f"Error (process {distributed.rank()} of {distributed.world_size()}): {exc}",
                               err=True)
                    record_for_torchrun(exc)
                raise click.exceptions.Exit(exc.exit_code) from None
            record_for_torchrun(exc)
            if exc.exit_code == 2:
                raise click.UsageError(str(exc), ctx=None) from None
            err = click.ClickException(str(exc))
            err.exit_code = exc.exit_code
            raise err from None
        except MemoryError as exc:
            if ctx.params.get("debug"):
                raise
            record_for_torchrun(exc)
            raise click.ClickException("out of memory; try a smaller --batch-size") from None


@click.group(cls=EbmtoolGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="ebmtool")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
def cli(debug):
    """Train and debug energy-based diffusion reasoning models (IRED).

    Every command reads and writes files: checkpoints (.safetensors) and HDF5 artifacts. `ebmtool info FILE`
    shows any of them.
    """


def under_torchrun() -> bool:
    """Whether this process was started by torchrun (its elastic agent sets TORCHELASTIC_RUN_ID)."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def record_for_torchrun(exc: BaseException) -> None:
    """Under torchrun, write a handled error to this process's torchrun error file (TORCHELASTIC_ERROR_FILE), so
    that torchrun's summary names it instead of '<N/A>'. Called by the process that printed the message.

    The entry is the error's one sentence, as a plain-string message (the form torchrun shows as it is): a handled
    error has no traceback to show, as on the command line without --debug. torch's `record` writes the
    traceback of an unhandled exception itself.
    """
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not (under_torchrun() and path):
        return

    name = f"{type(exc).__module__}.{type(exc).__qualname__}"
    try:
        with open(path, "w") as fh:
            json.dump({"message": f"{name}: {exc}", "timestamp": int(time.time())}, fh)
    except OSError:
        pass  # the summary then says <N/A>; the error itself was printed


def main():
    """The entry point of `ebmtool` and `python -m ebmtool`. Under torchrun the command runs inside torch's
    `record` (torch.distributed.elastic.multiprocessing.errors), which writes an unhandled exception to torchrun's
    error file; exit codes and messages are those of a run without torchrun. A process that succeeded leaves
through distributed.exit_after_success."""
    if not under_torchrun():
        _run()
        return
    try:
        record(_run)()
    except SystemExit as done:
        if done.code not in (0, None) or not distributed.active():
            raise
    distributed.exit_after_success()


def _run():
    cli(prog_name="ebmtool")


# plugins were loaded above, before the commands are built: a plugin's tasks and negative sources are among their
# choices, flags and help
from ebmtool.cli import compare, core, data, export, negatives, study  # noqa: E402,F401  (registers the commands)

__all__ = ["cli", "main"]
