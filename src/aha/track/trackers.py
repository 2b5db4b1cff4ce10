"""`track.report_to`: metrics.jsonl always, plus TensorBoard and / or Weights & Biases where a team looks.

Every stage logs through `TrainingSession.log` (scalars) and `session.samples` (completions); both hand
what they write to `Trackers`, which fans it out to the chosen backends. The backends' packages are
optional extras, imported only when chosen; `report_to_problem` finds a missing one when the config is
loaded, so a run fails in its first second naming the extra to install, not after its first step.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Protocol

REPORT_TO = ("jsonl", "tensorboard", "wandb")
# backend -> (the module it imports, the pip extra that installs it)
EXTRAS = {"tensorboard": ("tensorboard", "aha[tensorboard]"), "wandb": ("wandb", "aha[wandb]")}
MAX_SAMPLE_ROWS = 64  # completions per logged step sent to a tracker (samples.jsonl keeps them all)


def report_to_problem(report_to: list[str]) -> str | None:
    """Why `report_to` cannot be used (an unknown name, or a backend whose package is missing), or None."""
    for name in report_to:
        if name not in REPORT_TO:
            return f"unknown tracker {name!r}; choose from {list(REPORT_TO)}"
    for name in report_to:
        if name in EXTRAS and importlib.util.find_spec(EXTRAS[name][0]) is None:
            module, extra = EXTRAS[name]
            return f"{name} needs the {module} package: pip install '{extra}' (or drop {name} from the list)"
    return None


def writes_trackers() -> bool:
    """The one place that decides which process writes to TensorBoard / W&B: rank 0 only, so a
    distributed run logs once (torchrun sets RANK; a single process has none and writes)."""
    return int(os.environ.get("RANK", "0")) == 0


class Tracker(Protocol):
    def log_scalars(self, step: int, metrics: dict[str, float]) -> None: ...
    def log_samples(self, step: int, rows: list[dict[str, Any]]) -> None: ...
    def restart_at(self, step: int) -> None: ...
    def close(self) -> None: ...


class Trackers:
    """The chosen backends behind one object (none at all for `report_to: [jsonl]`)."""

    def __init__(self, backends: list[Tracker]):
        self.backends = backends

    def log_scalars(self, step: int, metrics: dict[str, float]) -> None:
        for backend in self.backends:
            backend.log_scalars(step, metrics)

    def log_samples(self, step: int, rows: list[dict[str, Any]]) -> None:
        for backend in self.backends:
            backend.log_samples(step, rows[:MAX_SAMPLE_ROWS])

    def restart_at(self, step: int) -> None:
        """A resumed run continues from checkpoint `step`: what was logged after it is redone."""
        for backend in self.backends:
            backend.restart_at(step)

    def close(self) -> None:
        for backend in self.backends:
            backend.close()


def open_trackers(
    report_to: list[str], run_dir: Path, config: dict[str, Any], config_yaml: str, wandb_project: str
) -> Trackers:
    """Start the backends named in `report_to` for the run in `run_dir`, each given the resolved config.
    TensorBoard writes run_dir/tensorboard; W&B writes run_dir/wandb (uploaded unless WANDB_MODE=offline)."""
    problem = report_to_problem(report_to)
    if problem is not None:
        raise RuntimeError(f"track.report_to: {problem}")
    backends: list[Tracker] = []
    if not writes_trackers():
        return Trackers(backends)
    if "tensorboard" in report_to:
        from aha.track.tb_tracker import TensorBoardTracker

        backends.append(TensorBoardTracker(run_dir / "tensorboard", config_yaml))
    if "wandb" in report_to:
        from aha.track.wandb_tracker import WandbTracker

        backends.append(WandbTracker(run_dir, config, wandb_project))
    return Trackers(backends)


def sample_columns(rows: list[dict[str, Any]]) -> list[str]:
    """Every key of the rows, in first-seen order (prompt, completion, reward, advantage for GRPO)."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    return list(columns)
