"""PPO-style clipped policy loss (token- or GSPO's sequence-level importance ratio), the
loss-aggregation variants of GRPO / DAPO / Dr. GRPO, the clipped value loss for PPO's critic and the
entropy bonus.

All take padded [N, T] tensors plus a completion mask; masked positions contribute nothing.
"""

from __future__ import annotations

import torch

from aha.algos.masked import as_bool_mask, masked_mean, masked_sum

LOSS_AGG_MODES = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm")
IMPORTANCE_RATIOS = ("token", "sequence")

# exp() of a log-ratio above ~88 overflows float32; a ratio of e^20 is already absurd (the clip makes
# it irrelevant for the loss), so clamping only protects against inf * 0 = NaN.
_MAX_LOG_RATIO = 20.0


def clipped_surrogate(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    importance_ratio: str = "token",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token PPO loss -min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A), 0 where masked.

    importance_ratio "token" (PPO / GRPO): ratio_t = exp(logprobs_t - old_logprobs_t).
    "sequence" (GSPO, Zheng et al. 2025, arXiv 2507.18071): every token of sequence i gets the value
    s_i = exp(mean over i's real tokens of (logprobs - old_logprobs)), the length-normalised sequence
    likelihood ratio, so a sequence is clipped (or not) as a whole. It is built as
    exp(logprobs_t - sg(logprobs_t) + sg(log s_i)) ("GSPO-token", verl's `compute_policy_loss_gspo`):
    the value is s_i and d ratio_t / d logprobs_t = s_i, so with one advantage per sequence and
    loss_agg "seq-mean-token-mean" (what verl forces for GSPO) the gradient is exactly GSPO's
    A_i * grad s_i; TRL's `importance_sampling_level="sequence"` leaves the aggregation to the user.
    Either way the log-ratio is clamped to +-20. `advantages` is [N] (one per sequence, broadcast
    over its tokens) or [N, T]. clip_high > clip_low is DAPO's "clip-higher".
    Stats are detached masked means over real tokens: clip_frac_low (A < 0 and ratio < 1 - clip_low,
    the clipped branch is active), clip_frac_high (A > 0 and ratio > 1 + clip_high), clip_frac
    (either), ratio_mean and ratio_max.
    """
    if logprobs.shape != old_logprobs.shape or logprobs.dim() != 2:
        raise ValueError(
            f"logprobs and old_logprobs must both be [N, T]; got {tuple(logprobs.shape)} and "
            f"{tuple(old_logprobs.shape)}"
        )
    if advantages.dim() == 1:
        advantages = advantages[:, None]
    if advantages.shape[0] != logprobs.shape[0]:
        raise ValueError(
            f"advantages {tuple(advantages.shape)} do not match logprobs {tuple(logprobs.shape)}"
        )
    if importance_ratio not in IMPORTANCE_RATIOS:
        raise ValueError(
            f"unknown importance_ratio {importance_ratio!r}; expected one of {IMPORTANCE_RATIOS}"
        )
    m = as_bool_mask(mask, logprobs)
    zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)

    log_ratio = torch.where(m, logprobs - old_logprobs, zero)
    if importance_ratio == "sequence":
        seq_log_ratio = masked_mean(log_ratio.detach(), m, dim=-1)[:, None]
        log_ratio = torch.where(m, logprobs - logprobs.detach() + seq_log_ratio, zero)
    log_ratio = log_ratio.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.where(m, torch.maximum(unclipped, clipped), zero)

    with torch.no_grad():
        r = ratio.detach()
        low = (advantages < 0) & (r < 1.0 - clip_low)
        high = (advantages > 0) & (r > 1.0 + clip_high)
        r_max = torch.where(m, r, torch.full((), float("-inf"), dtype=r.dtype, device=r.device)).amax()
        stats = {
            "clip_frac_low": masked_mean(low.to(r.dtype), m),
            "clip_frac_high": masked_mean(high.to(r.dtype), m),
            "clip_frac": masked_mean((low | high).to(r.dtype), m),
            "ratio_mean": masked_mean(r, m),
            "ratio_max": torch.where(m.any(), r_max, torch.zeros_like(r_max)),
        }
    return per_token, stats


def aggregate_loss(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    norm_constant: float | None = None,
) -> torch.Tensor:
    """Reduce a per-token loss [N, T] to a scalar. The modes differ in how length weights tokens:

    - "seq-mean-token-mean" (original GRPO): mean over each sequence's tokens, then mean over
      sequences, so a token of a short answer weighs more than one of a long answer. Sequences with
      no real token are left out of the outer mean.
    - "token-mean" (DAPO): sum over all real tokens / number of real tokens; every token weighs the same.
    - "seq-mean-token-sum-norm" (Dr. GRPO): sum over all real tokens / norm_constant, a constant
      (default N * T, batch size times padded length) so that length does not rescale the gradient.
    """
    if mode not in LOSS_AGG_MODES:
        raise ValueError(f"unknown loss aggregation mode {mode!r}; expected one of {LOSS_AGG_MODES}")
    m = as_bool_mask(mask, per_token)
    if mode == "token-mean":
        return masked_mean(per_token, m)
    if mode == "seq-mean-token-mean":
        seq_mean = masked_mean(per_token, m, dim=-1)
        has_tokens = m.expand(per_token.shape).any(dim=-1)
        return masked_mean(seq_mean, has_tokens)
    if norm_constant is None:
        norm_constant = float(per_token.shape[0] * per_token.shape[-1])
    if norm_constant <= 0:
        raise ValueError(f"norm_constant must be > 0, got {norm_constant}")
    return masked_sum(per_token, m) / norm_constant


def micro_batch_weight(micro_mask: torch.Tensor, full_mask: torch.Tensor, mode: str) -> float:
    """The factor that makes micro-batch losses add up to the full batch's: summing
    `micro_batch_weight(m_i, full, mode) * aggregate_loss(x_i, m_i, mode)` over a split of the rows
    equals `aggregate_loss(x, full, mode)` (same `norm_constant`), so accumulating gradients over
    micro-batches gives exactly the whole-batch update with a fraction of the activation memory.

    token-mean: the micro-batch's share of the real tokens; seq-mean-token-mean: its share of the
    sequences that have real tokens; seq-mean-token-sum-norm: 1 (the normaliser is a constant).
    """
    if mode not in LOSS_AGG_MODES:
        raise ValueError(f"unknown loss aggregation mode {mode!r}; expected one of {LOSS_AGG_MODES}")
    if mode == "seq-mean-token-sum-norm":
        return 1.0
    if mode == "token-mean":
        part, whole = micro_mask.bool().sum(), full_mask.bool().sum()
    else:
        part, whole = micro_mask.bool().any(-1).sum(), full_mask.bool().any(-1).sum()
    return float(part) / max(float(whole), 1.0)


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip: float | None,
    loss_agg: str = "token-mean",
    norm_constant: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO critic loss over [N, T] tensors: 0.5 * max((V - R)^2, (V_clipped - R)^2) per token with
    V_clipped = old_values + clamp(V - old_values, -clip, clip), reduced by `aggregate_loss(loss_agg)`
    (default token-mean, as verl); clip=None means plain 0.5 * (V - R)^2.

    The clip keeps the critic from moving far from the values used to compute the advantages.
    Anchor defaults: clip 0.2 (TRL `cliprange_value`, and OpenAI's 2019 code), 0.5 (verl
    `critic.cliprange_value`, OpenRLHF `--critic.value_clip`). Stats (detached): clip_frac (tokens
    where the clipped term is the larger one, verl's `vf_clipfrac`), values_mean, returns_mean and mse
    (the unclipped squared error).
    """
    if not (values.shape == old_values.shape == returns.shape) or values.dim() != 2:
        raise ValueError(
            f"values, old_values and returns must all be [N, T]; got {tuple(values.shape)}, "
            f"{tuple(old_values.shape)} and {tuple(returns.shape)}"
        )
    if clip is not None and clip <= 0:
        raise ValueError(f"value clip must be > 0 (or None for no clipping), got {clip}")
    m = as_bool_mask(mask, values)
    err_unclipped = (values - returns) ** 2
    if clip is None:
        per_token = err_unclipped
        clipped_active = torch.zeros_like(values, dtype=torch.bool)
    else:
        v_clipped = old_values + (values - old_values).clamp(-clip, clip)
        err_clipped = (v_clipped - returns) ** 2
        per_token = torch.maximum(err_unclipped, err_clipped)
        clipped_active = err_clipped > err_unclipped
    loss = 0.5 * aggregate_loss(per_token, m, loss_agg, norm_constant)
    with torch.no_grad():
        stats = {
            "clip_frac": masked_mean(clipped_active.to(values.dtype), m),
            "values_mean": masked_mean(values.detach(), m),
            "returns_mean": masked_mean(returns.detach(), m),
            "mse": masked_mean(err_unclipped.detach(), m),
        }
    return loss, stats


def entropy_bonus(
    entropy: torch.Tensor,
    mask: torch.Tensor,
    coef: float,
    loss_agg: str = "token-mean",
    norm_constant: float | None = None,
) -> torch.Tensor:
    """The term to *add* to the loss for an entropy bonus: -coef * aggregate(entropy [N, T]).

    Aggregated like the policy loss so the bonus weighs tokens the same way. A positive coef rewards
    spread-out distributions (fights entropy collapse); verl defaults it to 0 (`entropy_coeff: 0`
    in its generated ppo_trainer.yaml), so it is opt-in.
    `entropy` must keep its graph (from logits) for the bonus to have a gradient.
    """
    if coef < 0:
        raise ValueError(f"entropy coef must be >= 0 (0 = off), got {coef}")
    return -coef * aggregate_loss(entropy, mask, loss_agg, norm_constant)
