"""The math_answer and gsm8k rewards end to end, on the real GSM8K and MATH-500 files in tests/data."""

from __future__ import annotations

import json
import random
import re

import pytest

from aha.data.gsm8k import load_gsm8k
from aha.rewards import BUILTIN_REWARDS, compute_rewards, make_reward_specs
from aha.rewards.base import RewardError
from aha.rewards.math_answer import BadGoldAnswer, MathAnswerReward

math_answer = BUILTIN_REWARDS["math_answer"]
gsm8k = BUILTIN_REWARDS["gsm8k"]


def score(reward, completions, golds):
    return reward(["prompt"] * len(completions), completions, answer=golds)


def test_every_gsm8k_test_solution_scores_correct_against_its_own_answer(gsm8k_test):
    records = load_gsm8k(gsm8k_test)
    assert len(records) == 1319
    scores = score(gsm8k, [r["solution"] for r in records], [r["answer"] for r in records])
    assert list(scores) == [1.0] * 1319
    assert scores.metrics["method/marker"] == 1319


def test_a_perturbed_gsm8k_answer_scores_wrong(gsm8k_test):
    records = load_gsm8k(gsm8k_test)
    solutions = [r["solution"] for r in records]
    off_by_one = [str(int(r["answer"]) + 1) for r in records]
    assert list(score(gsm8k, solutions, off_by_one)) == [0.0] * 1319
    # ... and the same when the solution's final line is changed instead of the gold
    altered = [re.sub(r"#### .*$", f"#### {g}", s) for s, g in zip(solutions, off_by_one, strict=True)]
    assert list(score(gsm8k, altered, [r["answer"] for r in records])) == [0.0] * 1319


def test_gsm8k_reward_reads_a_raw_worked_solution_as_gold(gsm8k_test):
    """Pointing the trainer at the raw file (prompt_field=question) passes whole solutions as `answer`."""
    raw = [json.loads(line) for line in gsm8k_test.read_text().splitlines()[:50]]
    scores = score(gsm8k, [r["answer"] for r in raw], [r["answer"] for r in raw])
    assert list(scores) == [1.0] * 50


@pytest.mark.parametrize(
    "completion",
    [
        "<think>16-3-4=9 eggs, 9*2</think><answer>18</answer>",
        "<answer>$18</answer>",
        "<answer>18 dollars</answer>",
        "<answer>She makes $18.00 every day.</answer>",
        "So she makes \\boxed{18} dollars.",
        "The answer is 18.",
        "9 * 2 = 18",  # the last-number fallback
    ],
)
def test_gsm8k_accepts_the_usual_answer_forms(completion):
    assert list(score(gsm8k, [completion], ["18"])) == [1.0]


@pytest.mark.parametrize(
    "completion, gold",
    [
        ("The answer is $\\frac{1}{2}$.", "0.5"),
        ("<answer>50%</answer>", "50"),
        ("\\boxed{-10}", "-10"),
        ("<answer>$1,234</answer>", "1234"),
        ("so x \\in \\boxed{[2, 5)}", "[2,5)"),
        ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("<answer>\\sqrt{12}</answer>", "2\\sqrt{3}"),
    ],
)
def test_math_answer_scores_equivalent_forms_correct(completion, gold):
    assert list(score(math_answer, [completion], [gold])) == [1.0]


def test_answers_not_found_unparsable_or_too_long_score_zero_and_are_counted():
    completions = [
        "I don't know",
        "<answer>}{</answer>",
        "\\boxed{" + "1+" * 200 + "1}",
        "\\boxed{3}",
        "\\boxed{4}",
    ]
    scores = score(math_answer, completions, ["4"] * 5)
    assert list(scores) == [0.0, 0.0, 0.0, 0.0, 1.0]
    assert scores.metrics["no_answer"] == 1  # "I don't know" (no last-number fallback for math_answer)
    assert scores.metrics["bad_answer"] == 2  # "}{" does not parse; the 401-char sum is over the limit
    assert scores.metrics["method/boxed"] == 3 and scores.metrics["method/answer_tag"] == 1


def test_last_number_fallback_is_an_option():
    assert list(score(math_answer, ["so we get 7"], ["7"])) == [0.0]
    assert list(score(math_answer.with_options(fallback_last_number=True), ["so we get 7"], ["7"])) == [1.0]


def test_an_unparsable_gold_is_an_error_naming_the_sample_never_a_correct_score():
    with pytest.raises(BadGoldAnswer, match="sample 1, field 'answer': gold answer '}{' cannot be parsed"):
        score(math_answer, ["\\boxed{1}", "\\boxed{}{}"], ["1", "}{"])
    for bad in [None, "", "  ", True, ["1"]]:
        with pytest.raises(BadGoldAnswer):
            score(math_answer, ["\\boxed{1}"], [bad])
    specs = make_reward_specs(["math_answer"])
    with pytest.raises(RewardError, match="'math_answer' raised BadGoldAnswer.*for sample 1"):
        compute_rewards(specs, ["p", "q"], ["\\boxed{1}", "\\boxed{2}"], {"answer": ["1", "}{"]})


def test_an_unparsable_gold_can_be_skipped_and_counted():
    skipping = math_answer.with_options(bad_gold="skip")
    scores = score(skipping, ["\\boxed{1}", "\\boxed{}{}"], ["1", "}{"])
    assert list(scores) == [1.0, None]
    assert scores.metrics["bad_gold"] == 1
    specs = make_reward_specs([{"fn": "math_answer", "options": {"bad_gold": "skip"}}])
    result = compute_rewards(specs, ["p", "q"], ["\\boxed{1}", "\\boxed{}{}"], {"answer": ["1", "}{"]})
    assert (
        result.metrics["reward/math_answer/none"] == 1 and result.metrics["reward/math_answer/bad_gold"] == 1
    )


def test_an_adversarial_answer_times_out_scores_zero_and_is_counted():
    quick = math_answer.with_options(timeout_s=0.5)
    scores = score(quick, ["\\boxed{10^{10^{10}}}", "\\boxed{\\frac{2}{4}}"], ["\\frac{1}{2}"] * 2)
    assert list(scores) == [0.0, 1.0]
    assert scores.metrics["timeouts"] == 1


def test_missing_gold_field_is_named():
    with pytest.raises(KeyError, match="needs the gold answer in dataset field 'answer'"):
        math_answer(["p"], ["\\boxed{1}"], solution=["1"])


def test_options_are_validated():
    with pytest.raises(ValueError, match="bad_gold"):
        MathAnswerReward(bad_gold="ignore")
    with pytest.raises(TypeError, match="unknown options"):
        math_answer.with_options(tolerance=0.1)
    assert math_answer.with_options(answer_tags=["<a>", "</a>"]).answer_tags == ("<a>", "</a>")


def test_every_math500_gold_answer_parses_and_its_own_solution_scores_correct(math500_test):
    records = [json.loads(line) for line in math500_test.open()]
    assert len(records) == 500
    scores = score(math_answer, [r["solution"] for r in records], [r["answer"] for r in records])
    assert list(scores) == [1.0] * 500  # a gold that did not parse would have raised BadGoldAnswer
    assert scores.metrics["method/boxed"] == 500


def test_math500_perturbed_numeric_answers_score_wrong(math500_test):
    records = [json.loads(line) for line in math500_test.open()]
    integers = [r for r in records if re.fullmatch(r"-?\d+", r["answer"])]
    sample = random.Random(0).sample(integers, 40)
    completions = [f"\\boxed{{{int(r['answer']) + 1}}}" for r in sample]
    assert list(score(math_answer, completions, [r["answer"] for r in sample])) == [0.0] * 40
    radicals_and_fractions = [
        r["answer"] for r in records if re.fullmatch(r"-?\\(frac|sqrt)[^,]*", r["answer"])
    ]
    assert len(radicals_and_fractions) >= 40
    completions = [f"\\boxed{{{gold} + 1}}" for gold in radicals_and_fractions]
    assert list(score(math_answer, completions, radicals_and_fractions)) == [0.0] * len(completions)


MATH500_EQUIVALENT_FORMS = [
    ("10,\\!080", "10080"),
    ("11,\\! 111,\\! 111,\\! 100", "11111111100"),
    ("\\$32,\\!348", "$32,348"),
    ("\\$18.90", "18.9"),
    ("145^\\circ", "145"),
    ("\\text{(E)}", "E"),
    ("864 \\mbox{ inches}^2", "864"),
    ("(-\\infty, 2) \\cup (3, \\infty)", "(-\\infty,2)\\cup(3,\\infty)"),
    ("\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}", "\\begin{pmatrix}-1&0\\\\0&-1\\end{pmatrix}"),
    ("11\\sqrt2", "\\sqrt{242}"),
    ("3, 5, 7", "7, 3, 5"),
]


@pytest.mark.parametrize("gold, alternative", MATH500_EQUIVALENT_FORMS)
def test_math500_golds_accept_known_equivalent_forms(gold, alternative, math500_test):
    assert any(json.loads(line)["answer"] == gold for line in math500_test.open()), "gold not in MATH-500"
    assert list(score(math_answer, [f"The final answer is \\boxed{{{alternative}}}."], [gold])) == [1.0]
