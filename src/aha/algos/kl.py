"""Per-token estimators of KL(pi || ref) from tokens sampled from pi (Schulman, "Approximating KL
divergence", 2020). With log-ratio x = log pi(a) - log ref(a) and a ~ pi:

- k1 = x: unbiased, high variance, can be negative per token.
- k2 = x^2 / 2: biased, low variance, always >= 0; its gradient is that of KL for small differences.
- k3 = exp(-x) - (-x) - 1 = ref/pi - log(ref/pi) - 1: unbiased, always >= 0, low variance (GRPO's choice).
"""

from __future__ import annotations

import torch

KL_ESTIMATORS = ("k1", "k2", "k3")

# exp(ref - logp) in k3 overflows float32 once the log-ratio passes ~88 (and bf16/fp16 much sooner);
# clamping to +-20 keeps the penalty and its gradient finite (e^20 ~ 4.9e8 already dominates any loss)
# when the policy assigns a near-zero probability to a token the reference likes, or vice versa.
_K3_MAX_LOG_RATIO = 20.0


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token KL estimate [N, T] (differentiable w.r.t. logprobs). Apply the completion mask
    when reducing (see `aggregate_loss` / `masked_mean`)."""
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {estimator!r}; expected one of {KL_ESTIMATORS}")
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(
            f"logprobs {tuple(logprobs.shape)} and ref_logprobs {tuple(ref_logprobs.shape)} differ in shape"
        )
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    neg = (-log_ratio).clamp(-_K3_MAX_LOG_RATIO, _K3_MAX_LOG_RATIO)  # log(ref / pi)
    return torch.exp(neg) - neg - 1.0
