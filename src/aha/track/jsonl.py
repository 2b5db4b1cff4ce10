"""Append-only JSON-lines files shared by the metrics and sample writers.

One JSON object per line, flushed as it is written, so a crashed run keeps everything logged so far
and `tail -f` works. JSON has no NaN or infinity (Python's json would write the invalid tokens
`NaN` / `Infinity` that jq, pandas' strict readers and browsers reject), so non-finite floats are
written as null. Tensors and numpy scalars become plain numbers / lists.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, TextIO


def to_json_value(value: Any, key: str = "") -> Any:
    """A JSON-safe copy of value: 0-d tensors / numpy scalars -> Python numbers, NaN / inf -> None."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # torch tensors, numpy values
        value = value.tolist()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [to_json_value(v, key) for v in value]
    if isinstance(value, dict):
        return {str(k): to_json_value(v, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
    raise TypeError(
        f"value of {key or 'entry'!r} has type {type(value).__name__}, which cannot be written as JSON"
    )


class JsonlAppender:
    """Appends dicts as JSON lines to one file, flushing after each line."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: TextIO | None = self.path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            raise ValueError(f"{self.path}: writer is closed")
        line = json.dumps(record, ensure_ascii=False, allow_nan=False)
        self._file.write(line + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_jsonl(path: Path | str) -> list[dict[str, Any]]:
    """All records of a JSON-lines file; blank lines are skipped, anything else that is not a JSON
    object raises ValueError naming the file and line."""
    path = Path(path)
    records = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            records.append(record)
    return records
