from __future__ import annotations

import pytest

from aha.data.arithmetic import make_arithmetic_problems, split_train_eval


def test_prompt_and_answer_format():
    problems = make_arithmetic_problems(200, digits=2, ops=("+", "-", "*"), seed=0)
    for ex in problems:
        for op, fn in (("+", int.__add__), ("-", int.__sub__), ("*", int.__mul__)):
            left, sep, right = ex.prompt.rstrip("=").partition(op)
            if sep and left.isdigit() and right.isdigit():
                a, b = int(left), int(right)
                assert ex.prompt == f"{a}{op}{b}=" and 0 <= a < 100 and 0 <= b < 100
                assert ex.fields == {"answer": str(fn(a, b))}
                assert int(ex.fields["answer"]) >= 0  # subtraction keeps a >= b
                break
        else:
            raise AssertionError(f"unexpected prompt {ex.prompt!r}")
    assert {op for ex in problems for op in "+-*" if op in ex.prompt} == {"+", "-", "*"}


def test_known_answers():
    # Every 1-digit sum appears when all 100 are drawn; check a few by hand: 7+8=15, 0+0=0, 9+9=18.
    answers = {ex.prompt: ex.fields["answer"] for ex in make_arithmetic_problems(100, digits=1, seed=5)}
    assert len(answers) == 100
    assert answers["7+8="] == "15" and answers["0+0="] == "0" and answers["9+9="] == "18"


def test_seeded_and_distinct():
    a = make_arithmetic_problems(50, seed=1)
    assert a == make_arithmetic_problems(50, seed=1)
    assert a != make_arithmetic_problems(50, seed=2)
    assert len({ex.prompt for ex in make_arithmetic_problems(2000, seed=0)}) == 2000


def test_exclude_and_capacity():
    # 1-digit subtraction with a >= b has 10 * 11 / 2 = 55 distinct problems.
    assert len(make_arithmetic_problems(55, digits=1, ops=("-",))) == 55
    with pytest.raises(ValueError, match="only 55 exist"):
        make_arithmetic_problems(56, digits=1, ops=("-",))
    excluded = {"3-1=", "9-9=", "not a problem", "1-3="}  # only the first two are in the space
    problems = make_arithmetic_problems(53, digits=1, ops=("-",), exclude=excluded)
    assert not excluded & {ex.prompt for ex in problems}
    with pytest.raises(ValueError, match="only 53 exist"):
        make_arithmetic_problems(54, digits=1, ops=("-",), exclude=excluded)


def test_argument_checks():
    with pytest.raises(ValueError, match="ops must be"):
        make_arithmetic_problems(1, ops=("/",))
    with pytest.raises(ValueError, match="digits must be >= 1"):
        make_arithmetic_problems(1, digits=0)


def test_split_train_eval_is_disjoint_and_eval_is_stable():
    train, held_out = split_train_eval(500, 100, digits=2, seed=7)
    assert len(train) == 500 and len(held_out) == 100
    assert not {ex.prompt for ex in train} & {ex.prompt for ex in held_out}
    _, held_out_again = split_train_eval(50, 100, digits=2, seed=7)
    assert held_out_again == held_out  # the eval set does not depend on the training size
    train_small, _ = split_train_eval(80, 10, digits=1, seed=0, exclude={"1+1="})
    assert "1+1=" not in {ex.prompt for ex in train_small}
