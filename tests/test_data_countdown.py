"""The countdown task generator: reproducible, in range, and every problem has a solution the reward accepts."""

from __future__ import annotations

import pytest

from aha.data.countdown import make_countdown_problems
from aha.rewards.countdown import CountdownReward, evaluate_expression


@pytest.mark.parametrize("num_numbers", [3, 4])
def test_every_problem_is_solvable_by_its_own_solution(num_numbers):
    problems = make_countdown_problems(200, num_numbers=num_numbers, seed=1)
    reward = CountdownReward(require_all_numbers=True)
    scores = reward(
        [p["prompt"] for p in problems],
        [f"<answer>{p['solution']}</answer>" for p in problems],
        numbers=[p["numbers"] for p in problems],
        target=[p["target"] for p in problems],
    )
    assert list(scores) == [1.0] * 200
    for p in problems:
        assert len(p["numbers"]) == num_numbers and all(1 <= n <= 20 for n in p["numbers"])
        assert 1 <= p["target"] <= 100 and isinstance(p["target"], int)
        assert evaluate_expression(p["solution"])[0] == p["target"]


def test_seeded_and_reproducible():
    assert make_countdown_problems(20, seed=3) == make_countdown_problems(20, seed=3)
    assert make_countdown_problems(20, seed=3) != make_countdown_problems(20, seed=4)


def test_prompt_names_numbers_and_target():
    problem = make_countdown_problems(1, seed=0, prompt_template="{numbers} -> {target}:")[0]
    assert problem["prompt"] == f"{', '.join(map(str, problem['numbers']))} -> {problem['target']}:"
    default = make_countdown_problems(1, seed=0)[0]["prompt"]
    assert "<answer>" in default and str(make_countdown_problems(1, seed=0)[0]["target"]) in default


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_numbers": 1}, "num_numbers must be between 2 and 6"),
        ({"num_numbers": 7}, "num_numbers must be between 2 and 6"),
        ({"max_number": 0}, "must be >= 1"),
        ({"prompt_template": "{numbers} only"}, "must contain"),
        ({"max_number": 1000, "max_target": 1, "num_numbers": 2}, "no target within 1..1"),
    ],
)
def test_bad_settings_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_countdown_problems(5, **kwargs)
