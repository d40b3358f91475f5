"""Stopping a run cleanly: SIGINT (Ctrl-C) or SIGTERM (a scheduler, `timeout`, `kill`) during training.

The first signal is noted and the step in flight finishes; the loop then writes a checkpoint, marks
the run "interrupted" and raises `Interrupted`, and `hybrid train --resume RUN_DIR` continues from
that step. A second signal interrupts at once (KeyboardInterrupt), leaving the previous checkpoint.
Handlers are installed only in the main thread (Python delivers signals there) and restored after.
"""
from __future__ import annotations

import signal
import threading
from types import FrameType


class Interrupted(KeyboardInterrupt):
    """The run stopped on a signal after writing a checkpoint at `step`."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


class StopSignals:
    """Context manager: `.received` is the name of the first SIGINT/SIGTERM seen inside it, or None."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping without a checkpoint")
        self.received = signal.Signals(signum).name
