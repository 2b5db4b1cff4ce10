"""`aha.algos.masked`'s batch statistics over every rank's real tokens: under torchrun each rank holds
a share of the batch, and a statistic of the whole batch (PPO's advantage whitening, its logged
summaries, the critic's explained variance, the KL the adaptive controller reads) must be the one a
single process computes, so every rank makes the same decision. Sums and counts are all-reduced in
float64; the two-pass variance is the single process's formula. In a single process each function is
its `aha.algos.masked` counterpart, unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from aha.algos import masked
from aha.dist.env import current


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of `x` over every rank's masked-in positions (0 where there are none)."""
    if not current().distributed:
        return masked.masked_mean(x, mask)
    total, count = _all_sum(masked.masked_sum(x, mask), masked.masked_count(x, mask))
    return (total / count if count > 0 else torch.zeros_like(total)).to(x.dtype)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The unbiased variance of `x` over every rank's masked-in positions."""
    if not current().distributed:
        return masked.masked_var(x, mask)
    mean = masked_mean(x, mask)
    sq, count = _all_sum(masked.masked_sum((x - mean) ** 2, mask), masked.masked_count(x, mask))
    return (sq / (count - 1) if count > 1 else torch.zeros_like(sq)).to(x.dtype)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """`masked.masked_whiten` (shifted to mean 0) with the whole batch's mean and variance."""
    if not current().distributed:
        return masked.masked_whiten(x, mask, eps=eps)
    whitened = (x - masked_mean(x, mask)) * torch.rsqrt(masked_var(x, mask) + eps)
    return torch.where(
        masked.as_bool_mask(mask, x), whitened, torch.zeros((), dtype=x.dtype, device=x.device)
    )


def masked_summary(x: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """`masked.masked_summary` (mean, std, min, max) of the whole batch."""
    if not current().distributed:
        return masked.masked_summary(x, mask)
    x = x.detach()
    m = masked.as_bool_mask(mask, x).expand(x.shape)
    kept = x[m]
    low = kept.min() if kept.numel() else torch.tensor(math.inf, dtype=x.dtype, device=x.device)
    high = kept.max() if kept.numel() else torch.tensor(-math.inf, dtype=x.dtype, device=x.device)
    extremes = torch.stack([low, -high]).to(torch.float64).to(_device())
    dist.all_reduce(extremes, dist.ReduceOp.MIN)
    if not math.isfinite(float(extremes[0])):  # no rank has a real token
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        return {"mean": zero, "std": zero, "min": zero, "max": zero}
    return {
        "mean": masked_mean(x, m),
        "std": masked_var(x, m).sqrt(),
        "min": extremes[0].to(x.dtype),
        "max": (-extremes[1]).to(x.dtype),
    }


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`masked.explained_variance` of the whole batch: 1 - Var(returns - values) / Var(returns)."""
    if not current().distributed:
        return masked.explained_variance(values, returns, mask)
    returns, values = returns.detach(), values.detach()
    var_returns = masked_var(returns, mask)
    ratio = masked_var(returns - values, mask) / var_returns
    return torch.where(var_returns > 0, 1.0 - ratio, torch.full_like(ratio, float("nan")))


def _all_sum(*values: torch.Tensor) -> list[torch.Tensor]:
    """The scalars `values`, each summed over the ranks (float64, back on their own device)."""
    device = values[0].device
    t = torch.stack([v.detach().to(torch.float64) for v in values]).to(_device())
    dist.all_reduce(t)
    return list(t.to(device))


def _device() -> torch.device:
    return torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")
