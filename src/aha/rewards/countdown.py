"""Countdown reward: the completion's equation uses each given number at most once and equals the target.

The equation is read by a small recursive-descent parser for non-negative integer literals, + - * /
and parentheses, evaluated with exact fractions: model output is never eval'ed. Limits bound the
work on any input: expression length, parenthesis depth, literal size and the magnitude of every
intermediate value. No powers, unary signs or decimals: they are not Countdown moves, and rejecting
them keeps the grammar (and the attack surface) tiny.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, fields, replace
from fractions import Fraction
from typing import Any

from aha.rewards.base import RewardScores, register_reward

_TOKEN = re.compile(r"\s*(?:([0-9]+)|(.))", re.DOTALL)  # ASCII digits only: int("٣") would be 3
_SYNONYMS = str.maketrans({"×": "*", "·": "*", "÷": "/", "−": "-", "–": "-"})


class ExpressionError(ValueError):
    """The text is not an allowed arithmetic expression, or breaks a limit, or divides by zero."""


@dataclass(frozen=True)
class ArithmeticLimits:
    max_chars: int = 200
    max_depth: int = 16  # parenthesis nesting
    max_literal_digits: int = 6
    max_magnitude: int = 10**12  # bound on |numerator| and denominator of every intermediate value


def evaluate_expression(
    text: str, limits: ArithmeticLimits = ArithmeticLimits()
) -> tuple[Fraction, list[int]]:
    """The exact value of `text` and the integer literals it uses, in order; ExpressionError if not allowed."""
    text = text.translate(_SYNONYMS).strip()
    if not text:
        raise ExpressionError("empty expression")
    if len(text) > limits.max_chars:
        raise ExpressionError(f"expression longer than {limits.max_chars} characters")
    return _Parser(text, limits).parse()


class _Parser:
    """expr := term (("+" | "-") term)* ; term := factor (("*" | "/") factor)* ; factor := INT | "(" expr ")"."""

    def __init__(self, text: str, limits: ArithmeticLimits) -> None:
        self.limits = limits
        self.tokens: list[str] = []
        for match in _TOKEN.finditer(text):
            number, symbol = match.groups()
            if symbol is not None and symbol.isspace():
                continue
            if symbol is not None and symbol not in "+-*/()":
                raise ExpressionError(f"character {symbol!r} at position {match.start(2)} is not allowed")
            if number is not None and len(number) > limits.max_literal_digits:
                raise ExpressionError(
                    f"number {number[:20]} has more than {limits.max_literal_digits} digits"
                )
            self.tokens.append(number if number is not None else symbol)
        self.position = 0
        self.depth = 0
        self.literals: list[int] = []

    def parse(self) -> tuple[Fraction, list[int]]:
        value = self._expr()
        if self.position != len(self.tokens):
            raise ExpressionError(f"unexpected {self.tokens[self.position]!r} after a complete expression")
        return value, self.literals

    def _peek(self) -> str | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def _expr(self) -> Fraction:
        value = self._term()
        while self._peek() in ("+", "-"):
            op = self.tokens[self.position]
            self.position += 1
            right = self._term()
            value = self._bounded(value + right if op == "+" else value - right)
        return value

    def _term(self) -> Fraction:
        value = self._factor()
        while self._peek() in ("*", "/"):
            op = self.tokens[self.position]
            self.position += 1
            right = self._factor()
            if op == "/" and right == 0:
                raise ExpressionError("division by zero")
            value = self._bounded(value * right if op == "*" else value / right)
        return value

    def _factor(self) -> Fraction:
        token = self._peek()
        if token is None:
            raise ExpressionError("expression ends too early")
        self.position += 1
        if token == "(":
            self.depth += 1
            if self.depth > self.limits.max_depth:
                raise ExpressionError(f"parentheses nested deeper than {self.limits.max_depth}")
            value = self._expr()
            if self._peek() != ")":
                raise ExpressionError("missing ')'")
            self.position += 1
            self.depth -= 1
            return value
        if token[0] in "0123456789":
            self.literals.append(int(token))
            return Fraction(int(token))
        raise ExpressionError(f"expected a number or '(', got {token!r}")

    def _bounded(self, value: Fraction) -> Fraction:
        if abs(value.numerator) > self.limits.max_magnitude or value.denominator > self.limits.max_magnitude:
            raise ExpressionError(f"an intermediate value exceeds {self.limits.max_magnitude}")
        return value


@dataclass(frozen=True)
class CountdownReward:
    """1.0 if the equation is allowed, uses only the given numbers (each at most once) and equals the target.

    The equation is the content of the last answer-tag pair, else the last non-empty line; of "a = b"
    only the left side counts (a claimed result is not evidence). Counted in the metrics: no_equation,
    invalid_expression, wrong_numbers, wrong_value.
    """

    answer_tags: tuple[str, str] | None = ("<answer>", "</answer>")
    require_all_numbers: bool = False  # True: every given number must be used (exactly once)
    limits: ArithmeticLimits = ArithmeticLimits()

    def with_options(self, **options: Any) -> CountdownReward:
        limit_names = {f.name for f in fields(ArithmeticLimits)}
        limit_options = {k: options.pop(k) for k in list(options) if k in limit_names}
        known = {f.name for f in fields(self)} - {"limits"}
        if unknown := set(options) - known:
            raise TypeError(
                f"unknown options {sorted(unknown)}; options: {', '.join(sorted(known | limit_names))}"
            )
        if "answer_tags" in options and options["answer_tags"] is not None:
            options["answer_tags"] = tuple(options["answer_tags"])
        return replace(self, limits=replace(self.limits, **limit_options), **options)

    def __call__(
        self, prompts: list[str], completions: list[str], numbers: list[Any], target: list[Any], **kwargs: Any
    ) -> RewardScores:
        counts: Counter[str] = Counter()
        scores = []
        for i, (completion, given, goal) in enumerate(zip(completions, numbers, target, strict=True)):
            verdict = self.judge(completion, _numbers_field(given, i), _target_field(goal, i))
            counts[verdict] += 1
            scores.append(1.0 if verdict == "correct" else 0.0)
        keys = ("no_equation", "invalid_expression", "wrong_numbers", "wrong_value")
        return RewardScores(scores, {key: float(counts[key]) for key in keys})

    def judge(self, completion: str, numbers: list[int], target: Fraction) -> str:
        """correct, no_equation, invalid_expression, wrong_numbers or wrong_value."""
        equation = self.find_equation(completion)
        if not equation:
            return "no_equation"
        try:
            value, used = evaluate_expression(equation, self.limits)
        except ExpressionError:
            return "invalid_expression"
        available, used_counts = Counter(numbers), Counter(used)
        if any(used_counts[n] > available[n] for n in used_counts):
            return "wrong_numbers"
        if self.require_all_numbers and used_counts != available:
            return "wrong_numbers"
        return "correct" if value == target else "wrong_value"

    def find_equation(self, completion: str) -> str:
        text = completion
        if self.answer_tags is not None:
            opening, closing = self.answer_tags
            end = completion.rfind(closing)
            start = completion.rfind(opening, 0, max(end, 0))
            if end >= 0 and start >= 0:
                text = completion[start + len(opening) : end]
        lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
        return lines[-1].split("=", 1)[0].strip().rstrip(".") if lines else ""


def _numbers_field(value: Any, i: int) -> list[int]:
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(n, int) and not isinstance(n, bool) for n in value
    ):
        raise ValueError(f"sample {i}: field 'numbers' must be a list of integers, got {value!r}")
    return list(value)


def _target_field(value: Any, i: int) -> Fraction:
    integral = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not integral:
        raise ValueError(f"sample {i}: field 'target' must be an integer, got {value!r}")
    return Fraction(int(value))


countdown = register_reward("countdown")(CountdownReward())
