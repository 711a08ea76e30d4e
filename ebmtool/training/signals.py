"""Stop signals: the loop finishes the current step, saves a resumable checkpoint and exits 128 + the signal."""

from __future__ import annotations

import signal
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)  # SIGUSR1/2: Slurm's pre-timeout


class StopFlag:
    """STOP_SIGNALS set a flag; the loop finishes the current step, saves, and exits (128 + the signal number:
    130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self):
        self.signum = None
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in STOP_SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


