"""The built-in Countdown task: reach a target from a few numbers with + - * /, each number at most once.

Every problem is made by building a random expression over its numbers first, so a solution is
guaranteed to exist (it is kept in the record's "solution"; rewards ignore it). Intermediate values
stay positive integers, as in the game. Scored by the "countdown" reward.
"""

from __future__ import annotations

import random

DEFAULT_TEMPLATE = (
    "Using the numbers {numbers}, write an equation that equals {target}. You may use + - * / and "
    "parentheses, and each number at most once. Think inside <think> </think> tags, then give only the "
    "equation inside <answer> </answer> tags, for example <answer>(1 + 2) * 3</answer>."
)
_MAX_TRIES_PER_PROBLEM = 1000


def make_countdown_problems(
    n: int,
    num_numbers: int = 3,
    seed: int = 0,
    *,
    max_number: int = 20,
    max_target: int = 100,
    prompt_template: str = DEFAULT_TEMPLATE,
) -> list[dict]:
    """`n` records {"prompt", "numbers", "target", "solution"}, reproducible from `seed`.

    Numbers are drawn from 1..max_number; targets lie in 1..max_target. The template's "{numbers}"
    becomes "3, 5, 7" and "{target}" the target.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 2 <= num_numbers <= 6:
        raise ValueError(f"num_numbers must be between 2 and 6, got {num_numbers}")
    if max_number < 1 or max_target < 1:
        raise ValueError("max_number and max_target must be >= 1")
    if "{numbers}" not in prompt_template or "{target}" not in prompt_template:
        raise ValueError("prompt_template must contain '{numbers}' and '{target}'")
    rng = random.Random(seed)
    problems = []
    for _ in range(n):
        for _ in range(_MAX_TRIES_PER_PROBLEM):
            numbers = [rng.randint(1, max_number) for _ in range(num_numbers)]
            target, solution = _random_expression(numbers, rng)
            if 1 <= target <= max_target:
                break
        else:
            raise ValueError(f"no target within 1..{max_target} found; raise max_target or lower max_number")
        prompt = prompt_template.replace("{numbers}", ", ".join(map(str, numbers))).replace(
            "{target}", str(target)
        )
        problems.append({"prompt": prompt, "numbers": numbers, "target": target, "solution": solution})
    return problems


def _random_expression(numbers: list[int], rng: random.Random) -> tuple[int, str]:
    """Combine all numbers pairwise in random order with random allowed operations -> (value, expression)."""
    pool = [(value, str(value)) for value in numbers]
    while len(pool) > 1:
        (a, a_text), (b, b_text) = (pool.pop(rng.randrange(len(pool))) for _ in range(2))
        choices = [(a + b, f"{a_text} + {b_text}"), (a * b, f"{a_text} * {b_text}")]
        if a > b:
            choices.append((a - b, f"{a_text} - {b_text}"))
        if b > 1 and a % b == 0:
            choices.append((a // b, f"{a_text} / {b_text}"))
        value, text = rng.choice(choices)
        pool.append((value, f"({text})"))  # every combination is parenthesised, so precedence never matters
    value, text = pool[0]
    return value, text[1:-1]  # drop the parentheses around the last combination
