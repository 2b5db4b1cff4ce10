"""Mathematical equivalence of normalised answers: plain numbers in-process, everything else through math-verify
in the time-limited child process."""

from __future__ import annotations

import json
import threading
import time

import pytest

from aha.rewards import math_equivalence as eq
from aha.rewards.math_normalize import normalize_answer
from aha.rewards.time_limit import GRACE_S


@pytest.mark.parametrize(
    "gold, answer",
    [
        ("\\frac{1}{2}", "0.5"),  # fractions vs decimals
        ("0.5", "\\frac{1}{2}"),
        ("\\frac{14}{3}", "4\\frac{2}{3}"),  # mixed number
        ("\\dfrac{3}{4}", "3/4"),
        ("\\frac{1}{3}", "0.333333"),  # math-verify rounds decimals to 6 places
        ("50", "50%"),  # percentages both ways
        ("50\\%", "50"),
        ("0.5", "50%"),
        ("-10", "-10.0"),  # negatives
        ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}"),  # radicals
        ("2\\sqrt{3}", "\\sqrt{12}"),
        ("(-\\infty, 0]", "(-\\infty, 0]"),  # intervals
        ("[2, 5)", "x \\in [2, 5)"),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\pi/2)"),  # tuples
        ("3, 5, 7", "7, 5, 3"),  # an unordered list of solutions
        (
            "\\begin{pmatrix} -1/3 \\\\ 2/3 \\end{pmatrix}",
            "\\begin{pmatrix} -\\frac13 \\\\ \\frac23 \\end{pmatrix}",
        ),
        ("90^\\circ", "90"),
        ("\\text{(C)}", "C"),
        ("5", "x = 5"),
        ("x^2 + 2x + 1", "(x+1)^2"),
        ("1234", normalize_answer("$1,234")),  # currency and separators, via normalisation
        ("16", normalize_answer("\\$16.00")),
        ("118000", normalize_answer("118 000")),
    ],
)
def test_equivalent_forms_are_correct(gold, answer):
    assert eq.check_equivalence(gold, answer) == eq.CORRECT


@pytest.mark.parametrize(
    "gold, answer",
    [
        ("-10", "10"),
        ("18", "17.999999"),
        ("1000000", "1000001"),
        ("\\frac{1}{3}", "0.333"),
        ("(-\\infty, 0]", "(-\\infty, 0)"),  # open vs closed end
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(\\frac{\\pi}{2}, 3)"),  # a tuple is ordered
        ("\\text{(C)}", "\\text{(D)}"),
        ("50", "0.5"),
        ("x^2 + 1", "x^2 - 1"),
    ],
)
def test_different_values_are_wrong(gold, answer):
    assert eq.check_equivalence(gold, answer) == eq.WRONG


def test_plain_numbers_compare_exactly_without_the_child(monkeypatch):
    def no_child(*args):
        raise AssertionError("plain numbers must not need the math-verify processes")

    monkeypatch.setattr(eq, "shared_pool", no_child)
    assert eq.check_equivalence("18", "18.00") == eq.CORRECT
    assert eq.check_equivalence("-0.5", "-.5") == eq.CORRECT
    assert eq.check_equivalence("18", "17.9999999") == eq.WRONG  # exact: no rounding for plain decimals
    assert eq.check_gold("-10") == eq.CORRECT


def test_unparsable_gold_and_answer_are_told_apart():
    assert eq.check_gold("\\frac{1}{2}") == eq.CORRECT
    assert eq.check_gold("}{") == eq.BAD_GOLD
    assert eq.check_equivalence("}{", "5") == eq.BAD_GOLD
    assert eq.check_equivalence("\\frac{1}{2}", "}{") == eq.BAD_ANSWER


@pytest.mark.parametrize("answer", ["10^{10^{10}}", "9^{9^{9^{9}}}", "(" * 120 + "1" + ")" * 120])
def test_adversarial_answers_time_out_instead_of_hanging(answer):
    start = time.monotonic()
    assert eq.check_equivalence("\\frac{1}{2}", answer, timeout_s=0.5) == eq.TIMEOUT
    assert time.monotonic() - start < 0.5 + GRACE_S + 10  # generous: a loaded machine may restart the child
    assert eq.check_equivalence("\\frac{1}{2}", "0.5") == eq.CORRECT  # and the checker still works


def test_the_time_limit_holds_off_the_main_thread():
    """math-verify's own timeout (signal.alarm) cannot work here; the child process's can."""
    verdicts = []
    thread = threading.Thread(
        target=lambda: verdicts.append(eq.check_equivalence("\\frac{1}{2}", "10^{10^{10}}", timeout_s=0.5))
    )
    thread.start()
    thread.join(timeout=60)
    assert verdicts == [eq.TIMEOUT]


def test_checking_many_in_parallel_gives_the_one_at_a_time_verdicts(math500_test):
    """The pool changes when checks run, never their verdicts: MATH-500 golds against themselves, a
    perturbed value, an unparsable answer and plain numbers, in one batch."""
    rows = [json.loads(line) for line in math500_test.open()][:12]
    golds = [normalize_answer(row["answer"]) for row in rows]
    pairs = (
        [(g, g) for g in golds] + [(g, "\\frac{7}{13}") for g in golds] + [(golds[0], "}{"), ("18", "18.0")]
    )
    one_at_a_time = [eq.check_equivalence(g, a) for g, a in pairs]
    assert eq.check_many(pairs, workers=3) == one_at_a_time
    assert one_at_a_time[:12] == [eq.CORRECT] * 12 and eq.BAD_ANSWER in one_at_a_time
