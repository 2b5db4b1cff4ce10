"""Reductions over the real tokens of padded [N, T] batches.

Completions have different lengths, so every statistic must ignore padding. Masked positions are
removed with `torch.where` rather than multiplied by 0: padding may hold inf/NaN (e.g. log-probs of
pad tokens) and `inf * 0` is NaN.
"""

from __future__ import annotations

import torch


def as_bool_mask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Any int/bool/float mask as a bool tensor broadcastable to `like`, with a clear error otherwise."""
    m = mask if mask.dtype == torch.bool else mask != 0
    try:
        torch.broadcast_shapes(m.shape, like.shape)
    except RuntimeError as err:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not broadcast to {tuple(like.shape)}") from err
    return m.to(like.device)


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | tuple[int, ...] | None = None) -> torch.Tensor:
    """Sum of x over positions where mask is non-zero (all dims when dim is None)."""
    m = as_bool_mask(mask, x)
    kept = torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device))
    return kept.sum() if dim is None else kept.sum(dim=dim)


def masked_count(
    x: torch.Tensor, mask: torch.Tensor, dim: int | tuple[int, ...] | None = None
) -> torch.Tensor:
    """Number of masked-in positions (as x's dtype), broadcasting mask to x's shape first."""
    m = as_bool_mask(mask, x).expand(x.shape).to(x.dtype)
    return m.sum() if dim is None else m.sum(dim=dim)


def masked_mean(
    x: torch.Tensor, mask: torch.Tensor, dim: int | tuple[int, ...] | None = None
) -> torch.Tensor:
    """Mean over masked-in positions; 0 (never NaN) where nothing is masked in."""
    total = masked_sum(x, mask, dim)
    count = masked_count(x, mask, dim)
    return torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance over all masked-in positions (Bessel-corrected when unbiased and count > 1)."""
    mean = masked_mean(x, mask)
    sq = masked_sum((x - mean) ** 2, mask)
    count = masked_count(x, mask)
    denom = count - 1 if unbiased else count
    return torch.where(denom > 0, sq / denom.clamp(min=1), torch.zeros_like(sq))


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) using statistics of the masked-in positions only (PPO advantage
    whitening). Variance is unbiased, as in verl. With shift_mean=False the mean is added back, so
    only the scale changes. Masked-out positions are returned as 0 so they cannot leak into a loss.
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask, unbiased=True)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(as_bool_mask(mask, x), whitened, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_summary(x: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Detached mean, std (unbiased), min and max of x over the masked-in positions, for logging
    returns, advantages and values; all 0 when nothing is masked in."""
    m = as_bool_mask(mask, x).expand(x.shape)
    x = x.detach()
    if not m.any():
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        return {"mean": zero, "std": zero, "min": zero, "max": zero}
    kept = x[m]
    return {
        "mean": masked_mean(x, m),
        "std": masked_var(x, m).sqrt(),
        "min": kept.min(),
        "max": kept.max(),
    }


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - Var(returns - values) / Var(returns) over the masked-in positions (detached): 1 for a
    perfect critic, 0 for one no better than a constant, negative for worse. NaN when the returns
    have no variance (undefined; Stable-Baselines3's `explained_variance` does the same)."""
    returns, values = returns.detach(), values.detach()
    var_returns = masked_var(returns, mask)
    ratio = masked_var(returns - values, mask) / var_returns
    return torch.where(var_returns > 0, 1.0 - ratio, torch.full_like(ratio, float("nan")))
