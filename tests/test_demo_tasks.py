"""The demo's problems, gold checker, teachers and reward."""

from __future__ import annotations

import random

import pytest

from aha.demo.tasks import (
    AdditionProblem,
    CarryForgettingTeacher,
    ParityProblem,
    ScratchpadTeacher,
    final_answer,
    gold_answer,
    is_correct,
    split_parity_problems,
    split_problems,
    uses_scratchpad,
)


def test_split_is_disjoint_and_seeded():
    train, heldout = split_problems(2, 500, None, seed=0)
    assert len(heldout) == 500 and len(train) == 90 * 90 - 500  # every 2-digit pair is used once
    assert not set(train) & set(heldout)
    assert all(10 <= p.a <= 99 and 10 <= p.b <= 99 for p in train + heldout)
    assert split_problems(2, 500, None, seed=0) == (train, heldout)
    assert split_problems(2, 500, None, seed=1)[1] != heldout
    train3, heldout3 = split_problems(3, 50, 1000, seed=0)
    assert len(train3) == 1000 and not set(train3) & set(heldout3)
    with pytest.raises(ValueError, match="only 8100 exist"):
        split_problems(2, 500, 8000, seed=0)


def test_carry_forgetting_teacher():
    teacher = CarryForgettingTeacher(forget_prob=0.75)
    rng = random.Random(0)
    no_carry = AdditionProblem(12, 34)
    assert {teacher.complete(no_carry, rng) for _ in range(50)} == {"46"}
    carry = AdditionProblem(58, 67)  # 8 + 7 = 15 carries: 125, or 115 when the carry is forgotten
    answers = [teacher.complete(carry, rng) for _ in range(4000)]
    assert set(answers) == {"125", "115"}
    assert answers.count("125") / 4000 == pytest.approx(0.25, abs=0.03)
    never = CarryForgettingTeacher(forget_prob=1.0)
    assert {never.complete(carry, rng) for _ in range(50)} == {"115"}
    # Expected accuracy: 1 on the no-carry problem, 1 - 0.75 on the carry one -> (1 + 0.25) / 2.
    assert teacher.expected_accuracy([no_carry, carry]) == pytest.approx(0.625)


def test_parity_problem_and_its_running_parity():
    # 0100: ones so far 0, 1, 1, 1 -> parities 0, 1, 1, 1; the answer is the last one.
    problem = ParityProblem("0100")
    assert (problem.prompt, problem.answer, problem.working) == ("0100=", "1", "0111")
    both = ParityProblem("1101001000000001")  # five ones: odd
    assert both.answer == "1" and both.working == "1001110000000001"
    assert ParityProblem("0000").working == "0000" and ParityProblem("1111").answer == "0"


def test_parity_split_is_disjoint_seeded_and_bounded():
    train, heldout = split_parity_problems(16, 100, 2000, seed=0)
    assert len(train) == 2000 and len(heldout) == 100 and not set(train) & set(heldout)
    assert all(len(p.bits) == 16 and set(p.bits) <= {"0", "1"} for p in train + heldout)
    assert split_parity_problems(16, 100, 2000, seed=0) == (train, heldout)
    assert split_parity_problems(16, 100, 2000, seed=1)[1] != heldout
    assert len(split_parity_problems(4, 6, None, seed=0)[0]) == 10  # every 4-bit string used once
    with pytest.raises(ValueError, match="only 16 exist"):
        split_parity_problems(4, 6, 11, seed=0)


def test_scratchpad_teacher_and_checker():
    teacher = ScratchpadTeacher(scratchpad_prob=0.25)
    rng = random.Random(0)
    completions = [teacher.complete(ParityProblem("0100"), rng) for _ in range(4000)]
    assert set(completions) == {"1", "[0111]"}
    assert sum(map(uses_scratchpad, completions)) / 4000 == pytest.approx(0.25, abs=0.03)
    # The working ends on the answer: a closed scratchpad's last state; else the whole completion.
    assert final_answer("[0111]") == "1" and final_answer(" [0110] ") == "0" and final_answer("125") == "125"
    assert is_correct(" 825 ", "825") and is_correct("[0110]", "0") and is_correct("[1]", "1")
    assert not is_correct("[0111", "1")  # not closed (cut off): no answer
    assert not is_correct("[0111]1", "1") and not is_correct("11", "1") and final_answer("[]") == ""


def test_gold_answer_reward_scores_and_counts_scratchpads():
    scores = gold_answer(["0011="] * 3, ["0", "[0010]", "1"], answer=["0", "0", "0"])
    assert list(scores) == [1.0, 1.0, 0.0]
    assert scores.metrics == {"scratchpad_share": pytest.approx(1 / 3)}
