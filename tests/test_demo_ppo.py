"""`aha demo algo=ppo` end to end (quick preset): PPO in place of GRPO beats the SFT model it starts
from on held-out problems, its critic's value loss falls, and the same report is written."""

from __future__ import annotations

import math
import statistics

import pytest

from aha.config import load_config
from aha.demo import DemoConfig, run_demo

# Measured on the quick preset, seed 0 (2-CPU AMD EPYC, shared with other jobs): held-out greedy accuracy
# 52.0% after SFT -> 76.5% after 80 PPO steps (+24.5 points; GRPO from the same SFT model in
# tests/test_demo_pipeline.py: 76.0%). The bar is 20 points, above the GRPO test's 14 (80% of GRPO's
# smallest gain over three seeds): PPO was measured on one seed only, so this margin is thinner.
MIN_GAIN = 0.20


@pytest.fixture(scope="module")
def quick_ppo_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo-ppo") / "run"
    overrides = ["algo=ppo", "quick=true", f"output_dir={out}", "progress=false"]
    return run_demo(load_config(DemoConfig, overrides=overrides))


def test_ppo_beats_sft_on_heldout_problems(quick_ppo_demo):
    sft, rl = quick_ppo_demo.sft.greedy.accuracy, quick_ppo_demo.rl.greedy.accuracy
    assert rl >= sft + MIN_GAIN, f"held-out greedy accuracy: SFT {sft:.3f}, after PPO {rl:.3f}"


def test_value_loss_falls_and_explained_variance_is_logged(quick_ppo_demo):
    rows = [r for r in quick_ppo_demo.grpo_history if "critic/value_loss" in r]
    first = statistics.mean(r["critic/value_loss"] for r in rows[:5])
    last = statistics.mean(r["critic/value_loss"] for r in rows[-10:])
    # the fresh head starts far from the returns; a critic that learns nothing stays there
    assert last < 0.5 * first, f"value loss: first 5 steps {first:.3f}, last 10 {last:.3f}"
    assert all(math.isfinite(r["critic/explained_variance"]) for r in rows)


def test_the_report_names_ppo(quick_ppo_demo):
    report = (quick_ppo_demo.run_dir / "report.md").read_text()
    assert "PPO steps" in report and (quick_ppo_demo.run_dir / "ppo" / "metrics.jsonl").is_file()
