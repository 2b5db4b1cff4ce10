"""SIGTERM and Ctrl-C end a run at a step boundary, with a checkpoint, instead of losing the step.

Schedulers preempt with SIGTERM and a grace period; people press Ctrl-C. Either way the step in progress
finishes, is checkpointed, and the command exits with 128 + the signal (143, 130), saying where it
stopped. A second Ctrl-C stops at once (a KeyboardInterrupt), for a step that takes too long to wait
for. Handlers are installed only in the main thread (Python allows no other) and restored at the end.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class RunInterrupted(KeyboardInterrupt):
    """The run stopped at a step boundary on a signal, after saving its checkpoint."""

    def __init__(
        self, signum: int, step: int, run_dir: object, how_to_continue: str = "continue with --resume"
    ) -> None:
        self.signum, self.step, self.run_dir = signum, step, run_dir
        name = signal.Signals(signum).name
        super().__init__(
            f"{name}: stopped after step {step}, checkpoint saved; {how_to_continue} ({run_dir})"
        )


class StopSignals:
    """Records the first SIGTERM / SIGINT while installed; `received` is that signal's number, or None."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: now
        self.received = signum
        print(
            f"\n{signal.Signals(signum).name}: stopping after this step (checkpoint first); "
            "Ctrl-C again to stop at once",
            file=sys.stderr,
        )
