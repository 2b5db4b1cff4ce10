"""Per-token rewards for PPO: the sequence score on the last completion token, the KL to the reference
folded into the rewards (InstructGPT), and length penalties for completions cut off at the limit.

All take right-padded [N, T] completion tensors with a completion mask; a row's real tokens need not
reach the last column, and masked positions come back as 0.

KL placement. PPO-RLHF (Ziegler et al. 2019, InstructGPT; OpenRLHF's and TRL's default) puts
-beta * kl_t into the per-token rewards (`kl_shaped_rewards`), where GAE discounts it and advantage
whitening rescales it with the score. GRPO instead adds beta * kl_t to the loss
(`train/policy_update.minibatch_loss`; verl's `use_kl_loss`, and verl's PPO default
`use_kl_in_reward: false`). The two are not equivalent; a trainer picks one, never both.
"""

from __future__ import annotations

import torch

from aha.algos.kl import kl_penalty
from aha.algos.masked import as_bool_mask


def _check_rows(x: torch.Tensor, mask: torch.Tensor, name: str) -> torch.Tensor:
    if x.dim() != 1 or mask.dim() != 2 or x.shape[0] != mask.shape[0]:
        raise ValueError(f"{name} must be [N] and mask [N, T]; got {tuple(x.shape)} and {tuple(mask.shape)}")
    return as_bool_mask(mask, mask)


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Long [N]: the column of each row's last real token (right padding or holes allowed).

    Raises for a row with no real token: its reward would have nowhere to go.
    """
    m = as_bool_mask(mask, mask)
    if m.dim() != 2:
        raise ValueError(f"mask must be [N, T], got {tuple(mask.shape)}")
    empty = ~m.any(dim=-1)
    if empty.any():
        rows = empty.nonzero().flatten().tolist()
        raise ValueError(f"rows {rows} have no real completion token; their reward cannot be placed")
    t_len = m.shape[-1]
    return t_len - 1 - m.flip(-1).long().argmax(dim=-1)


def sequence_rewards_to_tokens(
    scores: torch.Tensor, mask: torch.Tensor, clamp: tuple[float, float] | None = None
) -> torch.Tensor:
    """Float [N, T]: each row's score [N] on its last real completion token, 0 elsewhere.

    The last real token is where the reward model has read the whole answer (OpenRLHF
    `compute_reward` places it there too, at the last action-mask token). `clamp=(low, high)` clips
    the scores first, as OpenRLHF's `--reward.clip_range` (default (-10, 10)); None leaves them as is
    (TRL, verl).
    """
    m = _check_rows(scores, mask, "scores")
    s = scores.to(torch.promote_types(scores.dtype, torch.float32))
    if clamp is not None:
        low, high = clamp
        if low > high:
            raise ValueError(f"clamp=(low, high) needs low <= high, got {clamp}")
        s = s.clamp(low, high)
    out = torch.zeros(m.shape, dtype=s.dtype, device=s.device)
    out[torch.arange(m.shape[0], device=s.device), last_token_index(m).to(s.device)] = s
    return out


def kl_shaped_rewards(
    token_rewards: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    estimator: str = "k1",
) -> tuple[torch.Tensor, torch.Tensor]:
    """InstructGPT's per-token reward r_t - kl_coef * kl_t over [N, T]; returns (rewards, kl), both
    detached and 0 where masked (`kl` is for metrics and the adaptive KL controller).

    `logprobs` are the rollout (old) policy's: rewards are fixed before the update starts (verl's
    `apply_kl_penalty` uses old_log_prob). Estimator default k1 = log pi - log ref, the default of TRL's
    PPO (`kl_estimator k1`) and of OpenRLHF; k1 can be negative per token, its
    expectation is the KL. Anchor coefficients: TRL 0.05, OpenRLHF 0.01 (init), verl 0.001.
    """
    if not (token_rewards.shape == logprobs.shape == ref_logprobs.shape) or logprobs.dim() != 2:
        raise ValueError(
            f"token_rewards, logprobs and ref_logprobs must all be [N, T]; got {tuple(token_rewards.shape)}, "
            f"{tuple(logprobs.shape)} and {tuple(ref_logprobs.shape)}"
        )
    if kl_coef < 0:
        raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
    m = as_bool_mask(mask, logprobs)
    zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    # where() before the estimator: padding log-probs may be inf/NaN and inf - inf is NaN.
    lp, ref = torch.where(m, logprobs.detach(), zero), torch.where(m, ref_logprobs.detach(), zero)
    kl = torch.where(m, kl_penalty(lp, ref, estimator), zero)
    rewards = torch.where(m, token_rewards.detach() - kl_coef * kl, zero)
    return rewards, kl


def truncation_penalty(scores: torch.Tensor, truncated: torch.Tensor, penalty: float) -> torch.Tensor:
    """Scores [N] minus `penalty` for completions that hit the length limit without EOS (`truncated`
    [N] bool, as the rollout reports it). TRL's `missing_eos_penalty` (default None = off); OpenAI's
    2019 code gave such samples a fixed score of -1 instead."""
    if scores.shape != truncated.shape or scores.dim() != 1:
        raise ValueError(
            f"scores and truncated must both be [N]; got {tuple(scores.shape)} and {tuple(truncated.shape)}"
        )
    if penalty < 0:
        raise ValueError(f"penalty must be >= 0 (it is subtracted), got {penalty}")
    return scores - penalty * truncated.to(scores.dtype if scores.is_floating_point() else torch.float32)


def soft_overlong_penalty(
    lengths: torch.Tensor, max_len: int, buffer: int, factor: float = 1.0
) -> torch.Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, arXiv 2503.14476), a reward term [N] to add:
    0 for length <= max_len - buffer, then falling linearly to -factor at max_len:
    -factor * (length - (max_len - buffer)) / buffer, and -factor beyond max_len.

    Unlike `truncation_penalty` it depends on length only (a long answer that did end is penalised
    too). DAPO used max_len 20480 with a 4096 buffer and factor 1; verl's DAPO reward manager has the
    same form (`overlong_buffer_cfg.len`, `.penalty_factor`).
    """
    if lengths.dim() != 1:
        raise ValueError(f"lengths must be [N], got {tuple(lengths.shape)}")
    if not (0 < buffer <= max_len):
        raise ValueError(f"need 0 < buffer <= max_len, got buffer={buffer}, max_len={max_len}")
    if factor < 0:
        raise ValueError(f"factor must be >= 0, got {factor}")
    over = (lengths.to(torch.float32) - (max_len - buffer)).clamp(0.0, float(buffer))
    return -factor * over / buffer
