"""Timing helpers shared by the in-process benchmarks: interleaved repeats and medians.

Competitors are timed in turns (A, B, then B, A, ...) rather than all of A then all of B, so that a
slow drift in the machine's load (other processes, thermal state) hits both sides of a ratio alike.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def time_call(fn: Callable[[], object]) -> tuple[float, object]:
    """Wall-clock seconds of one call, and what it returned."""
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def time_interleaved(
    runs: dict[str, Callable[[], object]],
    repeats: int,
    warmups: dict[str, Callable[[], object]] | None = None,
    check: Callable[[str, object], None] | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each named run, `repeats` times each, in alternating order.

    `warmups` (name -> a cheaper call of the same code) run once first and are not timed; `check`
    is given each timed call's result (e.g. to assert the work done was the work asked for).
    """
    for warmup in (warmups or {}).values():
        warmup()
    names = list(runs)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else reversed(names):
            elapsed, result = time_call(runs[name])
            if check is not None:
                check(name, result)
            seconds[name].append(elapsed)
    return seconds


def median(values: list[float]) -> float:
    return statistics.median(values)
