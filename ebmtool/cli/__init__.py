"""The `ebmtool` command line: a click group of thin commands over the library.

Library errors become one sentence and an exit code: InputError -> 2, RunError -> 1, Interrupted -> 130/143.
`ebmtool --debug CMD` shows the traceback instead.
"""

from __future__ import annotations

import click

from ebmtool import __version__
from ebmtool.errors import EbmtoolError, RunError


class EbmtoolGroup(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EbmtoolError as exc:
            if ctx.params.get("debug"):
                raise
            from ebmtool import distributed

            if distributed.active():  # under torchrun
                if exc.every_process:
                    # every process raised it at the same point: process 0 says it once, and nobody exits before
                    # it has (torchrun stops the remaining processes as soon as one exits with an error)
                    if distributed.is_main():
                        click.echo(f"Error: {exc}", err=True)
                    try:
                        distributed.barrier()
                    except RunError:
                        pass  # a process already left; nothing more to wait for
                else:
                    click.echo(f"Error (process {distributed.rank()} of {distributed.world_size()}): {exc}",
                               err=True)
                raise click.exceptions.Exit(exc.exit_code) from None
            if exc.exit_code == 2:
                raise click.UsageError(str(exc), ctx=None) from None
            err = click.ClickException(str(exc))
            err.exit_code = exc.exit_code
            raise err from None
        except MemoryError:
            if ctx.params.get("debug"):
                raise
            raise click.ClickException("out of memory; try a smaller --batch-size") from None


@click.group(cls=EbmtoolGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="ebmtool")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
def cli(debug):
    """Train and debug energy-based diffusion reasoning models (IRED).

    Every command reads and writes files: checkpoints (.safetensors) and HDF5 artifacts. `ebmtool info FILE`
    shows any of them.
    """


def main():
    cli(prog_name="ebmtool")


from ebmtool.cli import compare, core, negatives, study  # noqa: E402,F401  (registers the commands)

__all__ = ["cli", "main"]
