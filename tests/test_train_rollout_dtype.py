"""rollout.dtype: GRPO with bf16 rollouts on fp32 training learns, logs the rollout/trainer gap and
corrects it with truncated importance sampling; bad values are refused at start-up."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.rl_configs import tiny_rl_overrides

from aha.config import ConfigError, load_config
from aha.models.tiny import create_tiny_model
from aha.train.grpo import GRPORunConfig, run_grpo
from aha.train.precision import Precision, rollout_precision

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
        "model.precision=fp32",
        "run.seed=0",
        "algo.beta=0.01",
        "eval.every=0",
        "track.sample_every=0",
        "track.plot=false",
    ]
    return load_config(GRPORunConfig, overrides=[*base, *overrides])


def test_bf16_rollouts_learn_and_log_the_gap(tiny_dir, tmp_path):
    """The built-in task's learnable reward (fraction of digit characters) rises from the random model's
    ~0.1 with bf16 rollouts and fp32 training, as it does with fp32 rollouts (test_train_grpo), and every
    step logs a real but small rollout/trainer gap."""
    cfg = _config(tiny_dir, tmp_path / "run", "train.steps=20", "rollout.dtype=bfloat16")
    result = run_grpo(cfg)
    steps = [row for row in result.history if "reward/mean" in row]
    rewards = [row["reward/mean"] for row in steps]
    assert len(rewards) == 20
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert first < 0.3, f"the random model already scores {first:.2f}; the test would prove nothing"
    assert last > first + 0.3, f"mean reward went from {first:.2f} to {last:.2f}"
    assert result.final_eval.reward_mean > 0.5
    for row in steps:
        # bf16 keeps 8 significant bits: rounding moves log-probs, but by far less than the clip range.
        assert 0 < row["rollout/abs_log_ratio_mean"] < 0.1, row
        assert row["rollout/abs_log_ratio_max"] >= row["rollout/abs_log_ratio_mean"]
        assert 0 < row["rollout/kl"] < 0.01
        assert 0 <= row["rollout/capped_frac"] <= 1


def test_matching_precisions_carry_no_correction(tiny_dir, tmp_path):
    """auto and float32 rollouts of an fp32 run are on policy: no rollout/* metrics, no correction."""
    for dtype in ("auto", "float32"):
        cfg = _config(tiny_dir, tmp_path / dtype, "train.steps=1", f"rollout.dtype={dtype}")
        row = next(r for r in run_grpo(cfg).history if "reward/mean" in r)
        assert not [k for k in row if k.startswith("rollout/")], row


def test_rollout_precision_resolution():
    fp32, bf16 = Precision("fp32"), Precision("bf16-mixed")
    assert rollout_precision("auto", fp32) is fp32
    assert rollout_precision("float32", fp32) is fp32
    assert rollout_precision("bfloat16", bf16) is bf16
    assert rollout_precision("bfloat16", fp32).compute_dtype == torch.bfloat16
    assert rollout_precision("float32", bf16).compute_dtype is None


def test_bad_values_are_refused_at_start_up(tiny_dir, tmp_path):
    with pytest.raises(ConfigError, match="rollout.dtype"):
        _config(tiny_dir, tmp_path / "a", "rollout.dtype=float16")
    with pytest.raises(ConfigError, match="rollout_is_cap"):
        _config(tiny_dir, tmp_path / "b", "algo.rollout_is_cap=-1")
