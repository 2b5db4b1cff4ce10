"""Append-only JSON-lines files shared by the metrics and sample writers.

One JSON object per line, flushed as it is written, so a crashed run keeps everything logged so far
and `tail -f` works; fsynced (`sync`) before each checkpoint, so a power cut keeps what it covers. JSON has no NaN or infinity (Python's json would write the invalid tokens
`NaN` / `Infinity` that jq, pandas' strict readers and browsers reject), so non-finite floats are
written as null. Tensors and numpy scalars become plain numbers / lists.

A crash (kill -9, power loss) can tear the line being written: the file then ends in a partial line
with no newline, since the newline is written last. The appender drops such a tail before appending
(else the next record would be glued to it, corrupting the middle of the file), and `read_jsonl` with
`torn_tail_ok` skips it; both log a warning naming the file and line. Anything else malformed is an error.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, TextIO

from aha.write_errors import write_failed

logger = logging.getLogger(__name__)
_TAIL_BYTES = 1 << 20  # how much of a file's end is read to find its last line before appending


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
        _repair_torn_tail(self.path)
        self._file: TextIO | None = self.path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            raise ValueError(f"{self.path}: writer is closed")
        line = json.dumps(record, ensure_ascii=False, allow_nan=False)
        try:
            self._file.write(line + "\n")
            self._file.flush()
        except OSError as exc:
            self._abandon()
            raise write_failed(
                self.path,
                exc,
                "the lines before this record are intact (a torn last line is dropped on resume)",
            ) from exc

    def sync(self) -> None:
        """Make every line written so far durable (fsync): a checkpoint calls this before it is committed,
        so a power cut after the checkpoint cannot lose rows it counts as written (resume cuts the file
        back to the checkpoint's step and redoes only later steps, so a lost earlier row stays lost)."""
        if self._file is None:
            return
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            self._abandon()
            raise write_failed(
                self.path, exc, "its lines may not all be on disk, and the step's checkpoint was not written"
            ) from exc

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _abandon(self) -> None:
        """Close after a failed write without flushing the rest of the failed line again."""
        file, self._file = self._file, None
        try:
            file.close()
        except OSError:
            pass


def read_jsonl(path: Path | str, torn_tail_ok: bool = False) -> list[dict[str, Any]]:
    """All records of a JSON-lines file; blank lines are skipped, anything else that is not a JSON
    object raises ValueError naming the file and line. With `torn_tail_ok`, a last line that has no
    newline and does not parse (a write cut short by a crash) is dropped with a warning instead."""
    path = Path(path)
    records = []
    with path.open(encoding="utf-8") as f:
        lines = f.readlines()
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if torn_tail_ok and lineno == len(lines) and not line.endswith("\n"):
                logger.warning(
                    "%s:%d: dropped a torn last line (%d characters, no newline)", path, lineno, len(line)
                )
                break
            raise ValueError(f"{path}:{lineno}: invalid JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
        records.append(record)
    return records


def _repair_torn_tail(path: Path) -> None:
    """Make `path` end with a newline before appending: a torn partial last line is cut off (with a
    warning); a complete record that merely lacks its newline gets one."""
    size = path.stat().st_size if path.exists() else 0
    if size == 0:
        return
    with path.open("rb") as f:
        f.seek(max(0, size - _TAIL_BYTES))
        data = f.read()
    if data.endswith(b"\n"):
        return
    if b"\n" not in data:  # a record longer than the window: look at the whole file
        data = path.read_bytes()
    cut = size - len(data) + data.rfind(b"\n") + 1  # file offset after the last newline
    tail = data[data.rfind(b"\n") + 1 :]
    try:
        complete = isinstance(json.loads(tail), dict)
    except (json.JSONDecodeError, UnicodeDecodeError):
        complete = False
    with path.open("r+b") as f:
        if complete:
            f.seek(0, 2)
            f.write(b"\n")
        else:
            f.truncate(cut)
            logger.warning("%s: dropped a torn last line (%d bytes, no newline)", path, len(tail))
