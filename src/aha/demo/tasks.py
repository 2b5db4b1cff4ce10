"""The demo's built-in tasks: addition and parity problems, their gold checker, and the teachers.

Two teachers, one per lesson of the article:
- `CarryForgettingTeacher` (part 1) answers 2-digit additions but forgets the carry most of the time, so
  imitating it caps accuracy below the truth while the right answer still occurs in its data.
- `ScratchpadTeacher` (part 2) is always right but only sometimes shows its work. On the parity of a
  16-bit string it writes the running parity, bit by bit, ending on the answer. The direct answer needs the
  whole chain in one forward pass, which the tiny model does not learn (bench/demo_cot_capacity.py); each
  step of the working is a one-bit update it learns at once. So thinking pays by construction, and a
  correctness reward alone should push the policy toward the scratchpad.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from aha.rewards.base import RewardScores

# A scratchpad completion looks like "[0111]" for the bits 0100: the parity after each bit, in brackets.
# The working ends on the answer: its last state, just before the closing bracket, is the parity of the
# whole string. The opening bracket is the model's one-token decision to "think first", like R1's
# <think>. (Repeating the last state after the bracket, as an answer of its own, asks the model for one
# more skill, copying the token before the bracket, which one seed in five had not learned after 560 SFT
# steps though its working was right: the answer then was a guess.)
SCRATCHPAD_OPEN = "["
SCRATCHPAD_CLOSE = "]"


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
    """The gold checker: the completion's final answer (see final_answer) equals the answer."""
    return final_answer(completion) == answer


def final_answer(completion: str) -> str:
    """The whole completion, or for a closed scratchpad `[...]` its last state ("" if it is not closed)."""
    text = completion.strip()
    if not uses_scratchpad(text):
        return text
    return text[-2] if len(text) > 2 and text.endswith(SCRATCHPAD_CLOSE) else ""


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


@dataclass(frozen=True)
class ParityProblem:
    """Is the number of ones in a bit string odd? `0110100=` -> `1`."""

    bits: str

    @property
    def prompt(self) -> str:
        return f"{self.bits}="

    @property
    def answer(self) -> str:
        return str(self.bits.count("1") % 2)

    @property
    def working(self) -> str:
        """The running parity after each bit ("0111" for 0100): each step XORs one bit into the last."""
        states, parity = [], 0
        for bit in self.bits:
            parity ^= bit == "1"
            states.append(str(parity))
        return "".join(states)


def split_parity_problems(
    n_bits: int, n_heldout: int, n_train: int | None, seed: int
) -> tuple[list[ParityProblem], list[ParityProblem]]:
    """Disjoint (train, held-out) sets of `n_bits`-bit strings, drawn without replacement (as split_problems)."""
    n_all = 2**n_bits
    wanted = n_heldout + (n_all - n_heldout if n_train is None else n_train)
    if wanted > n_all:
        raise ValueError(f"asked for {wanted} distinct {n_bits}-bit strings but only {n_all} exist")
    indices = random.Random(seed).sample(range(n_all), wanted)
    problems = [ParityProblem(format(i, f"0{n_bits}b")) for i in indices]
    return problems[n_heldout:], problems[:n_heldout]


@dataclass(frozen=True)
class ScratchpadTeacher:
    """Always right; writes the scratchpad before the answer with `scratchpad_prob`, else answers directly."""

    scratchpad_prob: float = 0.25

    def complete(self, problem: ParityProblem, rng: random.Random) -> str:
        if rng.random() < self.scratchpad_prob:
            return f"{SCRATCHPAD_OPEN}{problem.working}{SCRATCHPAD_CLOSE}"
        return problem.answer

    def expected_accuracy(self, problems: list[AdditionProblem]) -> float:
        return 1.0


def gold_answer(prompts: list[str], completions: list[str], answer: list[str], **kwargs) -> RewardScores:
    """The gold checker as a reward (1.0 right, 0.0 wrong); also logs the share of scratchpad completions."""
    scores = [1.0 if is_correct(c, str(a)) else 0.0 for c, a in zip(completions, answer, strict=True)]
    share = sum(map(uses_scratchpad, completions)) / max(1, len(completions))
    return RewardScores(scores, {"scratchpad_share": share})
