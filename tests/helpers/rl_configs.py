"""The command-line overrides every tiny-model RL test starts from, so a test lists only what it varies."""

from __future__ import annotations

from pathlib import Path


def tiny_rl_overrides(
    model_dir: Path,
    out: Path,
    *,
    group_size: int,
    prompts_per_step: int,
    train_size: int,
    eval_size: int,
) -> list[str]:
    """A quiet, small GRPO/PPO run on the arithmetic prompts, rewarded by the learnable digit fraction
    (tests/helpers/toy_rewards.py, importable once that folder is on sys.path)."""
    return [
        f"model.path={model_dir}",
        f"run.output_dir={out}",
        "run.progress=false",
        "rewards.functions=[toy_rewards:digit_fraction]",
        "rollout.max_new_tokens=8",
        f"rollout.group_size={group_size}",
        f"train.prompts_per_step={prompts_per_step}",
        "optim.lr=3e-3",
        f"data.arithmetic_train_size={train_size}",
        f"data.arithmetic_eval_size={eval_size}",
        f"eval.num_prompts={eval_size}",
    ]
