"""The child-process time limit: results come back, hangs are cut off (even uninterruptible ones and off the
main thread), crashes and memory bombs are contained, and the worker recovers for the next call.

The functions below run in the child, which imports this module by name (the parent's sys.path is passed on).
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from aha.rewards.time_limit import (
    GRACE_S,
    TimeLimitedWorker,
    TimeLimitExceeded,
    WorkerCallError,
    WorkerCrashed,
)

# Generous slack for a loaded machine: these bounds check "it returns", not how fast.
SLACK_S = 5.0


def add(a, b):
    return a + b


def spin():
    while True:
        pass


def spin_with_alarm_blocked():
    """Stands in for a long C call that never checks signals: the soft timer cannot stop it."""
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])
    while True:
        pass


def swallow_everything():
    """Library code with a broad except must not be able to swallow the soft timeout."""
    while True:
        try:
            time.sleep(0.01)
        except Exception:
            pass


def die():
    os._exit(7)


def allocate_gigabytes(n):
    return len(bytearray(n * 2**30))


def fail():
    raise ValueError("bad input 42")


def pid():
    return os.getpid()


@pytest.fixture
def worker():
    w = TimeLimitedWorker(memory_limit_mb=1024)
    yield w
    w.close()


def test_returns_the_result(worker):
    assert worker.call(f"{__name__}:add", (2, 3)) == 5
    assert worker.call(f"{__name__}:add", ("a", "b")) == "ab"


def test_an_exception_in_the_child_comes_back_with_its_traceback(worker):
    with pytest.raises(WorkerCallError, match="(?s)ValueError: bad input 42"):
        worker.call(f"{__name__}:fail")
    assert worker.call(f"{__name__}:add", (1, 1)) == 2


@pytest.mark.parametrize("hang", ["spin", "swallow_everything"])
def test_soft_timeout_stops_python_level_hangs_and_keeps_the_child(worker, hang):
    first = worker.call(f"{__name__}:pid")
    start = time.monotonic()
    with pytest.raises(TimeLimitExceeded, match="ran past 0.5 s"):
        worker.call(f"{__name__}:{hang}", timeout_s=0.5)
    assert time.monotonic() - start < 0.5 + SLACK_S
    assert worker.call(f"{__name__}:pid") == first and worker.restarts == 0


def test_hard_limit_kills_a_child_the_soft_timer_cannot_stop(worker):
    first = worker.call(f"{__name__}:pid")
    start = time.monotonic()
    with pytest.raises(TimeLimitExceeded, match="child killed"):
        worker.call(f"{__name__}:spin_with_alarm_blocked", timeout_s=0.5)
    elapsed = time.monotonic() - start
    assert 0.5 + GRACE_S <= elapsed < 0.5 + GRACE_S + SLACK_S
    assert worker.restarts == 1
    assert worker.call(f"{__name__}:pid") != first  # a fresh child took over


def test_time_limit_works_off_the_main_thread(worker):
    outcome = {}

    def run():
        try:
            worker.call(f"{__name__}:spin", timeout_s=0.5)
        except TimeLimitExceeded as exc:
            outcome["error"] = exc
        outcome["after"] = worker.call(f"{__name__}:add", (1, 2))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=30)
    assert isinstance(outcome.get("error"), TimeLimitExceeded) and outcome["after"] == 3


def test_a_crashing_child_is_reported_and_replaced(worker):
    with pytest.raises(WorkerCrashed, match="exit status 7"):
        worker.call(f"{__name__}:die")
    assert worker.call(f"{__name__}:add", (2, 2)) == 4


def test_memory_limit_turns_a_memory_bomb_into_an_error(worker):
    with pytest.raises(WorkerCallError, match="MemoryError"):
        worker.call(f"{__name__}:allocate_gigabytes", (8,))
    assert worker.call(f"{__name__}:add", (0, 1)) == 1


def test_a_failing_startup_is_reported():
    w = TimeLimitedWorker(startup=(f"{__name__}:fail",))
    with pytest.raises(WorkerCrashed, match="(?s)startup failed.*bad input 42"):
        w.call(f"{__name__}:add", (1, 2))
    w.close()


def test_timeout_must_be_positive(worker):
    with pytest.raises(ValueError, match="timeout_s must be > 0"):
        worker.call(f"{__name__}:add", (1, 2), timeout_s=0)
