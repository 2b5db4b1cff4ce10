from __future__ import annotations

import math
import subprocess
import sys

import pytest

from aha.track.plots import metrics_figure, plot_metrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

ROWS = [
    {"step": 1, "reward/mean": 0.1, "loss": 2.0},
    {"step": 2, "reward/mean": 0.3, "loss": math.nan, "eval/accuracy": 0.2},
    {"step": 3, "reward/mean": 0.6, "loss": 1.0},
    {"step": 4, "reward/mean": 0.7, "loss": 0.5, "eval/accuracy": 0.5},
]


def test_png_written(tmp_path):
    out = plot_metrics(ROWS, ["reward/mean", "loss"], tmp_path / "plots" / "train.png", title="run")
    assert out == tmp_path / "plots" / "train.png"
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_one_axes_per_key_and_tuple_shares_a_subplot():
    fig = metrics_figure(ROWS, [("reward/mean", "eval/accuracy"), "loss", "missing"])
    axes = fig.get_axes()
    assert len(axes) == 2  # "missing" is skipped
    assert [len(ax.get_lines()) for ax in axes] == [2, 1]
    eval_line = axes[0].get_lines()[1]
    assert list(eval_line.get_xdata()) == [2, 4]  # only rows that have the key
    loss_line = axes[1].get_lines()[0]
    assert list(loss_line.get_xdata()) == [1, 3, 4]  # the NaN at step 2 is skipped
    assert list(loss_line.get_ydata()) == [2.0, 1.0, 0.5]


def test_odd_number_of_panels_leaves_no_empty_axes():
    assert len(metrics_figure(ROWS, ["reward/mean", "loss", "eval/accuracy"]).get_axes()) == 3
    assert len(metrics_figure(ROWS, ["loss"]).get_axes()) == 1


def test_nothing_to_plot_raises(tmp_path):
    with pytest.raises(ValueError, match=r"available: \['eval/accuracy', 'loss', 'reward/mean'\]"):
        plot_metrics(ROWS, ["nope", ("also", "not")], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
    with pytest.raises(ValueError, match="no 'step'"):
        metrics_figure([{"loss": 1.0}], ["loss"])


def test_trainers_import_matplotlib_only_when_they_draw():
    """matplotlib costs every training process ~26 MB of resident memory (the GRPO benchmark compares
    peak RSS with TRL's), so importing the trainers must not load it."""
    code = "import sys, aha.train.grpo, aha.train.sft; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
