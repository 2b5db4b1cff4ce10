"""Correcting for a rollout engine that samples from a slightly different policy than the trainer scores.

When rollouts run at another precision than the training forward (bf16 rollout weights, fp32 training),
the tokens come from pi_rollout while the loss's ratio is taken against pi_train(old): the batch is
off-policy by rounding. Truncated importance sampling (TIS; Yao et al., "Your efficient RL framework
secretly brings you off-policy RL training", 2025; verl's `tis_imp_ratio_cap`) reweights each token's
policy-gradient term by w_t = min(pi_train(a_t) / pi_rollout(a_t), C), detached. Truncating at C bounds
the variance that an unbounded ratio would bring, at the cost of a small bias where the ratio exceeds C.
"""

from __future__ import annotations

import torch

from aha.algos.kl import kl_penalty
from aha.algos.masked import as_bool_mask, masked_mean

DEFAULT_CAP = 2.0  # verl's and the paper's default C
# exp() of a log-ratio above ~88 overflows float32; the cap makes anything above log(C) irrelevant anyway.
_MAX_LOG_RATIO = 20.0


def truncated_importance_weights(
    train_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor, cap: float = DEFAULT_CAP
) -> torch.Tensor:
    """Per-token weights min(exp(train_logprobs - rollout_logprobs), cap), without gradient.

    `train_logprobs` are the trainer's log-probs of the sampled tokens under the policy that sampled them
    (the old policy, at training precision), `rollout_logprobs` the engine's own for the same tokens.
    Masked positions are the caller's to ignore (the loss multiplies them by zero)."""
    if train_logprobs.shape != rollout_logprobs.shape:
        raise ValueError(
            f"train_logprobs {tuple(train_logprobs.shape)} and rollout_logprobs "
            f"{tuple(rollout_logprobs.shape)} differ in shape"
        )
    if not cap > 0:
        raise ValueError(f"cap must be > 0, got {cap}")
    log_ratio = (train_logprobs.detach() - rollout_logprobs.detach()).clamp(max=_MAX_LOG_RATIO)
    return torch.exp(log_ratio).clamp(max=cap)


def rollout_mismatch_metrics(
    train_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor, mask: torch.Tensor, cap: float = DEFAULT_CAP
) -> dict[str, float]:
    """How far apart the two policies are on the sampled tokens (real tokens only):
    `abs_log_ratio_mean` / `_max` of |log pi_train - log pi_rollout|, `kl` the k3 estimate of
    KL(pi_rollout || pi_train) (unbiased for tokens drawn from pi_rollout, never negative), and
    `capped_frac`, the share of tokens whose weight the cap truncated."""
    m = as_bool_mask(mask, train_logprobs)
    log_ratio = (train_logprobs.detach() - rollout_logprobs.detach()).float()
    if not bool(m.any()):
        return {"abs_log_ratio_mean": 0.0, "abs_log_ratio_max": 0.0, "kl": 0.0, "capped_frac": 0.0}
    # k3 of KL(rollout || train): x = log rollout - log train, sampled from rollout.
    kl = kl_penalty(-log_ratio, torch.zeros_like(log_ratio), "k3")
    return {
        "abs_log_ratio_mean": float(masked_mean(log_ratio.abs(), m)),
        "abs_log_ratio_max": float(log_ratio.abs()[m].max()),
        "kl": float(masked_mean(kl, m)),
        "capped_frac": float(masked_mean((log_ratio > torch.log(torch.tensor(cap))).float(), m)),
    }
