"""Weights & Biases backend of `track.report_to` (the `wandb` extra).

The run is named after the run directory and its files go to run_dir/wandb. W&B's own environment
variables apply: WANDB_MODE=offline writes everything locally without an account (`wandb sync` uploads
it later), WANDB_ENTITY picks the team. Each process (a fresh start or a --resume) is one W&B run, grouped
under the run directory's name; metrics use aha's step as W&B's step.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import wandb

from aha.track.jsonl import to_json_value
from aha.track.trackers import sample_columns


class WandbTracker:
    def __init__(self, run_dir: Path, config: dict[str, Any], project: str):
        self._run = wandb.init(
            project=project,
            name=run_dir.name,
            group=run_dir.name,
            dir=str(run_dir),
            config=config,
            reinit="create_new",  # several stages in one process (aha demo) are separate runs
        )

    def log_scalars(self, step: int, metrics: dict[str, float]) -> None:
        self._run.log({key: _number(value, key) for key, value in metrics.items()}, step=step)

    def log_samples(self, step: int, rows: list[dict[str, Any]]) -> None:
        columns = sample_columns(rows)
        data = [[to_json_value(row.get(col)) for col in columns] for row in rows]
        self._run.log({"samples": wandb.Table(columns=columns, data=data)}, step=step)

    def restart_at(self, step: int) -> None:
        """Nothing to undo: a resumed run is a new W&B run, its first step after the checkpoint."""

    def close(self) -> None:
        self._run.finish()


def _number(value: Any, key: str) -> float:
    number = to_json_value(value, key)
    return math.nan if number is None else number
