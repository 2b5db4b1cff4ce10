"""Preference data for reward models: pairs, K-wise rankings, and Anthropic's hh-rlhf dialogues.

Every record becomes a `Ranking`: one prompt and its responses best first (a pair is a ranking of two).
Formats (JSONL, optionally gzipped; a bad record is a DataError naming file, line and field):

- pairs:    {"prompt": str, "chosen": str, "rejected": str, "margin": float (optional)}
- rankings: {"prompt": str, "responses": [str, ...] best first, "ties": [int, ...] (optional)}
  Both take an optional "subset" (str, e.g. "helpful-base"): evaluation reports each subset separately.
  `ties` gives each response a rank group, non-decreasing (e.g. [0, 0, 1]: the first two are tied and
  both beat the third); tied responses form no pair.
- hh-rlhf:  {"chosen": dialogue, "rejected": dialogue}; the prompt is the text up to and including the
  last "\\n\\nAssistant:", the response the rest. Records whose two replies are identical, or whose
  prompts differ, carry no usable preference and are dropped; empty replies are kept (people did rank
  them). Each case is counted in `HHReport`, never silently kept or dropped.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aha.data.prompts import DataError, _jsonl_records

ASSISTANT = "\n\nAssistant:"
FORMATS = ("pairs", "rankings", "hh-rlhf")


@dataclass(frozen=True)
class Ranking:
    prompt: str
    responses: tuple[str, ...]  # best first
    ties: tuple[int, ...]  # rank group per response, non-decreasing; equal = tied
    margin: float | None = None  # pairs only: how much the chosen reply should win by
    source: str = field(default="", compare=False)
    subset: str = field(default="", compare=False)  # a name the evaluation reports separately


@dataclass
class HHReport:
    """What load_hh_rlhf did with each record (line numbers, 1-based)."""

    records: int = 0
    kept: int = 0
    identical: list[int] = field(default_factory=list)  # dropped: chosen == rejected
    prompt_mismatch: list[int] = field(default_factory=list)  # dropped: the shared context differs
    empty_reply: list[int] = field(default_factory=list)  # kept: a final reply is empty

    def summary(self) -> dict[str, int]:
        return {
            "records": self.records,
            "kept": self.kept,
            "dropped_identical": len(self.identical),
            "dropped_prompt_mismatch": len(self.prompt_mismatch),
            "kept_empty_reply": len(self.empty_reply),
        }


def load_preferences(path: str | Path, fmt: str) -> list[Ranking]:
    """Load a preference file in one of FORMATS (hh-rlhf's report is discarded: use load_hh_rlhf)."""
    if fmt == "pairs":
        return load_pairs(path)
    if fmt == "rankings":
        return load_rankings(path)
    if fmt == "hh-rlhf":
        return load_hh_rlhf(path)[0]
    raise DataError(f"unknown preference format {fmt!r}; expected one of {FORMATS}")


def load_pairs(path: str | Path) -> list[Ranking]:
    out = []
    for where, record in _records(path):
        prompt, chosen, rejected = (_text(record, k, where) for k in ("prompt", "chosen", "rejected"))
        margin = record.get("margin")
        if margin is not None and (isinstance(margin, bool) or not isinstance(margin, int | float)):
            raise DataError(f'{where}: field "margin" must be a number, got {type(margin).__name__}')
        if margin is not None and not math.isfinite(margin):
            raise DataError(f'{where}: field "margin" must be finite, got {margin}')
        out.append(Ranking(prompt, (chosen, rejected), (0, 1), margin, where, _subset(record, where)))
    return _non_empty(out, path)


def load_rankings(path: str | Path) -> list[Ranking]:
    out = []
    for where, record in _records(path):
        prompt = _text(record, "prompt", where)
        responses = record.get("responses")
        if not isinstance(responses, list) or len(responses) < 2:
            raise DataError(f'{where}: field "responses" must be a list of at least 2 strings (best first)')
        if not all(isinstance(r, str) for r in responses):
            raise DataError(f'{where}: field "responses" must hold only strings')
        ties = record.get("ties", list(range(len(responses))))
        if (
            not isinstance(ties, list)
            or len(ties) != len(responses)
            or not all(isinstance(t, int) and not isinstance(t, bool) for t in ties)
        ):
            raise DataError(
                f'{where}: field "ties" must be a list of {len(responses)} integers (one per response)'
            )
        if any(b < a for a, b in zip(ties, ties[1:], strict=False)):
            raise DataError(f'{where}: field "ties" must be non-decreasing (responses are listed best first)')
        if ties[0] == ties[-1]:
            raise DataError(f'{where}: field "ties" puts every response in one group: no preference to learn')
        out.append(Ranking(prompt, tuple(responses), tuple(ties), None, where, _subset(record, where)))
    return _non_empty(out, path)


def split_dialogue(dialogue: str) -> tuple[str, str] | None:
    """(prompt up to and including the last '\\n\\nAssistant:', the reply after it); None if absent."""
    cut = dialogue.rfind(ASSISTANT)
    if cut < 0:
        return None
    cut += len(ASSISTANT)
    return dialogue[:cut], dialogue[cut:]


def load_hh_rlhf(path: str | Path) -> tuple[list[Ranking], HHReport]:
    report, out = HHReport(), []
    for where, record in _records(path):
        line = int(where.rsplit(" ", 1)[1])
        report.records += 1
        parts = {}
        for key in ("chosen", "rejected"):
            split = split_dialogue(_text(record, key, where))
            if split is None:
                raise DataError(f'{where}: field "{key}" has no "\\n\\nAssistant:" turn')
            parts[key] = split
        (prompt, chosen), (other_prompt, rejected) = parts["chosen"], parts["rejected"]
        if record["chosen"] == record["rejected"]:
            report.identical.append(line)
            continue
        if prompt != other_prompt:
            report.prompt_mismatch.append(line)
            continue
        if not chosen.strip() or not rejected.strip():
            report.empty_reply.append(line)
        report.kept += 1
        out.append(Ranking(prompt, (chosen, rejected), (0, 1), None, where))
    return _non_empty(out, path), report


def _records(path: str | Path):
    path = Path(path)
    if not path.is_file():
        raise DataError(f"preference file not found: {path}")
    if not path.name.lower().endswith((".jsonl", ".jsonl.gz")):
        raise DataError(f"{path}: preference files are JSONL (.jsonl or .jsonl.gz)")
    for number, record in _jsonl_records(path):
        where = f"{path}: line {number}"
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
        yield where, record


def _text(record: dict[str, Any], key: str, where: str) -> str:
    if key not in record:
        raise DataError(f'{where}: missing field "{key}" (fields: {", ".join(map(str, record))})')
    value = record[key]
    if not isinstance(value, str):
        raise DataError(f'{where}: field "{key}" must be a string, got {type(value).__name__}')
    return value


def _subset(record: dict[str, Any], where: str) -> str:
    return _text(record, "subset", where) if "subset" in record else ""


def _non_empty(rows: list[Ranking], path: str | Path) -> list[Ranking]:
    if not rows:
        raise DataError(f"{path}: no usable preference records")
    return rows


def split_by_prompt(
    rows: list[Ranking], held_out_fraction: float, seed: int = 0
) -> tuple[list[Ranking], list[Ranking]]:
    """A fixed train / held-out split by prompt: a record is held out when sha256("seed:prompt"), read
    as a number in [0, 1), is below `held_out_fraction`. Records sharing a prompt always land on the
    same side, and the split does not depend on file order or on the other records."""
    train, held = [], []
    for row in rows:
        digest = hashlib.sha256(f"{seed}:{row.prompt}".encode()).digest()
        (held if int.from_bytes(digest[:8], "big") / 2**64 < held_out_fraction else train).append(row)
    return train, held
