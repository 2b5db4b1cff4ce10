"""The built-in arithmetic task: prompts like "12+34=" whose gold answer is "46".

The tiny CPU model learns it in seconds, which makes it the smoke test of every RL stage. Completions
are scored by the "exact_answer" reward in aha.rewards (completion.strip() == fields["answer"]).
Subtraction keeps the first operand >= the second, so every answer is a non-negative integer.
"""

from __future__ import annotations

import operator
import random
import re
from collections.abc import Iterable

from aha.data.prompts import PromptExample

OPERATIONS = {"+": operator.add, "-": operator.sub, "*": operator.mul}
_PROBLEM = re.compile(r"^(\d+)([+\-*])(\d+)=$")


def make_arithmetic_problems(
    n: int,
    *,
    digits: int = 2,
    ops: Iterable[str] = ("+",),
    seed: int = 0,
    exclude: set[str] | None = None,
) -> list[PromptExample]:
    """`n` distinct problems with operands in [0, 10**digits), drawn with `seed`; prompts in `exclude` are
    never drawn (so a held-out set can be kept disjoint from training)."""
    ops = tuple(ops)
    if not ops or any(op not in OPERATIONS for op in ops):
        raise ValueError(f"ops must be a non-empty subset of {sorted(OPERATIONS)}, got {ops!r}")
    if digits < 1:
        raise ValueError(f"digits must be >= 1, got {digits}")
    exclude = exclude or set()
    available = _space_size(digits, ops) - sum(_in_space(p, digits, ops) for p in exclude)
    if n > available:
        raise ValueError(
            f"asked for {n} distinct {digits}-digit problems with ops {ops}, only {available} exist"
        )
    rng = random.Random(seed)
    high = 10**digits - 1
    seen: set[str] = set()
    problems = []
    while len(problems) < n:
        a, b, op = rng.randint(0, high), rng.randint(0, high), rng.choice(ops)
        if op == "-" and a < b:
            a, b = b, a
        prompt = f"{a}{op}{b}="
        if prompt in seen or prompt in exclude:
            continue
        seen.add(prompt)
        problems.append(PromptExample(prompt=prompt, fields={"answer": str(OPERATIONS[op](a, b))}))
    return problems


def split_train_eval(
    n_train: int, n_eval: int, *, seed: int = 0, exclude: set[str] | None = None, **kw
) -> tuple[list[PromptExample], list[PromptExample]]:
    """Disjoint (train, eval) sets. The eval set depends only on `seed` and `n_eval` (not on `n_train`),
    so runs with different training sizes are evaluated on the same problems."""
    exclude = set(exclude or ())
    held_out = make_arithmetic_problems(n_eval, seed=seed, exclude=exclude, **kw)
    train = make_arithmetic_problems(
        n_train, seed=seed + 1, exclude=exclude | {ex.prompt for ex in held_out}, **kw
    )
    return train, held_out


def _space_size(digits: int, ops: tuple[str, ...]) -> int:
    count = 10**digits
    return sum(count * (count + 1) // 2 if op == "-" else count * count for op in set(ops))


def _in_space(prompt: str, digits: int, ops: tuple[str, ...]) -> bool:
    match = _PROBLEM.match(prompt)
    if match is None:
        return False
    a, op, b = match.groups()
    canonical = str(int(a)) == a and str(int(b)) == b
    in_range = int(a) < 10**digits and int(b) < 10**digits
    return canonical and in_range and op in ops and (op != "-" or int(a) >= int(b))
