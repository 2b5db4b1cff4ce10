"""Are two normalised answer strings mathematically equal? Exact for plain numbers, math-verify otherwise.

Two plain decimal numbers (`18`, `18.00`, `-0.5`) are compared exactly, here, in microseconds: that is
all of GSM8K and most of a GSM8K run's checks. Everything else (fractions, radicals, intervals,
tuples, percentages, LaTeX) goes to math-verify in a child process under a hard time limit
(aha.rewards.time_limit), so a pathological answer costs at most that limit and can never hang or
crash training. The child caches parsed gold answers, which repeat `group_size` times per batch.
"""

from __future__ import annotations

import atexit
import logging
import threading
from decimal import Decimal
from functools import lru_cache

from aha.rewards.math_normalize import is_plain_number
from aha.rewards.time_limit import TimeLimitedWorker, TimeLimitExceeded, WorkerCrashed

# Verdicts of a check.
CORRECT = "correct"
WRONG = "wrong"
BAD_GOLD = "bad_gold"  # the gold answer does not parse: a data problem, never scored as correct
BAD_ANSWER = "bad_answer"  # the completion's answer does not parse
TIMEOUT = "timeout"  # the checker ran past its time limit
CRASH = "crash"  # the checker's process died (it is restarted for the next check)

_worker: TimeLimitedWorker | None = None
_worker_lock = threading.Lock()


def check_equivalence(gold: str, answer: str, timeout_s: float = 2.0) -> str:
    """CORRECT, WRONG, BAD_GOLD (gold does not parse), BAD_ANSWER (answer does not parse), TIMEOUT or CRASH."""
    if is_plain_number(gold) and is_plain_number(answer):
        return CORRECT if Decimal(gold) == Decimal(answer) else WRONG
    return _call_child("verify_in_child", (gold, answer), timeout_s)


def check_gold(gold: str, timeout_s: float = 2.0) -> str:
    """CORRECT if the gold answer parses to a mathematical object, else BAD_GOLD (or TIMEOUT / CRASH)."""
    if is_plain_number(gold):
        return CORRECT
    return _call_child("gold_in_child", (gold,), timeout_s)


def shared_worker() -> TimeLimitedWorker:
    """The one math-verify child process of this Python process, started on first use."""
    global _worker
    with _worker_lock:
        if _worker is None:
            _worker = TimeLimitedWorker(startup=(f"{__name__}:warm_up",))
            atexit.register(_worker.close)
        return _worker


def _call_child(function: str, args: tuple, timeout_s: float) -> str:
    try:
        return shared_worker().call(f"{__name__}:{function}", args, timeout_s)
    except TimeLimitExceeded:
        return TIMEOUT
    except WorkerCrashed:
        return CRASH


# ------------------------------------------------------------------------------- run in the child


def warm_up() -> None:
    """Import math-verify and compile its regexes once, before the first timed call."""
    for name in ("math_verify", "latex2sympy2_extended"):
        # Its "timeout disabled" warning is expected: the child's own timer replaces that timeout.
        logging.getLogger(name).setLevel(logging.ERROR)
    verify_in_child("\\frac{1}{2}", "0.5")


def gold_in_child(gold: str) -> str:
    return CORRECT if _has_math(_parse_gold(gold)) else BAD_GOLD


def verify_in_child(gold: str, answer: str) -> str:
    from math_verify import verify

    gold_parsed = _parse_gold(gold)
    if not _has_math(gold_parsed):
        return BAD_GOLD
    answer_parsed = _parse(answer)
    if not answer_parsed:
        return BAD_ANSWER
    # No math-verify timeout (it would replace the child's own SIGALRM timer); strings compare too.
    if verify(list(gold_parsed), answer_parsed, timeout_seconds=None):
        return CORRECT
    return WRONG if _has_math(answer_parsed) else BAD_ANSWER


@lru_cache(maxsize=4096)
def _parse_gold(gold: str) -> tuple:
    return tuple(_parse(gold))


def _parse(text: str) -> list:
    """Parsed values (sympy objects), then the extracted string as a fallback for textual answers."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    source = text if "$" in text else f"${text}$"  # delimiters make math-verify read it as LaTeX
    try:
        return parse(
            source,
            extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()],
            fallback_mode="first_match",
            parsing_timeout=None,
        )
    except Exception:
        return []


def _has_math(parsed) -> bool:
    return any(not isinstance(value, str) for value in parsed)
