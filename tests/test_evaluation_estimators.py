"""pass@k, the majority vote and the answer keys it votes on: hand-worked values and independent references."""

from __future__ import annotations

import json
from fractions import Fraction
from itertools import combinations
from math import comb

import pytest

from aha.evaluation.answers import answer_key
from aha.evaluation.estimators import default_ks, majority_vote_correct, mean_pass_at_k, pass_at_k
from aha.evaluation.run import summarize

# pass_at_k is 1 - q with q = C(n-c,k)/C(n,k) rounded once: each of the two roundings is at most half an
# ulp of 1, so it is within 2^-52 of the exact value
PASS_AT_K_ATOL = 2.0**-52


def test_pass_at_k_by_hand():
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7, abs=PASS_AT_K_ATOL)  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25, abs=PASS_AT_K_ATOL)
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 4, 2) == 1.0  # fewer than k wrong samples: every draw of k holds a right one
    assert mean_pass_at_k([0, 2, 5], 5, 2) == pytest.approx((0 + 0.7 + 1) / 3, abs=PASS_AT_K_ATOL)


@pytest.mark.parametrize("n", range(1, 8))
def test_pass_at_k_is_the_share_of_k_subsets_holding_a_correct_sample(n):
    """The definition, counted: every k-subset of n samples (the first c correct)."""
    for c in range(n + 1):
        for k in range(1, n + 1):
            subsets = list(combinations(range(n), k))
            exact = Fraction(sum(any(i < c for i in s) for s in subsets), len(subsets))
            assert abs(pass_at_k(n, c, k) - float(exact)) <= PASS_AT_K_ATOL, (n, c, k)


@pytest.mark.parametrize("p", [Fraction(1, 10), Fraction(1, 2), Fraction(9, 10)])
def test_pass_at_k_is_unbiased_for_one_minus_the_chance_all_k_fail(p):
    """Averaged over how many of n independent samples come out right (binomial in c), the estimate is
    1 - (1 - p)^k exactly, where the plug-in 1 - (1 - c/n)^k is not."""
    n, k = 6, 3
    weights = [comb(n, c) * p**c * (1 - p) ** (n - c) for c in range(n + 1)]
    unbiased = sum(float(w) * pass_at_k(n, c, k) for c, w in enumerate(weights))
    plug_in = sum(float(w) * (1 - (1 - c / n) ** k) for c, w in enumerate(weights))
    truth = float(1 - (1 - p) ** k)
    assert unbiased == pytest.approx(truth, abs=16 * PASS_AT_K_ATOL)
    assert abs(plug_in - truth) > 1e-3


def test_pass_at_k_refuses_impossible_counts():
    for n, c, k in [(4, 5, 1), (4, -1, 1), (4, 2, 0), (4, 2, 5)]:
        with pytest.raises(ValueError, match="pass_at_k needs"):
            pass_at_k(n, c, k)


def test_majority_vote_by_hand():
    assert majority_vote_correct(["18", "17", "18", None], [True, False, True, False])
    assert not majority_vote_correct(["17", "18", "17"], [False, True, False])
    assert not majority_vote_correct(["a", "b"], [False, True])  # a tie goes to the answer given first
    assert majority_vote_correct([None, "b", "a"], [False, True, False])  # None does not vote
    assert not majority_vote_correct([None, None], [False, False])  # no answer: wrong
    assert not majority_vote_correct(["x", "x"], [False, True])  # judged as its first sample was
    with pytest.raises(ValueError, match="2 answers but 1"):
        majority_vote_correct(["a", "b"], [True])


def test_default_ks():
    assert default_ks(1) == [1] and default_ks(8) == [1, 2, 4, 8] and default_ks(6) == [1, 2, 4, 6]


def test_math_answer_keys_agree_across_the_ways_gsm8k_solutions_end(gsm8k_test):
    """On real GSM8K solutions: the key of the reference solution ("... #### 18") is its normalised final
    number, and the same number written as \\boxed{}, in an <answer> tag or as "The answer is $18." votes
    with it."""
    records = [json.loads(line) for line in gsm8k_test.read_text().splitlines()[:50]]
    for record in records:
        gold = record["answer"].rsplit("####", 1)[1].strip().replace(",", "")
        key = answer_key(record["answer"], "math")
        assert key == gold, record["answer"]
        for ending in (f"\\boxed{{{gold}}}", f"<answer>{gold}</answer>", f"The answer is ${gold}."):
            assert answer_key(f"Working it out.\n{ending}", "math") == key


def test_text_answer_keys_and_missing_answers():
    assert answer_key(" 57\n", "text") == "57" and answer_key("  \n", "text") is None
    assert answer_key("no number here", "math") is None
    with pytest.raises(ValueError, match="no answer key"):
        answer_key("57", "off")


def _record(prompt_index, correct, answer, reward, length):
    return {
        "prompt_index": prompt_index,
        "correct": correct,
        "answer": answer,
        "reward": reward,
        "rewards": {"r": reward},
        "length": length,
        "truncated": length == 4,
    }


def test_summary_of_two_prompts_by_hand():
    """Prompt 0: 2 of 3 right, the vote (7, twice) right; prompt 1: 1 of 3 right, the vote (5) wrong."""
    records = [
        _record(0, True, "7", 1.0, 2),
        _record(0, False, "8", 0.0, 4),
        _record(0, True, "7", 1.0, 2),
        _record(1, False, "5", 0.0, 4),
        _record(1, True, "6", 1.0, 3),
        _record(1, False, "5", 0.0, 3),
    ]
    out = summarize(records, num_prompts=2, n=3, ks=[1, 2, 3], vote="math")
    assert out["accuracy"] == pytest.approx(3 / 6)
    # pass@2: prompt 0: 1 - C(1,2)/C(3,2) = 1; prompt 1: 1 - C(2,2)/C(3,2) = 2/3
    assert out["pass@k"] == pytest.approx({"1": 0.5, "2": (1 + 2 / 3) / 2, "3": 1.0})
    assert out["maj@3"] == 0.5 and out["no_answer_frac"] == 0.0
    assert out["reward_mean"] == pytest.approx(0.5) and out["rewards"] == pytest.approx({"r": 0.5})
    assert out["length_mean"] == pytest.approx(18 / 6) and out["truncated_frac"] == pytest.approx(2 / 6)
    assert "maj@3" not in summarize(records, num_prompts=2, n=3, ks=[1], vote="off")
