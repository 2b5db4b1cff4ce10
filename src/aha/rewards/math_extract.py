"""Find the final answer in a completion: <answer> tags, \\boxed{}, "#### x", "the answer is x", last number.

Pure text, in-process, linear time and never raises: a model can write anything, so nothing here
backtracks or recurses on its output. Which rule found the answer is reported, so a run can log how
the model is answering (e.g. the share of boxed answers rising as it learns the format).
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass

DEFAULT_ANSWER_TAGS = ("<answer>", "</answer>")
METHODS = ("answer_tag", "boxed", "marker", "answer_phrase", "last_number")

_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)\s*\{")
# "answer is", "Answer:", "**Answer:**", "final answer =": the answer follows (markdown and colons stripped).
_ANSWER_PHRASE = re.compile(r"\banswer\s*(?:\*\*)?\s*(?:is\b|:|=)", re.IGNORECASE)
# A number: optional sign, thousands separators, decimals, a simple fraction, an optional percent sign.
_LAST_NUMBER = re.compile(
    r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?(?:/\d+)?|\.\d+)(?![\w])%?"
)
_LATEX_WORDS = re.compile(r"\\[A-Za-z]+|\\text\s*\{[^{}]*\}|\\mbox\s*\{[^{}]*\}")
_WORD = re.compile(r"[A-Za-z]{2,}")
_SENTENCE_END = re.compile(r"\.(?:\s|$)")


@dataclass(frozen=True)
class Boxed:
    content: str
    start: int  # index of the backslash of \boxed
    end: int  # index just past the closing brace


@dataclass(frozen=True)
class ExtractedAnswer:
    text: str  # the answer as written (not normalised)
    method: str  # one of METHODS: the rule that found it


def find_boxed(text: str) -> Boxed | None:
    """The \\boxed{...} (or \\fbox{...}) that closes last, with nested braces matched; escaped \\{ \\} skipped."""
    commands = list(_BOX_COMMAND.finditer(text))
    if not commands:
        return None
    partner = _matching_braces(text)
    best: tuple[int, int, int] | None = None  # (command start, content start, closing brace)
    for command in commands:
        close = partner.get(command.end() - 1)
        if close is not None and (best is None or close > best[2]):
            best = (command.start(), command.end(), close)
    if best is None:
        return None
    start, content_start, close = best
    return Boxed(text[content_start:close], start, close + 1)


def _matching_braces(text: str) -> dict[int, int]:
    """Index of each "{" -> index of its "}". One left-to-right pass with a stack: linear on any input."""
    partner: dict[int, int] = {}
    stack: list[int] = []
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char == "\\":  # a control symbol: \{ and \} are literal braces, \\ is a line break
            i += 2
            continue
        if char == "{":
            stack.append(i)
        elif char == "}" and stack:
            partner[stack.pop()] = i
        i += 1
    return partner


def extract_answer(
    completion: str,
    *,
    answer_tags: tuple[str, str] | None = DEFAULT_ANSWER_TAGS,
    marker: str | None = "####",
    fallback_last_number: bool = True,
) -> ExtractedAnswer | None:
    """The completion's final answer by the first rule that finds one, or None.

    Rules, in order: the content of the last complete answer-tag pair; the last \\boxed{}; the rest of
    the line after the last `marker` ("#### 42", GSM8K's own format); the rest of the sentence after
    the last "answer is" / "answer:"; the last number (only if `fallback_last_number`). Tag contents and
    answer phrases are refined the same way: a \\boxed{} inside wins, and prose ("Janet makes $18 a day")
    falls back to its last number when that fallback is on.
    """
    if answer_tags is not None:
        content = _last_tagged(completion, *answer_tags)
        if content:
            return _refine(content, "answer_tag", fallback_last_number)
    if boxed := _boxed_answer(completion):
        return ExtractedAnswer(boxed, "boxed")
    if marker:
        at = completion.rfind(marker)
        if at >= 0:
            line = completion[at + len(marker) :].split("\n", 1)[0].strip()
            if line:
                return ExtractedAnswer(line, "marker")
    phrase = _last_answer_phrase(completion)
    if phrase:
        return _refine(phrase, "answer_phrase", fallback_last_number)
    if fallback_last_number:
        number = last_number(completion)
        if number is not None:
            return ExtractedAnswer(number, "last_number")
    return None


def last_number(text: str) -> str | None:
    """The last number written in `text` ("1,234", "-3.5", "3/4", "50%"), or None."""
    found = _last_match(_LAST_NUMBER, text)
    return found.group(0) if found else None


def looks_like_prose(text: str) -> bool:
    """Three or more words outside LaTeX commands and \\text{}: a sentence, not a mathematical answer."""
    return len(_WORD.findall(_LATEX_WORDS.sub(" ", text))) >= 3


def _last_tagged(text: str, open_tag: str, close_tag: str) -> str | None:
    """Content of the last complete open...close pair (an unclosed, truncated last tag is ignored)."""
    last_close = text.rfind(close_tag)
    start = text.rfind(open_tag, 0, max(last_close, 0))
    if last_close < 0 or start < 0:
        return None
    end = text.find(close_tag, start + len(open_tag))
    return text[start + len(open_tag) : end].strip() if end >= 0 else None


def _last_answer_phrase(text: str) -> str | None:
    found = _last_match(_ANSWER_PHRASE, text)
    if found is None:
        return None
    rest = text[found.end() :].split("\n", 1)[0].lstrip(" \t*:")
    sentence_end = _SENTENCE_END.search(rest)
    return (rest[: sentence_end.start()] if sentence_end else rest).strip() or None


def _last_match(pattern: re.Pattern, text: str) -> re.Match | None:
    last = deque(pattern.finditer(text), maxlen=1)
    return last[0] if last else None


def _refine(content: str, method: str, fallback_last_number: bool) -> ExtractedAnswer:
    """Tag content or an answer phrase: a box inside wins; prose gives its last number (if allowed)."""
    if boxed := _boxed_answer(content):
        return ExtractedAnswer(boxed, method)
    if fallback_last_number and looks_like_prose(content):
        number = last_number(content)
        if number is not None:
            return ExtractedAnswer(number, method)
    return ExtractedAnswer(content, method)


def _boxed_answer(text: str) -> str | None:
    boxed = find_boxed(text)
    return (_strip_latex(_unbox(boxed.content)) if boxed else "") or None


def _strip_latex(text: str) -> str:
    """Strip whitespace, but keep an escaped trailing space (`5\\ `): a lone final backslash would escape a brace."""
    stripped = text.strip()
    trailing_backslashes = len(stripped) - len(stripped.rstrip("\\"))
    return stripped + " " if trailing_backslashes % 2 else stripped


def _unbox(content: str) -> str:
    """`\\boxed{\\boxed{5}}` answers 5: strip the boxes that enclose the whole content (linear time)."""
    partner = _matching_braces(content)
    start, end = 0, len(content)
    while (command := _BOX_COMMAND.match(content, start)) and partner.get(command.end() - 1) == end - 1:
        start, end = command.end(), end - 1
    return content[start:end]
