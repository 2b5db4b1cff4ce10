from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from aha.track import jsonl
from aha.track.metrics import MetricsWriter, read_metrics
from aha.track.plots import plot_metrics


def test_round_trip(tmp_path):
    with MetricsWriter(tmp_path) as w:
        w.log(1, {"reward/mean": 0.5, "tokens": 120})
        w.log(2, {"reward/mean": torch.tensor(0.75), "kl": np.float32(0.25), "lr": torch.tensor(3)})
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert rows == [
        {"step": 1, "reward/mean": 0.5, "tokens": 120},
        {"step": 2, "reward/mean": 0.75, "kl": 0.25, "lr": 3},
    ]
    assert read_metrics(tmp_path) == rows  # a run directory works too


def test_each_line_is_flushed_before_close(tmp_path):
    w = MetricsWriter(tmp_path)
    w.log(7, {"loss": 1.5})
    # read while the writer is still open: the line must already be on disk
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 7, "loss": 1.5}\n'
    w.close()


def test_appends_across_writers(tmp_path):
    with MetricsWriter(tmp_path) as w:
        w.log(1, {"a": 1.0})
    with MetricsWriter(tmp_path) as w:  # a resumed run continues the file
        w.log(2, {"a": 2.0})
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]


def test_non_finite_written_as_null_and_read_as_nan(tmp_path):
    with MetricsWriter(tmp_path) as w:
        w.log(3, {"loss": float("nan"), "grad_norm": torch.tensor(float("inf")), "kl": -math.inf, "ok": 1.0})
    line = (tmp_path / "metrics.jsonl").read_text()
    assert json.loads(line) == {"step": 3, "loss": None, "grad_norm": None, "kl": None, "ok": 1.0}
    assert "NaN" not in line and "Infinity" not in line  # strict JSON
    (row,) = read_metrics(tmp_path)
    assert math.isnan(row["loss"]) and math.isnan(row["grad_norm"]) and math.isnan(row["kl"])
    assert row["ok"] == 1.0


def test_bad_values_raise(tmp_path):
    with MetricsWriter(tmp_path) as w:
        with pytest.raises(TypeError, match="'text'"):
            w.log(1, {"text": "hello"})
        with pytest.raises(TypeError, match="'vec'"):
            w.log(1, {"vec": torch.ones(3)})
        with pytest.raises(ValueError, match="step"):
            w.log(1, {"step": 3})
    assert read_metrics(tmp_path) == []  # nothing half-written


def test_log_after_close_raises(tmp_path):
    w = MetricsWriter(tmp_path)
    w.close()
    with pytest.raises(ValueError, match="closed"):
        w.log(1, {"a": 1.0})


def test_read_reports_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "a": 1}\n\n{"step": 2, "a": \n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:3: invalid JSON"):
        read_metrics(path)
    path.write_text('{"step": 1}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2: expected a JSON object"):
        read_metrics(path)
    path.write_text('{"a": 1}\n')
    with pytest.raises(ValueError, match="no 'step'"):
        read_metrics(path)


TORN = '{"step": 3, "reward/me'  # a line cut short by a crash: the newline is written last, so none


def test_a_torn_last_line_is_dropped_with_a_warning(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "a": 1}\n{"step": 2, "a": 2}\n' + TORN)
    with caplog.at_level("WARNING"):
        rows = read_metrics(path)
    assert [r["step"] for r in rows] == [1, 2]
    assert "metrics.jsonl:3: dropped a torn last line" in caplog.text
    # plotting reads such a file too
    png = plot_metrics(rows, ["a"], tmp_path / "plots.png")
    assert png.stat().st_size > 0


def test_a_malformed_line_before_the_last_is_still_an_error(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n' + TORN + '\n{"step": 4}\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2: invalid JSON"):
        read_metrics(path)


def test_appending_after_a_tear_cuts_the_torn_tail_first(tmp_path, caplog):
    """Else the next record would be glued onto the half line, corrupting the middle of the file."""
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "a": 1}\n' + TORN)
    with caplog.at_level("WARNING"), MetricsWriter(tmp_path) as w:
        w.log(2, {"a": 2.0})
    assert "dropped a torn last line" in caplog.text
    assert path.read_text() == '{"step": 1, "a": 1}\n{"step": 2, "a": 2.0}\n'


def test_appending_after_a_complete_unterminated_record_keeps_it(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "a": 1}')  # whole, only the newline missing (e.g. written by hand)
    with MetricsWriter(tmp_path) as w:
        w.log(2, {"a": 2.0})
    assert [r["step"] for r in read_metrics(path)] == [1, 2]


def test_a_tear_beyond_the_tail_window_is_found(tmp_path, monkeypatch):
    monkeypatch.setattr(jsonl, "_TAIL_BYTES", 8)  # the torn line is longer than the window read
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n' + TORN)
    with MetricsWriter(tmp_path) as w:
        w.log(2, {})
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'
