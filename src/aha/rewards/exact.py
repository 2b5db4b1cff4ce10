"""The simplest verifiable reward: the completion, stripped, is exactly the gold answer (built-in arithmetic task)."""

from __future__ import annotations

from typing import Any

from aha.rewards.base import register_reward


@register_reward("exact_answer")
def exact_answer(prompts: list[str], completions: list[str], answer: list[Any], **kwargs: Any) -> list[float]:
    """1.0 if `completion.strip() == str(answer).strip()`, else 0.0. A missing (None) gold is an error."""
    scores = []
    for i, (completion, gold) in enumerate(zip(completions, answer, strict=True)):
        if gold is None:
            raise ValueError(f"sample {i} has no gold answer (field 'answer' is missing or null)")
        scores.append(1.0 if completion.strip() == str(gold).strip() else 0.0)
    return scores
