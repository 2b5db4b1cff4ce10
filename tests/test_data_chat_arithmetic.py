"""The chat addition prompts of the real-model recipe: every pair once, disjoint splits, correct sums."""

from __future__ import annotations

import pytest

from aha.data.chat_arithmetic import chat_addition_records, main
from aha.data.prompts import load_prompt_file


def test_every_pair_once_split_disjointly_with_correct_answers():
    train, heldout = chat_addition_records(1, 5, heldout=7, seed=0)
    assert len(heldout) == 7 and len(train) == 25 - 7
    questions = [r["prompt"][0]["content"] for r in train + heldout]
    assert len(set(questions)) == 25  # every ordered pair exactly once
    for record in train + heldout:
        (message,) = record["prompt"]
        assert message["role"] == "user"
        a, b = (int(x) for x in message["content"].removeprefix("What is ").removesuffix("?").split(" + "))
        assert 1 <= a <= 5 and 1 <= b <= 5 and record["answer"] == str(a + b)
    assert chat_addition_records(1, 5, heldout=7, seed=0) == (train, heldout)  # seeded
    assert chat_addition_records(1, 5, heldout=7, seed=1)[1] != heldout


def test_bad_ranges_are_refused():
    with pytest.raises(ValueError, match="low <= high"):
        chat_addition_records(5, 1, heldout=1)
    with pytest.raises(ValueError, match="heldout must be in"):
        chat_addition_records(1, 2, heldout=4)


def test_main_writes_prompt_files_the_trainer_loads(tmp_path):
    main([str(tmp_path / "t.jsonl"), str(tmp_path / "h.jsonl"), "--high", "4", "--heldout-size", "3"])
    train, heldout = load_prompt_file(tmp_path / "t.jsonl"), load_prompt_file(tmp_path / "h.jsonl")
    assert len(train) == 13 and len(heldout) == 3 and isinstance(train[0].prompt, list)
