"""Countdown: the safe arithmetic parser (values, limits, rejections) and the reward's number-use rules."""

from __future__ import annotations

import builtins
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aha.rewards import BUILTIN_REWARDS
from aha.rewards.countdown import ArithmeticLimits, ExpressionError, evaluate_expression

countdown = BUILTIN_REWARDS["countdown"]


@pytest.mark.parametrize(
    "text, value, literals",
    [
        ("1 + 2 * 3", 7, [1, 2, 3]),  # * binds tighter than +
        ("(1 + 2) * 3", 9, [1, 2, 3]),
        ("8 - 3 - 2", 3, [8, 3, 2]),  # left-associative: (8 - 3) - 2
        ("8 / 4 / 2", 1, [8, 4, 2]),
        ("7 / 2", Fraction(7, 2), [7, 2]),  # exact, no float rounding
        ("(6 - 2) / (5 - 3)", 2, [6, 2, 5, 3]),
        ("25 × 4 ÷ 5", 20, [25, 4, 5]),  # typographic operators are read as * and /
        ("((((3))))", 3, [3]),
    ],
)
def test_expressions_evaluate_exactly(text, value, literals):
    assert evaluate_expression(text) == (Fraction(value), literals)


@pytest.mark.parametrize(
    "text, reason",
    [
        ("2 ** 99999", "expected a number or '\\(', got '\\*'"),  # huge exponent: no power operator at all
        ("2 ** 999999999", "more than 6 digits"),
        ("2 ^ 99999", "character '\\^'"),
        ("9" * 50, "more than 6 digits"),
        ("(" * 17 + "1" + ")" * 17, "nested deeper than 16"),
        ("(" * 100_000 + "1" + ")" * 100_000, "longer than 200 characters"),
        ("5 / (3 - 3)", "division by zero"),
        ("999999 * 999999 * 999999", "exceeds"),
        ("-3 + 5", "expected a number"),  # no unary minus
        ("1.5 * 2", "character '\\.'"),
        ("__import__('os')", "character '_'"),
        ("(1 + 2", "missing '\\)'"),
        ("1 + 2)", "unexpected '\\)'"),
        ("1 +", "ends too early"),
        ("", "empty"),
        ("٣ + 1", "character '٣'"),  # non-ASCII digits are not numbers
    ],
)
def test_unsafe_or_malformed_expressions_are_rejected(text, reason):
    with pytest.raises(ExpressionError, match=reason):
        evaluate_expression(text)


def test_limits_are_configurable():
    with pytest.raises(ExpressionError, match="nested deeper than 2"):
        evaluate_expression("(((1)))", ArithmeticLimits(max_depth=2))
    assert evaluate_expression("(((1)))", ArithmeticLimits(max_depth=3))[0] == 1


def score(completions, numbers, targets, reward=countdown):
    return reward(["prompt"] * len(completions), completions, numbers=numbers, target=targets)


def test_reward_checks_value_and_number_use():
    completions = [
        "<think>try</think><answer>(1 + 2) * 3</answer>",  # correct
        "<answer>3 * 3</answer>",  # 3 used twice, only one 3 given
        "<answer>(1 + 2) * 4</answer>",  # 4 is not a given number
        "<answer>1 + 2 + 3</answer>",  # valid, but 6 != 9
        "<answer>3 ** 2</answer>",  # not allowed
        "",  # nothing
        "<answer>3 * (1 + 2) = 9</answer>",  # a claimed result is ignored, the left side counts
        "(1 + 2) * 3",  # no tags: the last line
    ]
    scores = score(completions, [[1, 2, 3]] * 8, [9] * 8)
    assert list(scores) == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0]
    assert scores.metrics == {"no_equation": 1, "invalid_expression": 1, "wrong_numbers": 2, "wrong_value": 1}


def test_a_number_given_twice_may_be_used_twice():
    assert list(score(["<answer>3 * 3</answer>"], [[3, 3, 5]], [9])) == [1.0]


def test_each_number_at_most_once_unless_all_are_required():
    assert list(score(["<answer>2 * 5</answer>"], [[2, 5, 7]], [10])) == [1.0]
    strict = countdown.with_options(require_all_numbers=True, max_depth=4)
    assert strict.limits.max_depth == 4
    assert list(score(["<answer>2 * 5</answer>"], [[2, 5, 7]], [10], strict)) == [0.0]
    assert list(score(["<answer>2 * 5 + 7 - 7 + 0</answer>"], [[2, 5, 7]], [10], strict)) == [0.0]
    assert list(score(["<answer>(7 - 5) * 5</answer>"], [[2, 5, 7]], [10], strict)) == [0.0]
    assert list(score(["<answer>7 + 5 - 2</answer>"], [[2, 5, 7]], [10], strict)) == [1.0]


def test_bad_fields_are_errors_naming_the_sample():
    with pytest.raises(ValueError, match="sample 0: field 'numbers' must be a list of integers"):
        score(["1"], ["1 2 3"], [6])
    with pytest.raises(ValueError, match="sample 0: field 'target' must be an integer"):
        score(["1"], [[1]], [1.5])
    assert list(score(["<answer>2 * 3</answer>"], [[2, 3]], [6.0])) == [1.0]
    with pytest.raises(TypeError, match="unknown options"):
        countdown.with_options(allow_powers=True)


def test_model_output_is_never_evaluated_by_python(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("eval/exec called")

    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)
    assert list(score(["<answer>(1 + 2) * 3</answer>"], [[1, 2, 3]], [9])) == [1.0]


# An independent reference: random expression trees evaluated by recursion over the tree, then printed.
LEAVES = st.integers(min_value=0, max_value=999).map(lambda n: (Fraction(n), str(n)))


def combine(children):
    return st.tuples(children, st.sampled_from("+-*/"), children).map(_apply)


def _apply(parts):
    (a, a_text), op, (b, b_text) = parts
    if op == "/" and b == 0:
        op = "+"
    value = {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else a}[op]
    return value, f"({a_text} {op} {b_text})"


@settings(max_examples=300, deadline=None)
@given(st.recursive(LEAVES, combine, max_leaves=8))
def test_parser_agrees_with_direct_evaluation_of_random_trees(tree):
    value, text = tree
    try:
        parsed, _ = evaluate_expression(text, ArithmeticLimits(max_magnitude=10**40))
    except ExpressionError as exc:
        assert "nested deeper" in str(exc) or "longer than" in str(exc)
        return
    assert parsed == value


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("0123456789+-*/() ^.x")), max_size=60))
def test_any_text_either_evaluates_or_raises_expression_error(text):
    try:
        value, _ = evaluate_expression(text)
    except ExpressionError:
        return
    assert isinstance(value, Fraction)
