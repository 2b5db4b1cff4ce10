"""Clean an extracted answer string before it is compared: what math-verify does not already handle.

math-verify copes with LaTeX (fractions, roots, intervals, tuples, matrices, `\\text{}` units, degrees,
percentages, `1,234` and `10,\\!080`). What it gets wrong on model output, and what this module fixes:
unicode minus signs and spaces (`−10` parses to nothing), currency in front of a bare number (`\\$18.90`
outside math mode), unit words after a number (`18 dollars` becomes `18*a*d*l*...`), thin-space and
plain-space thousands separators (`1\\,234` becomes 235, `118 000`), enclosing `$...$` / `\\(...\\)` /
`\\boxed{}` / `**...**` wrappers, and trailing sentence punctuation.

Every step is idempotent and none can raise, so `normalize_answer(normalize_answer(x)) ==
normalize_answer(x)` for any string (tested with hypothesis). All regexes are linear-time.
"""

from __future__ import annotations

import re

from aha.rewards.math_extract import find_boxed

_UNICODE = str.maketrans(
    {
        "\u2212": "-",  # minus sign
        "\u2013": "-",  # en dash, often typed for minus
        "\u2014": "-",  # em dash
        "\u00a0": " ",  # no-break space
        "\u2009": " ",  # thin space
        "\u202f": " ",  # narrow no-break space
        "\u2007": " ",  # figure space
        "\u00b0": "",  # degree sign: a unit, dropped like the others
        "\uff04": "$",  # fullwidth dollar
    }
)
_WRAPPERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"), ("**", "**"))
_CURRENCY = re.compile(r"^(-?)\s*(?:\\\$|\$|€|£|¥|₹|USD\s*|US\$\s*|Rs\.?\s*)\s*(?=[\d.])")
_LATEX_SPACE_IN_NUMBER = re.compile(r"(?<=\d)(?:\\,|\\!|\\ |\\;|\\:|~|\{,\}|,\\!)(?=\d{3}(?!\d))")
_COMMA_THOUSANDS = re.compile(r"(?<![\d.,])(-?\d{1,3})((?:,\d{3})+)(?![\d,])")
_SPACE_THOUSANDS = re.compile(r"^-?\d{1,3}(?: \d{3})+(?:\.\d+)?$")
_PERCENT_WORD = re.compile(r"(?<=\d)\s*(?:percent|per cent|pct)\.?$", re.IGNORECASE)
_NUMBER = r"-?(?:\d+(?:\.\d*)?|\.\d+)"
# "18 dollars", "3.5 km/h", "12 square feet", "6 m^2": a number, then words only (no digits, no LaTeX).
_NUMBER_WITH_UNIT = re.compile(
    rf"^({_NUMBER})\s*[A-Za-z][A-Za-z'.]*(?:[ /-][A-Za-z][A-Za-z'.]*)*(?:\^?[23]|[²³])?$"
)
_TRAILING_PUNCTUATION = ".,;:"


def normalize_answer(text: str) -> str:
    """The canonical form of an answer string; the result is what gets parsed and compared."""
    text = " ".join(text.translate(_UNICODE).split())
    previous = None
    while text != previous:  # each pass removes at least one character, so this ends
        previous = text
        text = _strip_trailing_punctuation(text)
        text = _unwrap(text)
        text = _CURRENCY.sub(r"\1", text)
        text = _PERCENT_WORD.sub("%", text)
        if match := _NUMBER_WITH_UNIT.match(text):
            text = match.group(1)
        text = _LATEX_SPACE_IN_NUMBER.sub("", text)
        text = _COMMA_THOUSANDS.sub(lambda m: m.group(1) + m.group(2).replace(",", ""), text)
        if _SPACE_THOUSANDS.match(text):
            text = text.replace(" ", "")
        text = text.strip()
    return text


def is_plain_number(text: str) -> bool:
    """A decimal literal such as `18`, `-3.25` or `.5` (after normalisation): compared exactly, in-process."""
    return len(text) <= 64 and re.fullmatch(_NUMBER, text) is not None and text not in ("-", "-.")


def _strip_trailing_punctuation(text: str) -> str:
    while text and text[-1] in _TRAILING_PUNCTUATION and not text.endswith("\\,"):
        text = text[:-1].rstrip()
    return text


def _unwrap(text: str) -> str:
    """Remove one wrapper that encloses the whole string: $..$, \\(..\\), \\[..\\], **..**, \\boxed{..}."""
    for left, right in _WRAPPERS:
        if len(text) > len(left) + len(right) and text.startswith(left) and text.endswith(right):
            inner = text[len(left) : -len(right)]
            if left.strip("$") or "$" not in inner:  # "$5 and $6" is not one math span
                return inner.strip()
    if text.startswith(("\\boxed", "\\fbox")):
        boxed = find_boxed(text)
        if boxed is not None and boxed.end == len(text):
            return boxed.content.strip()
    return text
