"""How well a reward model's score differences predict human choices: accuracy, margin, calibration.

Under Bradley-Terry the model claims P(chosen preferred) = sigmoid(r_chosen - r_rejected). Calibration
compares that claim with how often the chosen reply really wins, in bins of the claimed probability.
Expected calibration error (ECE) = sum over bins of (bin size / n) * |mean claimed - observed rate|.
"""

from __future__ import annotations

import torch


def pairwise_accuracy(chosen: torch.Tensor, rejected: torch.Tensor) -> float:
    """Fraction of pairs where the chosen reply scores strictly higher (a tie counts as half)."""
    diff = chosen.float() - rejected.float()
    return float(((diff > 0).float() + 0.5 * (diff == 0).float()).mean())


def calibration_bins(chosen: torch.Tensor, rejected: torch.Tensor, n_bins: int = 10) -> list[dict]:
    """Per bin of claimed P(first reply preferred): count, mean claimed probability, observed rate.

    Each pair is looked at in both orders (claim p that `chosen` wins, observed 1; claim 1 - p that
    `rejected` wins, observed 0), so the bins cover [0, 1] and a model that is always right but
    underconfident shows up as such. Empty bins are left out."""
    p = torch.sigmoid(chosen.double() - rejected.double())
    claims = torch.cat([p, 1 - p])
    observed = torch.cat([torch.ones_like(p), torch.zeros_like(p)])
    index = (claims * n_bins).long().clamp(max=n_bins - 1)
    bins = []
    for b in range(n_bins):
        sel = index == b
        count = int(sel.sum())
        if count:
            bins.append(
                {
                    "lo": b / n_bins,
                    "hi": (b + 1) / n_bins,
                    "count": count,
                    "claimed": float(claims[sel].mean()),
                    "observed": float(observed[sel].mean()),
                }
            )
    return bins


def expected_calibration_error(bins: list[dict]) -> float:
    """Count-weighted mean |claimed - observed| over the bins of `calibration_bins`."""
    total = sum(b["count"] for b in bins)
    return sum(b["count"] * abs(b["claimed"] - b["observed"]) for b in bins) / total
