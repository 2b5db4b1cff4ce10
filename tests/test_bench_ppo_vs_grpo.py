"""bench/ppo_vs_grpo.py runs end to end (a 2-step SFT, 3 steps of each algorithm), its summary's ratios
are right, and its docs section renders. Benchmarks are not tests: nothing here checks speed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from _report_ppo import render_ppo_vs_grpo  # noqa: E402
from ppo_vs_grpo import main, summarize  # noqa: E402


def _run(step_s: float, rss: int, evals: list[tuple[int, float, float]], critic: bool) -> dict:
    states = {"policy_weights": 100, "policy_optimizer": 200}
    if critic:
        states.update({"critic_weights": 90, "critic_optimizer": 180})
    return {
        "step_s": [step_s, step_s * 3, step_s],
        "cpu_s": [step_s / 2] * 3,
        "generate_s": [0.1] * 3,
        "advantage_s": [0.2] * 3,
        "update_s": [0.5] * 3,
        "evals": [{"step": s, "train_time_s": t, "accuracy": a} for s, t, a in evals],
        "peak_rss_bytes": rss,
        "state_bytes": states,
        "load_average_before": [1.0, 1.0, 1.0],
    }


def test_summary_ratios():
    runs = {
        "grpo": _run(1.0, 1000, [(0, 0.0, 0.5), (10, 10.0, 0.96), (20, 20.0, 0.97)], critic=False),
        "ppo": _run(2.0, 1500, [(0, 0.0, 0.5), (10, 20.0, 0.9), (20, 40.0, 0.95)], critic=True),
    }
    s = summarize(runs)
    assert s["grpo"]["steps_to_target"] == 10 and s["ppo"]["steps_to_target"] == 20
    r = s["ppo_over_grpo"]
    assert r["step_s_median"] == 2.0 and r["peak_rss_bytes"] == 1.5 and r["state_bytes"] == 570 / 300
    assert r["steps_to_target"] == 2.0 and r["time_to_target_s"] == 4.0
    runs["ppo"]["evals"] = [{"step": 0, "train_time_s": 0.0, "accuracy": 0.5}]  # never reached
    assert summarize(runs)["ppo_over_grpo"]["steps_to_target"] is None
    page = render_ppo_vs_grpo(
        {
            "summary": s,
            "runs": runs,
            "machine": {"cpu": "x", "logical_cpus": 2},
            "checkpoint": {},
            "steps": 20,
            "eval_every": 10,
            "target_accuracy": 0.95,
        }
    )
    assert "| wall s/step (median) | 1.000 | 2.000 | 2.00x |" in page
    assert r["cpu_s_median"] == 2.0 and "for compute, CPU seconds per step, it holds (2.00x" in page


@pytest.mark.filterwarnings("ignore")
def test_quick_run_end_to_end(tmp_path, capsys):
    assert main(["--quick", "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert '"ppo_over_grpo"' in out
    assert (tmp_path / "ppo" / "run" / "checkpoints").is_dir() and (
        tmp_path / "grpo" / "record.json"
    ).is_file()
