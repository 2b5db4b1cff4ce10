"""Peak CUDA memory per training step: what a run needs from the GPU, measured rather than guessed.

`reset_peak_memory` at a step's start and `peak_memory_metrics` at its end give that step's peak:
`allocated` is what tensors held at most, `reserved` what torch's caching allocator took from the
device at most (the figure that decides an out-of-memory error). On other devices both are no-ops.
"""

from __future__ import annotations

import torch

GB = 1e9


def _is_cuda(device: str | torch.device) -> bool:
    return torch.device(device).type == "cuda" and torch.cuda.is_available()


def reset_peak_memory(device: str | torch.device) -> None:
    if _is_cuda(device):
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_metrics(device: str | torch.device) -> dict[str, float]:
    """`memory/cuda_allocated_peak_gb` and `memory/cuda_reserved_peak_gb` since the last reset (CUDA only)."""
    if not _is_cuda(device):
        return {}
    return {
        "memory/cuda_allocated_peak_gb": torch.cuda.max_memory_allocated(device) / GB,
        "memory/cuda_reserved_peak_gb": torch.cuda.max_memory_reserved(device) / GB,
    }
