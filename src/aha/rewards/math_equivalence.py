"""Are two normalised answer strings mathematically equal? Exact for plain numbers, math-verify otherwise.

Two plain decimal numbers (`18`, `18.00`, `-0.5`) are compared exactly, here, in microseconds: that is
all of GSM8K and most of a GSM8K run's checks. Everything else (fractions, radicals, intervals,
tuples, percentages, LaTeX) goes to math-verify in child processes under a hard time limit
(aha.rewards.time_limit), so a pathological answer costs at most that limit and can never hang or
crash training. `check_many` spreads a batch's checks over a pool of such children, so a group of
hard answers waits about (checks / workers) x their time instead of the sum. Each child caches
parsed gold answers, which repeat `group_size` times per batch.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections.abc import Sequence
from decimal import Decimal
from functools import lru_cache

from aha.rewards.math_normalize import is_plain_number
from aha.rewards.time_limit import TimeLimitedPool, TimeLimitExceeded, WorkerCrashed

# Verdicts of a check.
CORRECT = "correct"
WRONG = "wrong"
BAD_GOLD = "bad_gold"  # the gold answer does not parse: a data problem, never scored as correct
BAD_ANSWER = "bad_answer"  # the completion's answer does not parse
TIMEOUT = "timeout"  # the checker ran past its time limit
CRASH = "crash"  # the checker's process died (it is restarted for the next check)

DEFAULT_WORKERS = min(4, os.cpu_count() or 1)  # each child holds sympy (~100 MB); 4 cover a batch's hard tail
_pools: dict[int, TimeLimitedPool] = {}
_pools_lock = threading.Lock()


def check_equivalence(gold: str, answer: str, timeout_s: float = 2.0) -> str:
    """CORRECT, WRONG, BAD_GOLD (gold does not parse), BAD_ANSWER (answer does not parse), TIMEOUT or CRASH."""
    return check_many([(gold, answer)], timeout_s)[0]


def check_many(pairs: Sequence[tuple[str, str]], timeout_s: float = 2.0, workers: int = 0) -> list[str]:
    """`check_equivalence` for each (gold, answer) pair, the hard ones in parallel on `workers` children
    (0: DEFAULT_WORKERS)."""
    verdicts: list[str | None] = [_plain_verdict(gold, answer) for gold, answer in pairs]
    hard = [i for i, verdict in enumerate(verdicts) if verdict is None]
    checked = _call_children("verify_in_child", [pairs[i] for i in hard], timeout_s, workers)
    for i, verdict in zip(hard, checked, strict=True):
        verdicts[i] = verdict
    return verdicts  # type: ignore[return-value]  # every None was filled


def check_gold(gold: str, timeout_s: float = 2.0) -> str:
    """CORRECT if the gold answer parses to a mathematical object, else BAD_GOLD (or TIMEOUT / CRASH)."""
    return check_golds([gold], timeout_s)[0]


def check_golds(golds: Sequence[str], timeout_s: float = 2.0, workers: int = 0) -> list[str]:
    """`check_gold` for each gold answer, the non-numeric ones in parallel."""
    hard = [i for i, gold in enumerate(golds) if not is_plain_number(gold)]
    verdicts = [CORRECT] * len(golds)
    checked = _call_children("gold_in_child", [(golds[i],) for i in hard], timeout_s, workers)
    for i, verdict in zip(hard, checked, strict=True):
        verdicts[i] = verdict
    return verdicts


def shared_pool(workers: int = 0) -> TimeLimitedPool:
    """The math-verify children of this Python process (one pool per size), started on first use."""
    size = workers or DEFAULT_WORKERS
    with _pools_lock:
        if size not in _pools:
            _pools[size] = TimeLimitedPool(size, startup=(f"{__name__}:warm_up",))
            atexit.register(_pools[size].close)
        return _pools[size]


def _plain_verdict(gold: str, answer: str) -> str | None:
    if is_plain_number(gold) and is_plain_number(answer):
        return CORRECT if Decimal(gold) == Decimal(answer) else WRONG
    return None


def _call_children(function: str, args_list: list[tuple], timeout_s: float, workers: int) -> list[str]:
    if not args_list:
        return []
    outcomes = shared_pool(workers).map(f"{__name__}:{function}", args_list, timeout_s)
    verdicts = []
    for outcome in outcomes:
        if isinstance(outcome, TimeLimitExceeded):
            verdicts.append(TIMEOUT)
        elif isinstance(outcome, WorkerCrashed):
            verdicts.append(CRASH)
        elif isinstance(outcome, Exception):  # a bug in the child function itself: never a verdict
            raise outcome
        else:
            verdicts.append(outcome)
    return verdicts


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
