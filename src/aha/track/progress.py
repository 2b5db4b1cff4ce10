"""A tqdm progress bar driven by absolute step numbers, with compact metric read-outs.

grpo:  20%|██        | 40/200 [00:12, 3.3step/s, reward=0.53 kl=0.012 tok_s=1.2k heldout_acc=0.41 eta=48s]

`eta` is the time left at the mean pace of the steps this process has run: steps that also evaluate
or write a checkpoint count in proportion, where tqdm's smoothed rate (its own `<remaining>`, left out)
jumps at each of them. `heldout_acc` / `heldout_loss` is the last held-out evaluation logged.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any

from tqdm import tqdm

_SUFFIXES = ((1e9, "G"), (1e6, "M"), (1e3, "k"))
HELD_OUT = {"eval/accuracy": "heldout_acc", "eval/loss": "heldout_loss"}  # metric -> read-out name
_BAR = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}, {rate_fmt}{postfix}]"


def format_number(value: Any) -> str:
    """Short human form: 3 significant digits, with k/M/G for large magnitudes (1234 -> '1.23k')."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    for threshold, suffix in _SUFFIXES:
        if abs(value) >= threshold:
            return f"{value / threshold:.3g}{suffix}"
    return str(value) if isinstance(value, int) else f"{value:.3g}"


def format_duration(seconds: float) -> str:
    """Two units at most: 45s, 4m12s, 1h03m, 2d04h."""
    s = max(int(round(seconds)), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


class Progress:
    """Progress over `total` steps. `update(step, **shown)` moves the bar to `step` (absolute, so a
    resumed run passes initial=start_step and keeps calling with real step numbers) and shows the given
    values after the bar, then the last held-out result passed to `observe` and the ETA. With
    enabled=False nothing is printed at all (tests, quiet runs)."""

    def __init__(
        self,
        total: int,
        desc: str,
        initial: int = 0,
        enabled: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._clock = clock
        self.enabled = enabled
        self._bar = tqdm(
            total=total,
            desc=desc,
            initial=initial,
            disable=not enabled,
            dynamic_ncols=True,
            file=sys.stderr,
            unit="step",
            bar_format=_BAR,
        )
        self._step = initial
        self._total = total
        self._first: tuple[int, float] | None = None  # (step, time) of the first update: the ETA's origin
        self._held_out: dict[str, float] = {}

    def observe(self, metrics: dict[str, Any]) -> None:
        """Remember the held-out results among a step's logged metrics (shown from the next update)."""
        for key, name in HELD_OUT.items():
            value = metrics.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                self._held_out[name] = value

    def eta_seconds(self, step: int, now: float | None = None) -> float | None:
        """Seconds left at the mean pace since the first update; None before a second step is seen."""
        now = self._clock() if now is None else now
        if self._first is None or step <= self._first[0]:
            return None
        per_step = (now - self._first[1]) / (step - self._first[0])
        return max(self._total - step, 0) * per_step

    def update(self, step: int, **shown: Any) -> None:
        """Move to `step` and display `key=value` pairs (pass keys like "tok/s" via **{"tok/s": x})."""
        if not self.enabled:
            return
        if self._first is None:
            self._first = (step, self._clock())
        if step > self._step:
            self._bar.update(step - self._step)
            self._step = step
        values = {**shown, **self._held_out}
        eta = self.eta_seconds(step)
        text = " ".join(f"{key}={format_number(value)}" for key, value in values.items())
        if eta is not None:
            text = f"{text} eta={format_duration(eta)}".lstrip()
        if text:
            self._bar.set_postfix_str(text, refresh=False)
        self._bar.refresh()

    def write(self, msg: str) -> None:
        """Print a line above the bar without breaking it (no-op when disabled)."""
        if self.enabled:
            tqdm.write(msg, file=sys.stderr)

    def close(self) -> None:
        self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
