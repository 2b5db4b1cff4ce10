"""Prompt datasets: load and validate prompt files, and sample batches in a resumable, seeded order.

A bad record is reported with its file and 1-based line (or record) number at start-up; nothing except
blank lines is skipped, so the training set is exactly what the file says. A prompt is a string or a
conversation: a list of {"role", "content"} messages, rendered with the model's chat template by the
trainer (aha.data.chat).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMATS = ".jsonl, .jsonl.gz, .json (a list of objects) or .parquet"


class DataError(ValueError):
    """A data file is missing, malformed or lacks a field. The message names the file and the line."""


Messages = list[dict[str, Any]]


@dataclass
class PromptExample:
    """One prompt and the other columns of its record (e.g. `answer`, passed on to reward functions).

    `prompt` is text, or a list of chat messages until the trainer renders it (aha.data.chat);
    `source` says where the record came from ("FILE: line N"), for errors found after loading."""

    prompt: str | Messages
    fields: dict[str, Any] = field(default_factory=dict)
    source: str = field(default="", compare=False)  # where, not what: equal records compare equal


def load_prompt_file(
    path: str | Path, prompt_field: str = "prompt", required_fields: Sequence[str] = ()
) -> list[PromptExample]:
    """Read prompts from JSONL (optionally gzipped), a JSON list, or Parquet (needs pyarrow)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"prompt file not found: {path}" + (" (it is a directory)" if path.is_dir() else ""))
    name = path.name.lower()
    if name.endswith(".jsonl") or name.endswith(".jsonl.gz"):
        records = _jsonl_records(path)
        where = "line"
    elif name.endswith(".json"):
        records = _json_list_records(path)
        where = "record"
    elif name.endswith(".parquet"):
        records = _parquet_records(path)
        where = "row"
    else:
        raise DataError(f"{path}: unsupported file type; expected {FORMATS}")
    examples = [
        _to_example(record, path, f"{where} {number}", prompt_field, required_fields)
        for number, record in records
    ]
    if not examples:
        raise DataError(f"{path}: no examples (the file is empty)")
    return examples


def _jsonl_records(path: Path) -> Iterator[tuple[int, Any]]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    line_number = 0
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for line_number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(
                        f"{path}: line {line_number}: invalid JSON: {e.msg} (column {e.colno})"
                    ) from None
                except RecursionError:
                    raise DataError(f"{path}: line {line_number}: invalid JSON: nested too deeply") from None
                yield line_number, record
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError, zlib.error) as e:  # EOFError: a cut gzip
        raise DataError(f"{path}: not UTF-8 JSONL text (after line {line_number}): {e}") from None


def _json_list_records(path: Path) -> Iterable[tuple[int, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: line {e.lineno}: invalid JSON: {e.msg} (column {e.colno})") from None
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line}: not UTF-8 text: {e.reason} (byte {e.start})") from None
    except RecursionError:
        raise DataError(f"{path}: invalid JSON: nested too deeply") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
    return enumerate(data, start=1)


def _parquet_records(path: Path) -> Iterable[tuple[int, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(
            f"{path}: reading Parquet needs pyarrow (pip install pyarrow), or convert to JSONL"
        ) from None
    try:
        rows = pq.read_table(path).to_pylist()
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid / ArrowIOError subclass these
        raise DataError(f"{path}: not a readable Parquet file: {e}") from None
    return enumerate(rows, start=1)


def _to_example(
    record: Any, path: Path, where: str, prompt_field: str, required_fields: Sequence[str]
) -> PromptExample:
    if not isinstance(record, dict):
        raise DataError(f"{path}: {where}: expected a JSON object, got {type(record).__name__}")
    if prompt_field not in record:
        raise DataError(
            f'{path}: {where}: missing field "{prompt_field}" (fields: {", ".join(map(str, record))})'
        )
    prompt = record[prompt_field]
    if isinstance(prompt, list):
        _check_messages(prompt, f'{path}: {where}: field "{prompt_field}"')
    elif not isinstance(prompt, str):
        raise DataError(
            f'{path}: {where}: field "{prompt_field}" must be a string, got {type(prompt).__name__}'
        )
    for name in required_fields:
        if name not in record:
            raise DataError(f'{path}: {where}: missing required field "{name}"')
    fields = {k: v for k, v in record.items() if k != prompt_field}
    return PromptExample(prompt=prompt, fields=fields, source=f"{path}: {where}")


def _check_messages(messages: list, where: str) -> None:
    """A conversation: a non-empty list of objects with string "role" and "content" (other keys pass)."""
    if not messages:
        raise DataError(f"{where}: the message list is empty")
    for number, message in enumerate(messages, start=1):
        if not isinstance(message, dict):
            raise DataError(f"{where}: message {number} must be an object, got {type(message).__name__}")
        for key in ("role", "content"):
            if not isinstance(message.get(key), str):
                got = type(message[key]).__name__ if key in message else "nothing"
                raise DataError(f'{where}: message {number}: "{key}" must be a string, got {got}')
        if not message["role"].strip():
            raise DataError(f'{where}: message {number}: "role" is empty')


def batch_fields(examples: Sequence[PromptExample]) -> dict[str, list]:
    """Columns aligned with `examples` for reward functions; a field some records lack is None there."""
    names: dict[str, None] = {}
    for ex in examples:
        names.update(dict.fromkeys(ex.fields))
    return {name: [ex.fields.get(name) for ex in examples] for name in names}


class PromptSampler:
    """Endless batches of examples: each epoch is a fresh seeded shuffle, and batches run across epoch ends.

    Epoch `e`'s order depends only on (seed, e), so the state is just (epoch, position) and a resumed run
    draws exactly the batches it would have drawn without the interruption.
    """

    def __init__(self, examples: Sequence[PromptExample], batch_size: int, seed: int = 0) -> None:
        if not examples:
            raise ValueError("PromptSampler needs at least one example")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.examples = list(examples)
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self.position = 0  # next index into this epoch's order
        self._order = self._epoch_order(0)

    def _epoch_order(self, epoch: int) -> list[int]:
        order = list(range(len(self.examples)))
        random.Random(f"aha.PromptSampler:{self.seed}:{epoch}").shuffle(order)  # str seeds are stable
        return order

    def __iter__(self) -> PromptSampler:
        return self

    def __next__(self) -> list[PromptExample]:
        return [self.examples[i] for i in self.next_indices()]

    def next_indices(self) -> list[int]:
        """The next batch as indices into `examples` (for callers that prepared per-example data)."""
        batch = []
        while len(batch) < self.batch_size:
            if self.position == len(self._order):
                self.epoch += 1
                self.position = 0
                self._order = self._epoch_order(self.epoch)
            batch.append(self._order[self.position])
            self.position += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "fingerprint": self._fingerprint(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["seed"] != self.seed or state["fingerprint"] != self._fingerprint():
            raise ValueError(
                "cannot resume the prompt order: the prompts or the seed differ from the checkpointed run "
                f"(seed {state['seed']} -> {self.seed}); resume with the same data and run.seed"
            )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._epoch_order(self.epoch)

    def _fingerprint(self) -> str:
        texts = (ex.prompt if isinstance(ex.prompt, str) else json.dumps(ex.prompt) for ex in self.examples)
        data = "".join(text + "\0" for text in texts).encode("utf-8")
        return f"{len(self.examples)}:{hashlib.sha256(data).hexdigest()[:16]}"
