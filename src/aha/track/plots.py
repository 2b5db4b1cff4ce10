"""Training curves from metrics rows, saved as a PNG.

Figures are built with matplotlib's object API on an Agg canvas, never through pyplot: no global
state, no GUI backend (headless servers, tests), nothing to close afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PlotKey = str | tuple[str, ...]


def _points(metrics: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of the rows where `key` holds a finite number."""
    steps, values = [], []
    for row in metrics:
        value = row.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        steps.append(row["step"])
        values.append(float(value))
    return steps, values


def metrics_figure(metrics: Sequence[dict[str, Any]], keys: Sequence[PlotKey], title: str = "") -> Figure:
    """One subplot per entry of `keys` (a tuple of names draws several curves in one subplot), x = step.
    Names with no finite value in any row are skipped; entries left empty are dropped. Raises
    ValueError when nothing at all can be plotted."""
    for i, row in enumerate(metrics):
        if "step" not in row:
            raise ValueError(f"metrics row {i} has no 'step' field")
    panels: list[list[tuple[str, list[float], list[float]]]] = []
    for entry in keys:
        names = (entry,) if isinstance(entry, str) else tuple(entry)
        curves = [(name, *_points(metrics, name)) for name in names]
        curves = [c for c in curves if c[1]]
        if curves:
            panels.append(curves)
    if not panels:
        available = sorted({k for row in metrics for k in row if k != "step"})
        raise ValueError(f"none of the keys {list(keys)} has a value to plot; available: {available}")

    # Imported here: matplotlib adds ~26 MB of resident memory and ~0.3 s of start-up to every
    # process that imports the trainers, and a run with track.plot=false never draws.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ncols = 1 if len(panels) == 1 else 2
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(6 * ncols, 3.2 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, curves in zip(axes, panels, strict=False):
        for name, steps, values in curves:
            ax.plot(steps, values, label=name, marker="." if len(steps) < 30 else None)
        ax.set_title(", ".join(name for name, _, _ in curves), fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(curves) > 1:
            ax.legend(fontsize=8)
    for ax in axes[len(panels) :]:
        fig.delaxes(ax)
    if title:
        fig.suptitle(title)
    return fig


def plot_metrics(
    metrics: Sequence[dict[str, Any]],
    keys: Sequence[PlotKey],
    out_png: Path | str,
    title: str = "",
) -> Path:
    """Draw `metrics_figure(metrics, keys, title)` to out_png (parent folders created) and return its path."""
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    metrics_figure(metrics, keys, title).savefig(out_png, dpi=100)
    return out_png
