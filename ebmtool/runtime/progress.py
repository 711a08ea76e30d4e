"""Progress bars of long work (evaluation, comparison, data generation): one rule for every command.

A bar is tqdm on stderr, so it never mixes with what a command prints on stdout (tables, `--json`). It is shown
only when stderr is a terminal (tqdm's `disable=None`: a redirected or captured stderr gets no bar) and, under
torchrun, only by process 0.
"""

from __future__ import annotations

import sys

from tqdm import tqdm
from ebmtool.runtime import distributed


def progress_bar(total: int | None = None, *, desc: str, unit: str = "it", initial: int = 0, **kw) -> tqdm:
    """A tqdm bar on stderr, disabled when stderr is not a terminal or this is not process 0.

    Use it as a context manager and call `.update(n)`; a disabled bar accepts the same calls and does nothing.
    """
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True,
                disable=None if distributed.is_main() else True, **kw)


def bar_log(bar: tqdm, log):
    """A log function that writes its lines above a shown bar (so the bar is redrawn below them) and otherwise
    calls `log` unchanged; None when `log` is None."""
    if log is None:
        return None
    if bar.disable:
        return log

    def write(msg: str):
        bar.write(msg, file=sys.stderr)

    return write
