"""The checks GRPO's and PPO's run configs share (aha.train.rl_config) refuse the same bad values in
both, with the same message, and let the boundary values through."""

from __future__ import annotations

import re

import pytest

from aha.config import ConfigError, load_config
from aha.train.grpo_config import GRPORunConfig
from aha.train.ppo_config import PPORunConfig

CONFIGS = [GRPORunConfig, PPORunConfig]


@pytest.mark.parametrize("cls", CONFIGS)
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["algo.mu=0"], "algo: mu and minibatches must be >= 1 (from the command line)"),
        (["algo.minibatches=0"], "algo: mu and minibatches must be >= 1 (from the command line)"),
        (["algo.clip_low=1"], "algo: need 0 <= clip_low < 1 and clip_high >= 0 (from the command line)"),
        (["algo.clip_high=-0.1"], "algo: need 0 <= clip_low < 1 and clip_high >= 0 (from the command line)"),
        (["train.steps=5", "optim.warmup_steps=6"], "optim.warmup_steps=6 exceeds train.steps=5; lower it"),
        (
            ["track.hacking.stop=true"],
            "track.hacking.stop needs a watch: name rewards.monitors and set track.hacking.patience > 0",
        ),
        (
            ["rewards.monitors=[exact_answer]", "track.hacking.patience=2", "eval.every=0"],
            "track.hacking watches evaluations, and eval.every=0 gives only the first and the last; "
            "set eval.every > 0, or track.hacking.patience=0 to only log the monitors",
        ),
    ],
)
def test_both_run_configs_refuse_the_shared_bad_values_alike(cls, overrides, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        load_config(cls, overrides=overrides)


@pytest.mark.parametrize("cls", CONFIGS)
def test_both_run_configs_accept_the_shared_boundary_values(cls):
    cfg = load_config(
        cls, overrides=["algo.clip_low=0", "algo.clip_high=0", "train.steps=5", "optim.warmup_steps=5"]
    )
    assert (cfg.algo.clip_low, cfg.algo.clip_high, cfg.optim.warmup_steps) == (0.0, 0.0, 5)
