"""Answer normalisation: what it fixes before math-verify sees the string, and that it is total and idempotent."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aha.rewards.math_normalize import is_plain_number, normalize_answer


@pytest.mark.parametrize(
    "raw, normalised",
    [
        ("18", "18"),
        ("  18.  ", "18"),
        ("$18$", "18"),
        ("\\(x^2\\)", "x^2"),
        ("$$\\frac{1}{2}$$", "\\frac{1}{2}"),
        ("**42**", "42"),
        ("\\boxed{7}", "7"),
        ("\\$18.90", "18.90"),  # currency outside math mode
        ("$18", "18"),
        ("-$5", "-5"),
        ("€1,000", "1000"),
        ("1,450,000", "1450000"),  # thousands separators
        ("10,\\!080", "10080"),
        ("1\\,234", "1234"),  # math-verify reads this as 1 + 234
        ("118 000", "118000"),
        ("\u22123", "-3"),  # unicode minus sign
        ("1\u202f000", "1000"),  # narrow no-break space
        ("18 dollars", "18"),  # unit words after a number
        ("3.5 km/h", "3.5"),
        ("12 square feet", "12"),
        ("6 m^2", "6"),
        ("90\u00b0", "90"),
        ("50 percent", "50%"),
        ("3, 5, 7", "3, 5, 7"),  # a list keeps its commas (they are followed by spaces)
        ("(1, 234)", "(1, 234)"),
        ("$5 and $6", "5 and $6"),  # not one math span: only the leading currency goes
        ("x = 5", "x = 5"),
        ("\\frac{\\sqrt{3}}{4}", "\\frac{\\sqrt{3}}{4}"),
    ],
)
def test_normalisation_examples(raw, normalised):
    assert normalize_answer(raw) == normalised


def test_plain_numbers_are_decimal_literals_only():
    assert all(is_plain_number(s) for s in ["18", "-3.25", ".5", "0", "007"])
    assert not any(is_plain_number(s) for s in ["1/2", "1e5", "-", "", "18%", "1,000", "\\frac12", "9" * 65])


ANSWERS = st.lists(
    st.sampled_from(
        [
            *"0123456789-.,$%()[]{} \\^_/x",
            "\\$",
            "\\,",
            "\\!",
            "**",
            "\\boxed{",
            "\\(",
            "\\)",
            "dollars",
            "percent",
        ]
        + ["\u2212", "\u00a0", "\u00b0", "€", "\\frac{1}{2}", "1,000", " 000"]
    ),
    max_size=30,
).map("".join) | st.text(max_size=80)


@settings(max_examples=1000, deadline=None)
@given(ANSWERS)
def test_normalisation_never_raises_and_is_idempotent(raw):
    once = normalize_answer(raw)
    assert normalize_answer(once) == once
