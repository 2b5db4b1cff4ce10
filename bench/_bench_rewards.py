"""Reward functions both tools call, by the same import path, with the same (prompts, completions, **fields)."""

from __future__ import annotations


def digit_fraction(prompts: list[str], completions: list[str], **fields) -> list[float]:
    """Share of completion characters that are digits: cheap, length-independent and not constant, so
    group advantages are non-zero and every update is a real one."""
    return [sum(c.isdigit() for c in text) / max(len(text), 1) for text in completions]
