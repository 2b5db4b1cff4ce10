"""The <think>/<answer> format rewards: what strict and lenient accept and reject."""

from __future__ import annotations

import pytest

from aha.rewards import BUILTIN_REWARDS
from aha.rewards.think_format import ThinkAnswerFormat

strict = BUILTIN_REWARDS["format_think_answer"]
lenient = BUILTIN_REWARDS["format_think_answer_lenient"]

CASES = [
    # completion, strict, lenient
    ("<think>2+2 is 4</think><answer>4</answer>", 1.0, 1.0),
    ("  <think>\nreason\n</think>\n\n<answer>\n4\n</answer>\n", 1.0, 1.0),
    ("<think>reason</think> so <answer>4</answer>", 0.0, 1.0),  # text between the blocks
    ("Sure! <think>reason</think><answer>4</answer>", 0.0, 1.0),  # text before
    ("<think>reason</think><answer>4</answer> Done.", 0.0, 1.0),  # text after
    ("<THINK>reason</THINK><Answer>4</Answer>", 0.0, 1.0),  # letter case
    ("<think></think><answer>4</answer>", 0.0, 1.0),  # empty thought
    ("<think>reason</think><answer> </answer>", 0.0, 0.0),  # empty answer
    ("<answer>4</answer><think>reason</think>", 0.0, 0.0),  # wrong order
    ("<think>a</think><think>b</think><answer>4</answer>", 0.0, 1.0),  # a repeated tag
    ("<think>reason</think><answer>4</answer><answer>5</answer>", 0.0, 1.0),
    ("<think>reason<answer>4</answer>", 0.0, 0.0),  # unclosed think
    ("<think>reason</think><answer>4", 0.0, 0.0),  # truncated answer
    ("4", 0.0, 0.0),
    ("", 0.0, 0.0),
]


@pytest.mark.parametrize("completion, strict_score, lenient_score", CASES)
def test_strict_and_lenient(completion, strict_score, lenient_score):
    assert strict(["Q"], [completion]) == [strict_score]
    assert lenient(["Q"], [completion]) == [lenient_score]


def test_a_prompt_that_opens_the_think_block_counts_as_part_of_the_completion():
    prompt = "User: what is 2+2? Assistant: <think>"
    assert strict([prompt], ["2+2 is 4</think><answer>4</answer>"]) == [1.0]
    assert strict([prompt], ["<think>2+2</think><answer>4</answer>"]) == [1.0]  # repeated by the model: fine
    assert strict(["Q"], ["2+2 is 4</think><answer>4</answer>"]) == [0.0]


def test_tags_are_configurable():
    custom = strict.with_options(
        think_tags=["<reasoning>", "</reasoning>"], answer_tags=("<final>", "</final>")
    )
    assert custom(["Q"], ["<reasoning>r</reasoning><final>4</final>"]) == [1.0]
    assert custom(["Q"], ["<think>r</think><answer>4</answer>"]) == [0.0]
    with pytest.raises(ValueError, match="think_tags must be two non-empty strings"):
        ThinkAnswerFormat(think_tags=("<think>",))
    with pytest.raises(TypeError, match="unknown options"):
        strict.with_options(tags=("<a>", "</a>"))
