"""Position ids for left-padded batches, shared by the rollout engines and the teacher-forced scorer so
both place every token at the same position."""

from __future__ import annotations

import torch


def left_padded_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted from each row's first real token (0, 1, ...), as `generate` does for left padding;
    pad slots get 1 (any value works: they are masked). A trainer's teacher-forced pass should use the same."""
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 1)
