"""Advantage estimators: group-relative (GRPO, Dr. GRPO, RLOO) for outcome rewards, GAE for PPO.

Group estimators take one scalar reward per completion, laid out group-contiguously: the G
completions of prompt 0 first, then the G of prompt 1, ... ([p0c0 .. p0c(G-1), p1c0, ...]). They
return one advantage per completion; the trainer broadcasts it over that completion's tokens.

Estimators are registered by name (like verl's `register_adv_est`) so a config string picks one and
a new variant is one function plus one test:

    @register_advantage_estimator("my_est")
    def my_est(rewards, group_size, eps=1e-6): ...
"""

from __future__ import annotations

from collections.abc import Callable

import torch

BASELINES = ("mean", "loo")
SCALES = ("std", "none")

AdvantageEstimator = Callable[..., torch.Tensor]
ADVANTAGE_ESTIMATORS: dict[str, AdvantageEstimator] = {}


def _grouped(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Rewards [N] as float [N // G, G], validating the layout."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [N], got shape {tuple(rewards.shape)}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    n = rewards.shape[0]
    if n % group_size != 0:
        raise ValueError(
            f"number of rewards ({n}) is not a multiple of group_size ({group_size}); rewards must hold "
            "group_size completions for every prompt, group-contiguous"
        )
    r = rewards if rewards.is_floating_point() else rewards.float()
    return r.view(n // group_size, group_size)


def zero_variance_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Bool [N // G]: True for groups whose rewards are all identical (no learning signal in GRPO).

    Exact equality (max == min), so a group is flagged only when its advantages are exactly 0.
    """
    g = _grouped(rewards, group_size)
    return g.amax(dim=1) == g.amin(dim=1)


def group_advantages(
    rewards: torch.Tensor,
    group_size: int,
    *,
    baseline: str = "mean",
    scale: str = "std",
    eps: float = 1e-6,
) -> torch.Tensor:
    """Group-relative advantages [N].

    baseline "mean": r_i - mean(group) (GRPO). baseline "loo": r_i - mean of the other G-1 rewards
    (RLOO), which equals G/(G-1) * (r_i - mean(group)).
    scale "std": divide by (std(group) + eps) with the *unbiased* std (torch's default, as TRL and
    verl use); "none": no division (Dr. GRPO argues the std division over-weights near-uniform
    groups, i.e. too-easy or too-hard prompts).

    Groups whose rewards are all equal get exactly 0 (never NaN, even for G == 1 where the unbiased
    std is undefined).
    """
    if baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; expected one of {BASELINES}")
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; expected one of {SCALES}")
    g = _grouped(rewards, group_size)
    if baseline == "loo" and group_size < 2:
        raise ValueError("baseline 'loo' needs group_size >= 2 (the other completions form the baseline)")

    centred = g - g.mean(dim=1, keepdim=True)
    if baseline == "loo":
        centred = centred * (group_size / (group_size - 1))
    if scale == "std":
        std = g.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(g[:, :1])
        centred = centred / (std + eps)

    flat = zero_variance_groups(rewards, group_size)
    adv = torch.where(flat[:, None], torch.zeros_like(centred), centred)
    return adv.reshape(-1)


def register_advantage_estimator(name: str) -> Callable[[AdvantageEstimator], AdvantageEstimator]:
    """Decorator registering `fn(rewards, group_size, eps=...) -> advantages` under `name`."""

    def decorator(fn: AdvantageEstimator) -> AdvantageEstimator:
        if name in ADVANTAGE_ESTIMATORS:
            raise ValueError(f"advantage estimator {name!r} is already registered")
        ADVANTAGE_ESTIMATORS[name] = fn
        return fn

    return decorator


def get_advantage_estimator(name: str) -> AdvantageEstimator:
    """The estimator registered under `name`, or a ValueError listing the known names."""
    try:
        return ADVANTAGE_ESTIMATORS[name]
    except KeyError:
        known = ", ".join(sorted(ADVANTAGE_ESTIMATORS))
        raise ValueError(f"unknown advantage estimator {name!r}; known: {known}") from None


@register_advantage_estimator("grpo")
def grpo_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """GRPO (DeepSeekMath): (r - group mean) / (group std + eps)."""
    return group_advantages(rewards, group_size, baseline="mean", scale="std", eps=eps)


@register_advantage_estimator("dr_grpo")
def dr_grpo_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """Dr. GRPO: r - group mean, no std scaling (eps unused, kept for the shared signature)."""
    return group_advantages(rewards, group_size, baseline="mean", scale="none", eps=eps)


@register_advantage_estimator("rloo")
def rloo_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """RLOO: r - mean of the other G-1 rewards in the group (eps unused)."""
    return group_advantages(rewards, group_size, baseline="loo", scale="none", eps=eps)


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised Advantage Estimation over per-token rewards [N, T] and critic values [N, T].

    delta_t = r_t + gamma * V_{t'} - V_t and A_t = delta_t + gamma * lam * A_{t'}, where t' is the next
    *real* token: masked positions are skipped (they neither contribute nor break the recursion) and
    the value after a sequence's last real token is 0 (the episode ends there).
    Right-padded rows whose last real token is not the last column, and holes inside a row (masked
    tool/observation tokens, as verl skips them), are both handled. Returns (advantages,
    returns = advantages + values), both 0 at masked positions and detached.
    No whitening here: all three anchors whiten the advantages afterwards (`masked_whiten`).

    Defaults in the anchors: gamma 1 everywhere; lam 0.95 in TRL (and OpenAI's 2019 code), 1 in verl
    and OpenRLHF (then returns are Monte-Carlo reward-to-go and the critic is only a baseline).
    Sequence rewards go on the last real token (`reward_shaping.sequence_rewards_to_tokens`).
    """
    if not (0.0 <= gamma <= 1.0 and 0.0 <= lam <= 1.0):
        raise ValueError(f"gamma and lam must be in [0, 1], got gamma={gamma}, lam={lam}")
    if rewards.shape != values.shape or rewards.dim() != 2:
        raise ValueError(
            f"rewards and values must both be [N, T]; got {tuple(rewards.shape)} and {tuple(values.shape)}"
        )
    if mask.shape != rewards.shape:
        raise ValueError(f"mask {tuple(mask.shape)} must match rewards {tuple(rewards.shape)}")
    m = (mask if mask.dtype == torch.bool else mask != 0).to(rewards.device)
    dtype = torch.promote_types(torch.promote_types(rewards.dtype, values.dtype), torch.float32)
    rewards, values = rewards.detach().to(dtype), values.detach().to(dtype)
    n, t_len = rewards.shape
    next_value = torch.zeros(n, dtype=dtype, device=rewards.device)
    next_adv = torch.zeros(n, dtype=dtype, device=rewards.device)
    advantages = torch.zeros_like(rewards)
    for t in reversed(range(t_len)):
        real = m[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv_t = delta + gamma * lam * next_adv
        advantages[:, t] = torch.where(real, adv_t, torch.zeros_like(adv_t))
        next_value = torch.where(real, values[:, t], next_value)
        next_adv = torch.where(real, adv_t, next_adv)
    returns = torch.where(m, advantages + values, torch.zeros_like(values))
    return advantages, returns
