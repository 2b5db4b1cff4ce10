"""exact_answer: the stripped completion equals the gold answer."""

from __future__ import annotations

import pytest

from aha.rewards import BUILTIN_REWARDS

exact_answer = BUILTIN_REWARDS["exact_answer"]


def test_exact_match_after_stripping_whitespace():
    completions = ["46", " 46\n", "046", "46.", "4 6"]
    assert exact_answer(["12+34="] * 5, completions, answer=["46"] * 5) == [1.0, 1.0, 0.0, 0.0, 0.0]


def test_numeric_gold_is_compared_as_text():
    assert exact_answer(["p", "p"], ["46", "46.0"], answer=[46, 46]) == [1.0, 0.0]


def test_missing_gold_is_an_error_naming_the_sample():
    with pytest.raises(ValueError, match="sample 1 has no gold answer"):
        exact_answer(["p", "p"], ["1", "2"], answer=["1", None])
