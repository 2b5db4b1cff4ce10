"""Scalar metrics, one JSON line per logged step: run_dir/metrics.jsonl.

    {"step": 10, "reward/mean": 0.53, "kl": 0.012, "loss": null}

JSONL is the one sink that always exists (TensorBoard / W&B are added next to it: aha.track.trackers)
as it needs no dependency, survives crashes line by line and is read by pandas, jq and `read_metrics`.
NaN and +-inf are written as null (strict JSON has no such numbers) and read back as NaN, so a
diverged run stays visible in the file and plots skip those points.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from aha.track.jsonl import JsonlAppender, read_jsonl, to_json_value

METRICS_FILE = "metrics.jsonl"


class MetricsWriter:
    """Appends `{"step": step, **metrics}` lines to run_dir/metrics.jsonl (appending, so a resumed run
    continues the same file)."""

    def __init__(self, run_dir: Path | str):
        self.path = Path(run_dir) / METRICS_FILE
        self._out = JsonlAppender(self.path)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """Write one line. Values: Python / numpy numbers or 0-d tensors (converted to float/int)."""
        if "step" in metrics:
            raise ValueError("metrics must not contain a 'step' key; pass the step as the first argument")
        record: dict[str, Any] = {"step": int(step)}
        for key, value in metrics.items():
            converted = to_json_value(value, key)
            if converted is not None and not isinstance(converted, (int, float)):
                raise TypeError(f"metric {key!r} must be a number or 0-d tensor, got {type(value).__name__}")
            record[key] = converted
        self._out.write(record)

    def sync(self) -> None:
        """fsync the lines written so far (before a checkpoint is committed)."""
        self._out.sync()

    def close(self) -> None:
        self._out.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_metrics(path: Path | str) -> list[dict[str, Any]]:
    """Rows of a metrics.jsonl file (or of run_dir/metrics.jsonl when given a directory), in file
    order; null values (non-finite when written) come back as NaN. A torn last line (a crash cut the
    write short) is dropped with a warning; a malformed line anywhere else is an error."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    rows = read_jsonl(path, torn_tail_ok=True)
    for lineno, row in enumerate(rows, start=1):
        if "step" not in row:
            raise ValueError(f"{path}: record {lineno} has no 'step' field")
        for key, value in row.items():
            if value is None:
                row[key] = math.nan
    return rows
