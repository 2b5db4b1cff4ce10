"""rewards.monitors in GRPO: logged every step and at evaluation, never in the optimised total; the
hacking watch fires, keeps the model best by the monitor, and with track.hacking.stop ends the run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.rl_configs import tiny_rl_overrides

from aha.config import load_config
from aha.models.tiny import create_tiny_model
from aha.train.checkpoint import latest_checkpoint
from aha.train.grpo import GRPORunConfig, run_grpo

HELPERS = Path(__file__).parent / "helpers"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return create_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(autouse=True)
def _toy_rewards_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(HELPERS))


def _config(tiny_dir: Path, out: Path, *overrides: str) -> GRPORunConfig:
    base = [
        *tiny_rl_overrides(tiny_dir, out, group_size=8, prompts_per_step=8, train_size=200, eval_size=16),
        "rewards.monitors=[toy_rewards:non_digit_fraction]",
        "algo.beta=0.01",
        "eval.greedy=false",
        "track.sample_every=0",
        "track.plot=false",
    ]
    return load_config(GRPORunConfig, overrides=[*base, *overrides])


def test_monitors_are_logged_and_not_optimised(tiny_dir, tmp_path):
    """The total is the optimised function alone; the monitor is its mirror image and is logged each
    step (training batch) and at each evaluation (held-out prompts); with patience 0 there is no watch."""
    cfg = _config(tiny_dir, tmp_path / "run", "train.steps=4", "eval.every=2", "track.hacking.patience=0")
    result = run_grpo(cfg)
    steps = [row for row in result.history if row["step"] > 0]
    assert len(steps) == 4
    for row in steps:
        assert row["reward/mean"] == pytest.approx(row["reward/digit_fraction/mean"], abs=1e-6)
        # the monitor is 1 - reward on the same completions: never added to the total
        assert row["monitor/non_digit_fraction"] == pytest.approx(1 - row["reward/mean"], abs=1e-5)
        assert "reward/non_digit_fraction/mean" not in row
    evals = [row for row in result.history if "eval/reward_mean" in row]
    assert [row["step"] for row in evals] == [0, 2, 4]
    for row in evals:
        assert row["eval/monitor/non_digit_fraction"] == pytest.approx(1 - row["eval/reward_mean"], abs=1e-5)
    assert not (result.run_dir / "best-by-monitor").exists()
    assert result.stop_reason is None


def test_the_watch_fires_keeps_the_best_model_and_stops_the_run(tiny_dir, tmp_path, capsys):
    """Optimising digits while watching non-digits: the reward rises (as test_train_grpo measures), so
    the monitor falls, and the watch must fire and, with stop=true, end the run early."""
    cfg = _config(
        tiny_dir,
        tmp_path / "run",
        "train.steps=30",
        "eval.every=2",
        "track.hacking.patience=2",
        "track.hacking.stop=true",
    )
    result = run_grpo(cfg)
    fired = [row for row in result.history if "hacking/non_digit_fraction/fired" in row]
    assert len(fired) == 1, "the watch fires once"
    stop_step = fired[0]["step"]
    assert stop_step < 30 and result.history[-1]["step"] == stop_step, "the run ended at the firing step"
    assert result.stop_reason is not None and "non_digit_fraction" in result.stop_reason
    assert "reward hacking suspected" in capsys.readouterr().err
    assert latest_checkpoint(result.run_dir).name == f"step-{stop_step:08d}", "saved where it stopped"
    best_step = int(fired[0]["hacking/non_digit_fraction/best_step"])
    best = json.loads((result.run_dir / "best-by-monitor" / "non_digit_fraction" / "best.json").read_text())
    assert best["step"] == best_step < stop_step
    monitor = {
        row["step"]: row["eval/monitor/non_digit_fraction"]
        for row in result.history
        if "eval/monitor/non_digit_fraction" in row
    }
    assert best["monitor"] == pytest.approx(max(monitor.values()))
    assert (result.run_dir / "best-by-monitor" / "non_digit_fraction" / "config.json").exists()


def test_the_watch_refuses_a_monitor_it_does_not_have():
    from aha.config import ConfigError
    from aha.track.hacking import HackingConfig
    from aha.train.monitors import RunMonitors
    from aha.train.rl_config import RewardConfig

    rewards = RewardConfig(functions=["exact_answer"], monitors=["exact_answer"])
    with pytest.raises(ConfigError, match=r"track.hacking.monitors names \['gold'\]"):
        RunMonitors.start(None, rewards, HackingConfig(monitors=["gold"]))
    assert RunMonitors.start(None, rewards, HackingConfig(monitors=["exact_answer"])).watch is not None
    assert RunMonitors.start(None, rewards, HackingConfig(patience=0)).watch is None
