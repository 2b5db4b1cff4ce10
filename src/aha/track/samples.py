"""Sample completions: every logged row to run_dir/samples.jsonl, and a few as a terminal table.

Reading what the model actually writes is the fastest way to spot reward hacking, format collapse or
a broken chat template, so the trainer logs a handful of (prompt, completion, reward) rows per step.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from aha.track.jsonl import JsonlAppender, read_jsonl, to_json_value

SAMPLES_FILE = "samples.jsonl"
TABLE_COLUMNS = ("prompt", "completion", "reward")


class SampleSink(Protocol):
    def log_samples(self, step: int, rows: list[dict[str, Any]]) -> None: ...


class SampleWriter:
    """Appends one `{"step": step, **row}` JSON line per row to run_dir/samples.jsonl, then hands the
    rows to each of `sinks` (the run's TensorBoard / W&B trackers). Row values may be strings, numbers,
    tensors or lists; non-finite floats are written as null."""

    def __init__(self, run_dir: Path | str, sinks: Sequence[SampleSink] = ()):
        self.path = Path(run_dir) / SAMPLES_FILE
        self._out = JsonlAppender(self.path)
        self._sinks = list(sinks)

    def log(self, step: int, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            if "step" in row:
                raise ValueError(
                    "sample rows must not contain a 'step' key; pass the step as the first argument"
                )
            self._out.write({"step": int(step), **to_json_value(row)})
        for sink in self._sinks:
            sink.log_samples(step, rows)

    def sync(self) -> None:
        """fsync the lines written so far (before a checkpoint is committed)."""
        self._out.sync()

    def close(self) -> None:
        self._out.close()

    def __enter__(self) -> SampleWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_samples(path: Path | str) -> list[dict[str, Any]]:
    """Rows of samples.jsonl (or run_dir/samples.jsonl when given a directory)."""
    path = Path(path)
    return read_jsonl(path / SAMPLES_FILE if path.is_dir() else path)


def _cell(value: Any, max_chars: int) -> str:
    """One line of at most max_chars characters: newlines shown as the visible '⏎', long text cut with '…'."""
    if value is None:
        text = ""
    elif isinstance(value, float):
        text = f"{value:.3g}"
    else:
        value = to_json_value(value)
        text = f"{value:.3g}" if isinstance(value, float) else str(value)
    text = text.replace("\r\n", "\n").replace("\n", "⏎").replace("\t", " ")
    return text if len(text) <= max_chars else text[: max(max_chars - 1, 0)] + "…"


def format_samples_table(
    rows: list[dict[str, Any]],
    max_rows: int = 4,
    max_chars: int = 120,
    columns: tuple[str, ...] = TABLE_COLUMNS,
) -> str:
    """The first max_rows rows as an aligned text table (prompt | completion | reward by default),
    each cell one line of at most max_chars characters. Missing keys show as empty cells."""
    shown = [[_cell(row.get(col), max_chars) for col in columns] for row in rows[:max_rows]]
    widths = [max([len(col), *(len(r[i]) for r in shown)]) for i, col in enumerate(columns)]

    def line(cells: list[str]) -> str:
        return " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    out = [line(list(columns)), "-+-".join("-" * w for w in widths)]
    out += [line(r) for r in shown]
    if len(rows) > max_rows:
        out.append(f"... {len(rows) - max_rows} more")
    return "\n".join(out)
