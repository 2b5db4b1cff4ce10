"""What a sample answered, for the majority vote (`eval.vote`): samples that agree share a key."""

from __future__ import annotations

from aha.rewards.math_extract import extract_answer
from aha.rewards.math_normalize import normalize_answer


def answer_key(completion: str, mode: str) -> str | None:
    """The sample's answer under `mode` (aha.evaluation.config.VOTE_MODES), or None when it gave none.

    text: the stripped completion (short-answer tasks such as the built-in arithmetic); math: the final
    answer as the math rewards extract and normalise it, so "#### 18" and "\\boxed{18}" agree (answers
    equal only mathematically, 0.5 and 1/2, stay apart: the vote compares strings)."""
    if mode == "text":
        return completion.strip() or None
    if mode == "math":
        found = extract_answer(completion, fallback_last_number=True)
        if found is None:
            return None
        return normalize_answer(found.text) or None
    raise ValueError(f"vote mode {mode!r} has no answer key (text or math)")
