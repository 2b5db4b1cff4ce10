"""The demo's problems, gold checker, teachers and reward."""

from __future__ import annotations

import random

import pytest

from aha.demo.tasks import (
    AdditionProblem,
    CarryForgettingTeacher,
    ScratchpadTeacher,
    final_answer,
    gold_answer,
    is_correct,
    scratchpad,
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


def test_scratchpad_format_and_checker():
    # 358 + 467: units 8+7=15 (carry), tens 5+6+1=12 (carry), hundreds 3+4+1=08 -> 825.
    assert scratchpad(AdditionProblem(358, 467)) == "15,12,08"
    assert scratchpad(AdditionProblem(999, 111)) == "10,11,11"  # 9+1, 9+1+1, 9+1+1 -> 1110
    assert scratchpad(AdditionProblem(100, 200)) == "00,00,03"
    teacher = ScratchpadTeacher(scratchpad_prob=0.25)
    rng = random.Random(0)
    completions = [teacher.complete(AdditionProblem(358, 467), rng) for _ in range(4000)]
    assert set(completions) == {"825", "[15,12,08]825"}
    assert sum(map(uses_scratchpad, completions)) / 4000 == pytest.approx(0.25, abs=0.03)
    assert final_answer("[15,12,08]825") == "825"
    assert is_correct(" 825 ", "825") and is_correct("[05,02,08]825", "825")
    assert not is_correct("825]1", "825") and not is_correct("8255", "825")


def test_gold_answer_reward_scores_and_counts_scratchpads():
    scores = gold_answer(["1+2="] * 3, ["3", "[03]3", "4"], answer=["3", "3", "3"])
    assert list(scores) == [1.0, 1.0, 0.0]
    assert scores.metrics == {"scratchpad_share": pytest.approx(1 / 3)}
