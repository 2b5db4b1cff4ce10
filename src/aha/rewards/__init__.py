"""Rewards: the reward-function contract and its composition (base), and the built-in verifiable rewards.

Importing this package registers the built-ins: exact_answer, math_answer, gsm8k, countdown,
format_think_answer, format_think_answer_lenient and reward_model (a trained reward model). See docs/rewards.md.
"""

from aha.rewards import countdown, exact, math_answer, reward_model, think_format  # noqa: F401  (registers the built-ins)
from aha.rewards.base import (
    BUILTIN_REWARDS,
    RewardError,
    RewardResult,
    RewardScores,
    RewardSpec,
    compute_rewards,
    make_reward_specs,
    register_reward,
    resolve_reward_fn,
)

__all__ = [
    "BUILTIN_REWARDS",
    "RewardError",
    "RewardResult",
    "RewardScores",
    "RewardSpec",
    "compute_rewards",
    "make_reward_specs",
    "register_reward",
    "resolve_reward_fn",
]
