"""The two kinds of failure a user can see; the CLI maps them to exit codes.

InputError (exit 2): the user gave something wrong (a missing or wrong file, a bad flag combination).
RunError (exit 1): the inputs were fine but the run failed (a non-finite loss, a full disk).
Both carry one sentence that names what is wrong; the CLI never shows a traceback unless --debug.
"""


class EbmtoolError(Exception):
    """Base class; exit code 1."""

    exit_code = 1
    # Raised identically by every process of a torchrun job (an agreed stop, a check of the shared settings):
    # only process 0 prints it. Other errors are printed by every process that raises them, with its rank.
    every_process = False

    def on_every_process(self):
        self.every_process = True
        return self


class RunError(EbmtoolError):
    """The run failed for a reason other than bad input."""

    exit_code = 1


class InputError(EbmtoolError):
    """Bad input from the user: a file, a flag, a combination of them."""

    exit_code = 2


class Interrupted(EbmtoolError):
    """The run was stopped by a signal after saving what it had (exit 130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, message: str, exit_code: int = 130, saved: str | None = None):
        super().__init__(message)
        self.exit_code = exit_code
        self.saved = saved  # what was saved, without the command that continues (a caller may know a better one)
