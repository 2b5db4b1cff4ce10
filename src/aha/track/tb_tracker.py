"""TensorBoard backend of `track.report_to` (the `tensorboard` extra), through torch.utils.tensorboard.

Scalars keep their metric names, so `reward/mean` and `reward/std` share TensorBoard's `reward` section.
The resolved config is a text entry at step 0 and each logged step's completions a Markdown table.
A resumed run reopens the log directory with `purge_step`: TensorBoard then hides what the interrupted
run had logged after the checkpoint, as metrics.jsonl is cut back to it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter

from aha.track.jsonl import to_json_value
from aha.track.trackers import sample_columns


class TensorBoardTracker:
    def __init__(self, log_dir: Path, config_yaml: str):
        self.log_dir = log_dir
        self._writer = SummaryWriter(str(log_dir))
        self._writer.add_text("config", _code_block(config_yaml), 0)

    def log_scalars(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            number = to_json_value(value, key)
            self._writer.add_scalar(key, math.nan if number is None else number, step)
        self._writer.flush()

    def log_samples(self, step: int, rows: list[dict[str, Any]]) -> None:
        self._writer.add_text("samples", markdown_table(rows), step)
        self._writer.flush()

    def restart_at(self, step: int) -> None:
        self._writer.close()
        self._writer = SummaryWriter(str(self.log_dir), purge_step=step + 1)

    def close(self) -> None:
        self._writer.close()


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Rows as a Markdown table (TensorBoard renders text entries as Markdown); `|` and newlines in
    completions are escaped so each row stays one table row."""
    columns = sample_columns(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(col)) for col in columns) + " |")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    value = to_json_value(value)
    text = "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r\n", "\n").replace("\n", "<br>")


def _code_block(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())  # indented: Markdown's code block
