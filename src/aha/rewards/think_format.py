"""Format rewards for <think>...</think><answer>...</answer> completions (R1-Zero's template), strict and lenient.

strict (1.0 or 0.0): after stripping whitespace the completion is exactly one think block followed by
one answer block, with only whitespace between them, both non-empty, and no tag repeated.
lenient (1.0 or 0.0): a think block and then a non-empty answer block appear somewhere, in that
order, tags in any letter case; other text before, between and after is allowed.

When the prompt itself ends with the opening think tag (templates that start the model thinking),
the completion is read as if it began with that tag. Tags are configurable (`with_options`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from aha.rewards.base import register_reward


@dataclass(frozen=True)
class ThinkAnswerFormat:
    think_tags: tuple[str, str] = ("<think>", "</think>")
    answer_tags: tuple[str, str] = ("<answer>", "</answer>")
    strict: bool = True

    def __post_init__(self) -> None:
        for name in ("think_tags", "answer_tags"):
            tags = getattr(self, name)
            if len(tags) != 2 or not all(isinstance(t, str) and t.strip() for t in tags):
                raise ValueError(f"{name} must be two non-empty strings, got {tags!r}")
            object.__setattr__(self, name, tuple(tags))  # YAML gives a list

    def with_options(self, **options: Any) -> ThinkAnswerFormat:
        known = {f.name for f in fields(self)}
        if unknown := set(options) - known:
            raise TypeError(f"unknown options {sorted(unknown)}; options: {', '.join(sorted(known))}")
        return replace(self, **options)

    def __call__(self, prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
        check = self.is_strict_format if self.strict else self.is_lenient_format
        return [
            1.0 if check(self._as_written(p, c)) else 0.0 for p, c in zip(prompts, completions, strict=True)
        ]

    def is_strict_format(self, text: str) -> bool:
        (think_open, think_close), (answer_open, answer_close) = self.think_tags, self.answer_tags
        text = text.strip()
        if any(text.count(tag) != 1 for tag in (think_open, think_close, answer_open, answer_close)):
            return False
        if not (text.startswith(think_open) and text.endswith(answer_close)):
            return False
        think_end, answer_start = text.find(think_close), text.find(answer_open)
        if not len(think_open) <= think_end < answer_start:
            return False
        thought = text[len(think_open) : think_end]
        answer = text[answer_start + len(answer_open) : len(text) - len(answer_close)]
        between = text[think_end + len(think_close) : answer_start]
        return bool(thought.strip()) and bool(answer.strip()) and not between.strip()

    def is_lenient_format(self, text: str) -> bool:
        lowered = text.lower()
        position = 0
        blocks = []
        for opening, closing in (self.think_tags, self.answer_tags):
            start = lowered.find(opening.lower(), position)
            if start < 0:
                return False
            end = lowered.find(closing.lower(), start + len(opening))
            if end < 0:
                return False
            blocks.append(text[start + len(opening) : end])
            position = end + len(closing)
        return bool(blocks[1].strip())

    def _as_written(self, prompt: str, completion: str) -> str:
        opening = self.think_tags[0]
        if prompt.rstrip().endswith(opening) and not completion.lstrip().startswith(opening):
            return opening + completion
        return completion


format_think_answer = register_reward("format_think_answer")(ThinkAnswerFormat(strict=True))
format_think_answer_lenient = register_reward("format_think_answer_lenient")(ThinkAnswerFormat(strict=False))
