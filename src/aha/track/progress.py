"""A tqdm progress bar driven by absolute step numbers, with compact metric read-outs.

step 40/200 [00:12<00:48] reward=0.53 kl=0.012 tok/s=1.2k
"""

from __future__ import annotations

import math
import sys
from typing import Any

from tqdm import tqdm

_SUFFIXES = ((1e9, "G"), (1e6, "M"), (1e3, "k"))


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


class Progress:
    """Progress over `total` steps. `update(step, **shown)` moves the bar to `step` (absolute, so a
    resumed run passes initial=start_step and keeps calling with real step numbers) and shows the given
    values after the bar. With enabled=False nothing is printed at all (tests, quiet runs)."""

    def __init__(self, total: int, desc: str, initial: int = 0, enabled: bool = True):
        self.enabled = enabled
        self._bar = tqdm(
            total=total,
            desc=desc,
            initial=initial,
            disable=not enabled,
            dynamic_ncols=True,
            file=sys.stderr,
            unit="step",
        )
        self._step = initial

    def update(self, step: int, **shown: Any) -> None:
        """Move to `step` and display `key=value` pairs (pass keys like "tok/s" via **{"tok/s": x})."""
        if not self.enabled:
            return
        if step > self._step:
            self._bar.update(step - self._step)
            self._step = step
        if shown:
            text = " ".join(f"{key}={format_number(value)}" for key, value in shown.items())
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
