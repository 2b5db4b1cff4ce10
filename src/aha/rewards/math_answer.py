"""Math answer rewards: 1.0 if the completion's final answer equals the gold answer mathematically, else 0.0.

Pipeline per completion: extract the answer (aha.rewards.math_extract) -> normalise it and the gold
(aha.rewards.math_normalize) -> compare (aha.rewards.math_equivalence: exact for plain numbers,
math-verify under a hard time limit otherwise).

Nothing fails silently. A gold answer that does not parse raises (or, with bad_gold="skip", scores
None and is counted); answers that cannot be found, are too long, do not parse, or time out score 0.0
and are counted in the metrics (`reward/<name>/no_answer`, `bad_answer`, `timeouts`, `crashes`), with
the completion logged at DEBUG (WARNING for timeouts and crashes).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, fields, replace
from typing import Any

from aha.rewards import math_equivalence as eq
from aha.rewards.base import RewardScores, register_reward
from aha.rewards.math_extract import DEFAULT_ANSWER_TAGS, METHODS, extract_answer
from aha.rewards.math_normalize import normalize_answer

logger = logging.getLogger(__name__)


class BadGoldAnswer(ValueError):
    """A gold answer that cannot be parsed: fix the data (or configure bad_gold="skip")."""


@dataclass(frozen=True)
class MathAnswerReward:
    """Configurable math-answer reward; `with_options(...)` (or a config's `options:`) changes any field."""

    answer_field: str = "answer"  # the dataset column holding the gold answer
    answer_tags: tuple[str, str] | None = DEFAULT_ANSWER_TAGS  # None: do not look for tags
    marker: str | None = "####"  # "#### 42" in a completion gives the answer 42; None: off
    fallback_last_number: bool = False  # no other rule found an answer: use the last number written
    gold_marker: str | None = None  # gold holds a worked solution: take what follows the last marker
    bad_gold: str = "raise"  # "raise" or "skip" (score None, counted in reward/<name>/bad_gold)
    timeout_s: float = 2.0  # per comparison; the hard limit is this plus time_limit.GRACE_S
    max_answer_chars: int = 256  # longer extracted answers are rejected (bad_answer) without parsing
    check_workers: int = 0  # math-verify child processes checking in parallel; 0: min(4, CPU count)

    def __post_init__(self) -> None:
        if self.answer_tags is not None:
            if len(self.answer_tags) != 2 or not all(isinstance(t, str) and t for t in self.answer_tags):
                raise ValueError(f"answer_tags must be two non-empty strings, got {self.answer_tags!r}")
            object.__setattr__(self, "answer_tags", tuple(self.answer_tags))  # YAML gives a list
        if self.bad_gold not in ("raise", "skip"):
            raise ValueError(f"bad_gold must be 'raise' or 'skip', got {self.bad_gold!r}")
        if not self.timeout_s > 0 or self.max_answer_chars < 1 or self.check_workers < 0:
            raise ValueError("timeout_s must be > 0, max_answer_chars >= 1 and check_workers >= 0")

    def with_options(self, **options: Any) -> MathAnswerReward:
        known = {f.name for f in fields(self)}
        if unknown := set(options) - known:
            raise TypeError(f"unknown options {sorted(unknown)}; options: {', '.join(sorted(known))}")
        return replace(self, **options)

    def __call__(self, prompts: list[str], completions: list[str], **columns: Any) -> RewardScores:
        if self.answer_field not in columns:
            raise KeyError(
                f"math answer reward needs the gold answer in dataset field {self.answer_field!r}; "
                f"fields given: {sorted(columns)}"
            )
        counts: Counter[str] = Counter()
        golds = self._gold_texts(columns[self.answer_field], counts)
        answers = [
            self._answer(i, c, g, counts) for i, (c, g) in enumerate(zip(completions, golds, strict=True))
        ]
        # A group often repeats an answer: each distinct (gold, answer) is checked once, all in parallel.
        pairs = sorted(
            {(g, a) for g, a in zip(golds, answers, strict=True) if g is not None and a is not None}
        )
        verdicts = dict(zip(pairs, eq.check_many(pairs, self.timeout_s, self.check_workers), strict=True))
        scores = [
            None
            if gold is None
            else 0.0
            if answer is None
            else self._score(i, answer, verdicts[gold, answer], counts)
            for i, (gold, answer) in enumerate(zip(golds, answers, strict=True))
        ]
        metrics = {
            key: float(counts[key]) for key in ("no_answer", "bad_answer", "timeouts", "crashes", "bad_gold")
        }
        metrics.update({f"method/{method}": float(counts[method]) for method in METHODS})
        return RewardScores(scores, metrics)

    def gold_text(self, gold: Any) -> str:
        """The normalised gold answer; raises BadGoldAnswer if there is none to compare against."""
        normalised = self._normalised_gold(gold)
        self._raise_unless_parsed(gold, eq.check_gold(normalised, self.timeout_s))
        return normalised

    def _normalised_gold(self, gold: Any) -> str:
        if isinstance(gold, bool) or not isinstance(gold, (str, int, float)):
            raise BadGoldAnswer(f"gold answer must be a string or a number, got {gold!r}")
        text = str(gold)
        if self.gold_marker and self.gold_marker in text:
            text = text.rpartition(self.gold_marker)[2]
        normalised = normalize_answer(text)
        if not normalised:
            raise BadGoldAnswer(f"gold answer {gold!r} is empty")
        return normalised

    @staticmethod
    def _raise_unless_parsed(gold: Any, verdict: str) -> None:
        if verdict != eq.CORRECT:
            raise BadGoldAnswer(f"gold answer {gold!r} cannot be parsed ({verdict})")

    def _gold_texts(self, golds: list[Any], counts: Counter[str]) -> list[str | None]:
        """Each sample's normalised gold, None where it is skipped (bad_gold="skip"); distinct golds are
        parsed once, in parallel."""
        normalised: dict[int, str] = {}
        errors: dict[int, BadGoldAnswer] = {}
        for i, gold in enumerate(golds):
            try:
                normalised[i] = self._normalised_gold(gold)
            except BadGoldAnswer as exc:
                errors[i] = exc
        distinct = sorted(set(normalised.values()))
        parsed = dict(
            zip(distinct, eq.check_golds(distinct, self.timeout_s, self.check_workers), strict=True)
        )
        texts: list[str | None] = []
        for i, gold in enumerate(golds):
            if i in normalised:
                try:
                    self._raise_unless_parsed(gold, parsed[normalised[i]])
                except BadGoldAnswer as exc:
                    errors[i] = exc
            if i in errors:
                if self.bad_gold == "raise":
                    raise BadGoldAnswer(f"sample {i}, field {self.answer_field!r}: {errors[i]}") from None
                counts["bad_gold"] += 1
                logger.warning("skipped sample %d: %s", i, errors[i])
            texts.append(None if i in errors else normalised[i])
        return texts

    def _answer(self, i: int, completion: str, gold: str | None, counts: Counter[str]) -> str | None:
        """The completion's normalised answer, or None (counted) when there is none worth checking."""
        if gold is None:
            return None
        found = extract_answer(
            completion,
            answer_tags=self.answer_tags,
            marker=self.marker,
            fallback_last_number=self.fallback_last_number,
        )
        if found is None:
            counts["no_answer"] += 1
            logger.debug("no answer found in completion %d: %.200r", i, completion)
            return None
        counts[found.method] += 1
        if len(found.text) > self.max_answer_chars:
            counts["bad_answer"] += 1
            logger.debug("answer of completion %d longer than %d chars", i, self.max_answer_chars)
            return None
        answer = normalize_answer(found.text)
        if not answer:
            counts["no_answer"] += 1
            return None
        return answer

    @staticmethod
    def _score(i: int, answer: str, verdict: str, counts: Counter[str]) -> float:
        if verdict == eq.CORRECT:
            return 1.0
        if verdict == eq.BAD_ANSWER:
            counts["bad_answer"] += 1
            logger.debug("answer %.200r of completion %d does not parse", answer, i)
        elif verdict in (eq.TIMEOUT, eq.CRASH):
            counts["timeouts" if verdict == eq.TIMEOUT else "crashes"] += 1
            logger.warning("math checker %s on answer %.200r (completion %d); scored 0", verdict, answer, i)
        return 0.0


math_answer = register_reward("math_answer")(MathAnswerReward())
# GSM8K: gold is the final number (or a whole worked solution ending in "#### 42", as in the raw
# files); models often end with the bare number, so the last-number fallback is on.
gsm8k = register_reward("gsm8k")(MathAnswerReward(gold_marker="####", fallback_last_number=True))
