"""Reward functions used by tests through the 'package.module:function' import path."""


def digit_fraction(prompts, completions, **fields):
    """Fraction of completion characters that are digits: learnable from a random tiny model."""
    return [sum(c.isdigit() for c in text) / max(len(text), 1) for text in completions]


def float32_overflow(prompts, completions, **fields):
    """1e39: a finite Python float, so the per-function checks pass, but beyond float32's largest
    (about 3.4e38), so the float32 total reward is inf."""
    return [1e39 for _ in completions]


def non_digit_fraction(prompts, completions, **fields):
    """1 - digit_fraction: falls exactly as digit_fraction rises (a monitor the watch must catch)."""
    return [1.0 - d for d in digit_fraction(prompts, completions)]
