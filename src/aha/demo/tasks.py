"""The demo's built-in tasks: addition problems, their gold checker, and the teachers that write demonstrations.

Two teachers, one per lesson of the article:
- `CarryForgettingTeacher` (part 1) answers 2-digit additions but forgets the carry most of the time, so
  imitating it caps accuracy below the truth while the right answer still occurs in its data.
- `ScratchpadTeacher` (part 2) is always right but only sometimes shows its work: a column-by-column
  scratchpad (units first, carries written out) before the answer. Direct answers are harder for a tiny
  model to get right, so a correctness reward alone should push the policy toward the scratchpad.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from aha.rewards.base import RewardScores

# A scratchpad completion looks like "[15,12,08]825" for 358+467: the column sums, units first (8+7=15,
# 5+6+1=12, 3+4+1=08), in brackets; the final answer follows the last ANSWER_MARK. The opening bracket is
# the model's one-token decision to "think first", like R1's <think>.
SCRATCHPAD_OPEN = "["
STEP_SEPARATOR = ","
ANSWER_MARK = "]"


@dataclass(frozen=True)
class AdditionProblem:
    a: int
    b: int

    @property
    def prompt(self) -> str:
        return f"{self.a}+{self.b}="

    @property
    def answer(self) -> str:
        return str(self.a + self.b)

    @property
    def has_units_carry(self) -> bool:
        return self.a % 10 + self.b % 10 >= 10


def split_problems(
    digits: int, n_heldout: int, n_train: int | None, seed: int
) -> tuple[list[AdditionProblem], list[AdditionProblem]]:
    """Disjoint (train, held-out) sets of `digits`-digit additions, drawn without replacement.

    Held-out problems are never shown to SFT or GRPO: the demo's accuracy table is on problems the model
    has never trained on. `n_train=None` takes every remaining problem (only sensible for 2 digits).
    """
    low, high = 10 ** (digits - 1), 10**digits
    n_all = (high - low) ** 2
    wanted = n_heldout + (n_all - n_heldout if n_train is None else n_train)
    if wanted > n_all:
        raise ValueError(f"asked for {wanted} distinct {digits}-digit problems but only {n_all} exist")
    rng = random.Random(seed)
    indices = rng.sample(range(n_all), wanted)
    width = high - low
    problems = [AdditionProblem(low + i // width, low + i % width) for i in indices]
    return problems[n_heldout:], problems[:n_heldout]


def is_correct(completion: str, answer: str) -> bool:
    """The gold checker: the text after the last ANSWER_MARK (or the whole completion) equals the answer."""
    return final_answer(completion) == answer


def final_answer(completion: str) -> str:
    return completion.rsplit(ANSWER_MARK, 1)[-1].strip()


def uses_scratchpad(completion: str) -> bool:
    return completion.startswith(SCRATCHPAD_OPEN)


@dataclass(frozen=True)
class CarryForgettingTeacher:
    """Adds correctly, except that on problems with a units carry it drops the carry with `forget_prob`.

    Forgetting the carry from the units into the tens gives exactly a + b - 10 (58+67 -> 115). With
    forget_prob < 1 the right answer still occurs in the demonstrations, so RL can find and amplify it;
    with forget_prob == 1 it never does (the demo's honest limit).
    """

    forget_prob: float = 0.75

    def complete(self, problem: AdditionProblem, rng: random.Random) -> str:
        if problem.has_units_carry and rng.random() < self.forget_prob:
            return str(problem.a + problem.b - 10)
        return problem.answer

    def expected_accuracy(self, problems: list[AdditionProblem]) -> float:
        """Exact accuracy of the (random) teacher on `problems`: 1 - forget_prob on carry problems."""
        correct = sum(1.0 - self.forget_prob if p.has_units_carry else 1.0 for p in problems)
        return correct / len(problems)


def scratchpad(problem: AdditionProblem) -> str:
    """The column sums, units first, carries included, two digits each: "15,12,08" for 358+467.

    Fixed-width steps keep every step at the same offset, which a tiny model learns far more easily than
    variable-length working; each step only adds two prompt digits and the carry just written.
    """
    a, b, carry, sums = problem.a, problem.b, 0, []
    while a or b:
        total = a % 10 + b % 10 + carry
        sums.append(f"{total:02d}")
        carry, a, b = total // 10, a // 10, b // 10
    return STEP_SEPARATOR.join(sums)


@dataclass(frozen=True)
class ScratchpadTeacher:
    """Always right; writes the scratchpad before the answer with `scratchpad_prob`, else answers directly."""

    scratchpad_prob: float = 0.25

    def complete(self, problem: AdditionProblem, rng: random.Random) -> str:
        if rng.random() < self.scratchpad_prob:
            return f"{SCRATCHPAD_OPEN}{scratchpad(problem)}{ANSWER_MARK}{problem.answer}"
        return problem.answer

    def expected_accuracy(self, problems: list[AdditionProblem]) -> float:
        return 1.0


def gold_answer(prompts: list[str], completions: list[str], answer: list[str], **kwargs) -> RewardScores:
    """The gold checker as a reward (1.0 right, 0.0 wrong); also logs the share of scratchpad completions."""
    scores = [1.0 if is_correct(c, str(a)) else 0.0 for c, a in zip(completions, answer, strict=True)]
    share = sum(map(uses_scratchpad, completions)) / max(1, len(completions))
    return RewardScores(scores, {"scratchpad_share": share})
