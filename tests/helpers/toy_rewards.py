"""Reward functions used by tests through the 'package.module:function' import path."""


def digit_fraction(prompts, completions, **fields):
    """Fraction of completion characters that are digits: learnable from a random tiny model."""
    return [sum(c.isdigit() for c in text) / max(len(text), 1) for text in completions]


def float32_overflow(prompts, completions, **fields):
    """1e39: a finite Python float, so the per-function checks pass, but beyond float32's largest
    (about 3.4e38), so the float32 total reward is inf."""
    return [1e39 for _ in completions]


def float32_overflow_in_training(prompts, completions, **fields):
    """float32_overflow on a training batch (each prompt repeated, one group per prompt), 1.0 on a
    held-out evaluation (each prompt once): the training guard alone meets the overflow."""
    training = len(set(prompts)) < len(prompts)
    return [1e39 if training else 1.0 for _ in completions]


def float32_overflow_held_out(prompts, completions, **fields):
    """The opposite: 1.0 on training batches, 1e39 on the held-out evaluation (each prompt once)."""
    training = len(set(prompts)) < len(prompts)
    return [1.0 if training else 1e39 for _ in completions]


def non_digit_fraction(prompts, completions, **fields):
    """1 - digit_fraction: falls exactly as digit_fraction rises (a monitor the watch must catch)."""
    return [1.0 - d for d in digit_fraction(prompts, completions)]


class SeenCount:
    """A reward with state, as a reward model's running normalisation has: each completion scores the
    number of completions scored so far (this batch included). Checkpoints keep the count."""

    def __init__(self) -> None:
        self.seen = 0

    def __call__(self, prompts, completions, **fields):
        self.seen += len(completions)
        return [float(self.seen)] * len(completions)

    def state_dict(self) -> dict:
        return {"seen": self.seen} if self.seen else {}

    def load_state_dict(self, state: dict) -> None:
        self.seen = state.get("seen", 0)
