"""Chain-of-thought signals logged every step, so R1-Zero's growing length and "aha moment" show in the plots.

Pure function of the batch's completions: length (mean, p90, max, in tokens), the fraction cut off at
the length limit (a rising value means max_new_tokens is now too small), and how often completions
reflect ("wait", "let me check", "verify", ...), matched as whole words, in any letter case.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

DEFAULT_REFLECTION_PHRASES: tuple[str, ...] = (
    "wait",
    "hmm",
    "actually",
    "let me check",
    "let me verify",
    "let me recheck",
    "let me re-check",
    "let me double-check",
    "let's check",
    "let's verify",
    "double-check",
    "double check",
    "check again",
    "verify",
    "re-examine",
    "reconsider",
    "on second thought",
    "i made a mistake",
)


def completion_signals(
    completions: Sequence[str],
    lengths: Any,
    truncated: Any,
    reflection_phrases: Sequence[str] = DEFAULT_REFLECTION_PHRASES,
) -> dict[str, float]:
    """Metrics of one batch. `lengths` (tokens) and `truncated` are lists or 1-D tensors aligned with completions.

    completion/length_mean, length_p90 (linear interpolation between order statistics, as numpy's
    default), length_max, truncated_frac, reflection_rate (share of completions with at least one
    phrase) and reflections_per_completion (mean number of phrase occurrences).
    """
    lengths = [float(x) for x in _as_list(lengths)]
    truncated = [bool(x) for x in _as_list(truncated)]
    n = len(completions)
    if n == 0:
        raise ValueError("completion_signals needs at least one completion")
    if len(lengths) != n or len(truncated) != n:
        raise ValueError(f"{n} completions but {len(lengths)} lengths and {len(truncated)} truncated flags")
    pattern = _phrase_pattern(tuple(reflection_phrases))
    reflections = [len(pattern.findall(text)) if pattern else 0 for text in completions]
    return {
        "completion/length_mean": sum(lengths) / n,
        "completion/length_p90": _quantile(lengths, 0.9),
        "completion/length_max": max(lengths),
        "completion/truncated_frac": sum(truncated) / n,
        "completion/reflection_rate": sum(count > 0 for count in reflections) / n,
        "completion/reflections_per_completion": sum(reflections) / n,
    }


def _as_list(values: Any) -> list:
    return values.tolist() if hasattr(values, "tolist") else list(values)


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@lru_cache(maxsize=16)
def _phrase_pattern(phrases: tuple[str, ...]) -> re.Pattern | None:
    phrases = tuple(p.strip() for p in phrases if p.strip())
    if not phrases:
        return None
    alternatives = "|".join(re.escape(p) for p in sorted(phrases, key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)
