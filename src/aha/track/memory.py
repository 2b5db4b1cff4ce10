"""Peak CUDA memory per training step: what a run needs from the GPU, measured rather than guessed.

`reset_peak_memory` at a step's start and `peak_memory_metrics` at its end give that step's peak:
`allocated` is what tensors held at most, `reserved` what torch's caching allocator took from the
device at most (the figure that decides an out-of-memory error). On other devices both are no-ops.

`process_peak_rss_gb` is the host side: the process's peak resident memory, written once per process
to resources.jsonl when a run ends (aha.train.session).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from aha.track.jsonl import JsonlAppender

GB = 1e9
RESOURCES_FILE = "resources.jsonl"


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


def process_peak_rss_gb() -> float | None:
    """The most resident memory this process has held since it started (the host side of a run: the
    model, optimizer state and data on the CPU), or None where the OS does not report it (Windows)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak * (1 if sys.platform == "darwin" else 1024) / GB


def record_resources(run_dir: Path, last_step: int | None, wall_s: float) -> None:
    """Append this process's line to run_dir/resources.jsonl (one per process: a --resume adds one)."""
    out = JsonlAppender(Path(run_dir) / RESOURCES_FILE)
    out.write({"last_step": last_step, "wall_s": wall_s, "peak_rss_gb": process_peak_rss_gb()})
    out.close()
