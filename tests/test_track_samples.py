from __future__ import annotations

import json

import pytest
import torch

from aha.track.samples import SampleWriter, format_samples_table, read_samples


def test_round_trip(tmp_path):
    rows = [
        {"prompt": "2+2=", "completion": "<answer>4</answer>", "reward": 1.0},
        {"prompt": "3+5=", "completion": "9", "reward": torch.tensor(0.0), "lengths": torch.tensor([1, 2])},
    ]
    with SampleWriter(tmp_path) as w:
        w.log(5, rows)
        w.log(6, rows[:1])
    lines = (tmp_path / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 3
    assert json.loads(lines[1]) == {
        "step": 5,
        "prompt": "3+5=",
        "completion": "9",
        "reward": 0.0,
        "lengths": [1, 2],
    }
    assert [r["step"] for r in read_samples(tmp_path)] == [5, 5, 6]
    assert read_samples(tmp_path / "samples.jsonl")[0]["completion"] == "<answer>4</answer>"


def test_nan_reward_written_as_null(tmp_path):
    with SampleWriter(tmp_path) as w:
        w.log(1, [{"prompt": "p", "completion": "c", "reward": float("nan")}])
    assert json.loads((tmp_path / "samples.jsonl").read_text())["reward"] is None


def test_step_key_in_row_raises(tmp_path):
    with SampleWriter(tmp_path) as w, pytest.raises(ValueError, match="step"):
        w.log(1, [{"step": 2}])


def test_table_layout():
    rows = [
        {"prompt": "2+2=", "completion": "4", "reward": 1.0},
        {"prompt": "10+15=", "completion": "line one\nline two", "reward": 0.0},
    ]
    table = format_samples_table(rows)
    assert table.splitlines() == [
        "prompt | completion        | reward",
        "-------+-------------------+-------",
        "2+2=   | 4                 | 1",
        "10+15= | line one⏎line two | 0",
    ]


def test_table_truncates_rows_and_cells():
    rows = [{"prompt": "p" * 50, "completion": "c" * 10, "reward": 0.123456} for _ in range(6)]
    lines = format_samples_table(rows, max_rows=2, max_chars=8).splitlines()
    assert len(lines) == 2 + 2 + 1  # header, rule, 2 rows, "... 4 more"
    assert lines[2] == "ppppppp… | ccccccc…   | 0.123"  # the column is as wide as its header
    assert lines[-1] == "... 4 more"
    assert all(len(cell.strip()) <= 8 for line in lines[2:4] for cell in line.split("|"))


def test_table_missing_keys_are_empty():
    table = format_samples_table([{"prompt": "hi"}])
    assert table.splitlines()[2] == "hi     |            |"
