"""bench/time_to_accuracy.py runs end to end (a 2-step SFT, one GRPO step per tool), and its verdict is right.

Benchmarks are not tests: nothing here checks speed or accuracy. TRL is the optional `bench` extra; without
it the end to end test runs aha's side only.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from _grpo_runners import RunRecord  # noqa: E402
from time_to_accuracy import summarize_trials, verdict  # noqa: E402


def _record(tool: str, points: list[tuple[float, float]]) -> RunRecord:
    evals = [{"step": 10 * i, "train_time_s": t, "accuracy": a} for i, (t, a) in enumerate(points)]
    return RunRecord(tool=tool, step_s=[1.0], generate_s=[0.5], completion_length=[3.0], evals=evals)


def test_verdict_times_aha_to_trls_best():
    trl = _record("trl", [(0, 0.6), (10, 0.7), (20, 0.8), (30, 0.8)])  # best 0.8, first reached at 20 s
    aha = _record("aha", [(0, 0.6), (4, 0.75), (8, 0.85), (12, 0.9)])  # first >= 0.8 at 8 s
    assert verdict({"trl": trl, "aha": aha}) == {
        "trl_best_accuracy": 0.8,
        "trl_time_to_best_s": 20,
        "aha_time_to_trl_best_s": 8,
    }
    slow = _record("aha", [(0, 0.6), (50, 0.79)])
    assert verdict({"trl": trl, "aha": slow})["aha_time_to_trl_best_s"] is None
    assert verdict({"aha": aha}) is None


def _trial(trl_time: float, aha_time: float | None, aha_step: float, trl_step: float = 0.2) -> dict:
    runs = {"trl": {"step_s_median": trl_step}, "aha": {"step_s_median": aha_step}}
    v = {"trl_best_accuracy": 1.0, "trl_time_to_best_s": trl_time, "aha_time_to_trl_best_s": aha_time}
    return {"runs": runs, "verdict": v}


def test_summary_is_the_median_over_trials_with_never_as_infinitely_late():
    trials = [_trial(10, 4, 0.08), _trial(8, 6, 0.10), _trial(5, None, 0.12)]  # 0.4, 0.75, never
    assert summarize_trials(trials) == {
        "ratios": [0.4, 0.75, None],
        "median_ratio": 0.75,
        "step_time_ratio": 0.5,  # median of 0.4, 0.5, 0.6
    }
    assert (
        summarize_trials([_trial(5, None, 0.1), _trial(5, None, 0.1), _trial(5, 1, 0.1)])["median_ratio"]
        is None
    )
    one_tool = {"runs": {"aha": {"step_s_median": 0.1}}, "verdict": None}
    assert summarize_trials([one_tool]) is None


def test_quick_run_end_to_end(tmp_path):
    # TRL is the optional bench extra (CI installs only dev): without it only aha's side runs.
    tools = ["trl", "aha"] if importlib.util.find_spec("trl") else ["aha"]
    out = tmp_path / "time_to_accuracy.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "time_to_accuracy.py"),
            "--quick",
            "--out",
            str(out),
            "--tools",
            *tools,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["checkpoint"]["sft_steps"] == 2
    [trial] = result["trials"]
    for tool in tools:
        run = trial["runs"][tool]
        assert run["steps"] == 1
        # evaluated before training and after its one step, on the same 8 held-out problems
        assert [e["step"] for e in run["evals"]] == [0, 1]
        assert all(0.0 <= e["accuracy"] <= 1.0 for e in run["evals"])
        assert run["evals"][1]["train_time_s"] > 0
        assert set(run["time_to_accuracy_s"]) == {"0.8", "0.9", "0.95"}
    assert (trial["verdict"] is None) == (len(tools) == 1)
    if len(tools) == 1:
        assert result["summary"] is None
    else:  # no ratio when TRL's best was already the checkpoint's accuracy (likely after 2 SFT steps)
        assert (result["summary"] is None) == (trial["verdict"]["trl_time_to_best_s"] == 0)

    import report

    text = report.write_report(out.parent, tmp_path / "benchmarks.md").read_text()
    assert "python bench/time_to_accuracy.py --quick" in text
    assert (tmp_path / report.TTA_PLOT).exists()
