"""Accuracy estimators over n samples per prompt: pure functions of which samples were correct.

pass@k is the chance that at least one of k samples drawn without replacement from the n is correct,
1 - C(n-c, k) / C(n, k) for c correct (Chen et al. 2021, "Evaluating Large Language Models Trained on
Code"): unbiased, unlike 1 - (1 - c/n)^k, and computed here in exact integer arithmetic.
maj@n (self-consistency, R1's cons@64) takes the answer most samples agree on and asks whether it is right.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence
from math import comb


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one prompt with `c` of `n` samples correct."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    return 1.0 - comb(n - c, k) / comb(n, k)


def mean_pass_at_k(correct_per_prompt: Sequence[int], n: int, k: int) -> float:
    """pass@k averaged over prompts, each with `correct_per_prompt[i]` of its `n` samples correct."""
    if not correct_per_prompt:
        raise ValueError("mean_pass_at_k needs at least one prompt")
    return sum(pass_at_k(n, c, k) for c in correct_per_prompt) / len(correct_per_prompt)


def majority_vote_correct(answers: Sequence[Hashable | None], correct: Sequence[bool]) -> bool:
    """Whether the answer most samples gave is right. `answers[i]` is sample i's final answer (None: it
    gave none, and does not vote); ties go to the answer given first. The voted answer is judged as the
    first sample that gave it was judged. No answer at all: wrong."""
    if len(answers) != len(correct):
        raise ValueError(f"{len(answers)} answers but {len(correct)} correctness flags")
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return False
    most = max(votes.values())
    winner = next(a for a in answers if a is not None and votes[a] == most)  # the first of the tied
    return bool(correct[answers.index(winner)])


def default_ks(n: int) -> list[int]:
    """1, the powers of two below n, and n: the k a pass@k curve is usually drawn at."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return [*ks, n]
