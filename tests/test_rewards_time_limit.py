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
    TimeLimitedPool,
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


def arrive_and_wait(directory, expected, wait_s):
    """Returns only once `expected` calls have arrived: proof that they ran at the same time."""
    open(os.path.join(directory, str(os.getpid())), "w").close()
    deadline = time.monotonic() + wait_s
    while len(os.listdir(directory)) < expected:
        if time.monotonic() > deadline:
            return "alone"
        time.sleep(0.01)
    return "together"


def test_a_pool_runs_its_calls_at_the_same_time(tmp_path):
    pool = TimeLimitedPool(3, memory_limit_mb=1024)
    try:
        # Each call waits for all three to arrive; run one after another, each would say "alone".
        outcomes = pool.map(f"{__name__}:arrive_and_wait", [(str(tmp_path), 3, 30.0)] * 3, timeout_s=60.0)
    finally:
        pool.close()
    assert outcomes == ["together"] * 3
    assert len(os.listdir(tmp_path)) == 3  # three different processes


def test_a_hanging_call_in_a_pool_spoils_none_of_the_others():
    pool = TimeLimitedPool(2, memory_limit_mb=1024)
    try:
        outcomes = (
            pool.map(f"{__name__}:add", [(1, 2), (3, 4), (5, 6)], timeout_s=SLACK_S)
            + pool.map(f"{__name__}:spin_with_alarm_blocked", [()], timeout_s=0.5)
            + pool.map(f"{__name__}:add", [(7, 8)])
        )
    finally:
        pool.close()
    assert outcomes[:3] == [3, 7, 11]
    assert isinstance(outcomes[3], TimeLimitExceeded)
    assert outcomes[4] == 15  # the killed worker was replaced
    assert pool.restarts == 1


def test_a_pool_returns_exceptions_in_place():
    pool = TimeLimitedPool(2, memory_limit_mb=1024)
    try:
        outcomes = pool.map(f"{__name__}:fail", [()]) + pool.map(f"{__name__}:die", [()])
    finally:
        pool.close()
    assert isinstance(outcomes[0], WorkerCallError) and "bad input 42" in str(outcomes[0])
    assert isinstance(outcomes[1], WorkerCrashed)


def test_a_pool_needs_a_worker():
    with pytest.raises(ValueError, match="at least one worker"):
        TimeLimitedPool(0)
