"""Reward functions used by tests through the 'package.module:function' import path."""


def digit_fraction(prompts, completions, **fields):
    """Fraction of completion characters that are digits: learnable from a random tiny model."""
    return [sum(c.isdigit() for c in text) / max(len(text), 1) for text in completions]
