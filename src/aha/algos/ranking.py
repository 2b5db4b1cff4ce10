"""Ranking losses for reward models: Bradley-Terry on pairs, InstructGPT's K-wise loss, score centering.

A reward model r(x, y) is trained so that P(y_a preferred over y_b) = sigmoid(r_a - r_b) matches how
people ranked the replies. Pure tensor functions: the trainer (aha.train.reward_model) feeds them scores.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean of -log sigmoid(r_chosen - r_rejected - margin) over the pairs ([B] each).

    `margin` (per pair, Llama-2 style) asks the chosen reply to win by at least that much; logsigmoid
    keeps the loss finite for any score gap (1 - sigmoid underflows in half precision)."""
    diff = chosen.float() - rejected.float()
    if margin is not None:
        diff = diff - margin.float()
    return -F.logsigmoid(diff).mean()


def kwise_ranking_loss(
    scores: torch.Tensor, mask: torch.Tensor, ties: torch.Tensor | None = None
) -> torch.Tensor:
    """InstructGPT's loss on K-wise rankings: all K(K-1)/2 pairs of one ranking, averaged within it,
    then averaged over rankings, so each ranking weighs as one example however long it is.

    scores: [B, K] rewards of the responses, best first. mask: [B, K] 1 for a real response (rankings
    shorter than K are padded at the end). ties: [B, K] integer rank group per response (equal groups =
    tied, no pair formed between them); None = every response has its own rank (ties[b, k] = k).
    A ranking with no untied pair contributes nothing (and is left out of the mean)."""
    scores = scores.float()
    valid = mask.bool()
    K = scores.shape[1]
    if ties is None:
        ties = torch.arange(K, device=scores.device).expand_as(scores)
    # pair (i, j): i ranked strictly better than j, both real
    better = ties.unsqueeze(2) < ties.unsqueeze(1)  # [B, K, K]
    pairs = better & valid.unsqueeze(2) & valid.unsqueeze(1)
    diff = scores.unsqueeze(2) - scores.unsqueeze(1)
    per_pair = -F.logsigmoid(diff) * pairs
    n_pairs = pairs.sum(dim=(1, 2))
    has_pairs = n_pairs > 0
    per_ranking = per_pair.sum(dim=(1, 2)) / n_pairs.clamp(min=1)
    if not has_pairs.any():
        return scores.sum() * 0.0  # keeps the graph; nothing to learn from
    return per_ranking[has_pairs].mean()


def centering_loss(scores: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared score: added with a small coefficient it keeps rewards near zero (the ranking
    losses see only differences, so the scores' offset is otherwise free to drift)."""
    scores = scores.float()
    if mask is None:
        return scores.pow(2).mean()
    m = mask.float()
    return (scores.pow(2) * m).sum() / m.sum().clamp(min=1)
