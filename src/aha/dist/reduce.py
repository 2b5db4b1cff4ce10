"""Reductions across ranks for what the loop logs: each rank holds an equal share of the batch, so a
mean over ranks of per-rank means is the mean over the batch."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from aha.dist.env import current

T = TypeVar("T")


def reduce_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """Every rank's `metrics` combined: keys ending in _max / _min take the maximum / minimum, the rest
    the mean over the ranks that logged the key (a rank may lack one, e.g. a reward's error count).
    Unchanged in a single process."""
    env = current()
    if not env.distributed:
        return metrics
    everyone: list[list[str] | None] = [None] * env.world_size
    dist.all_gather_object(everyone, sorted(metrics))
    keys = sorted({k for ks in everyone for k in ks})
    have = torch.tensor([k in metrics for k in keys], dtype=torch.float64, device=_device())
    values = torch.tensor([float(metrics.get(k, 0.0)) for k in keys], dtype=torch.float64, device=_device())
    top = torch.where(have > 0, values, torch.full_like(values, -math.inf))
    bottom = torch.where(have > 0, values, torch.full_like(values, math.inf))
    for t, op in ((top, dist.ReduceOp.MAX), (bottom, dist.ReduceOp.MIN), (values, dist.ReduceOp.SUM)):
        dist.all_reduce(t, op)
    dist.all_reduce(have)
    out = {}
    for i, k in enumerate(keys):
        if k.endswith("_max"):
            out[k] = float(top[i])
        elif k.endswith("_min"):
            out[k] = float(bottom[i])
        else:
            out[k] = float(values[i]) / float(have[i])
    return out


def sum_across_ranks(value: float, op: str = "sum") -> float:
    """`value` summed over ranks (`op="max"`: their maximum); itself in a single process."""
    if not current().distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_device())
    dist.all_reduce(t, {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return float(t[0])


def rank_weight(local_count: float) -> float:
    """The factor that turns this rank's mean over its `local_count` items (tokens, sequences) into its
    part of the mean over every rank's items, once the ranks' gradients are averaged (DDP and FSDP2
    divide their sum by the number of ranks): world_size * local_count / global_count. 1 in a single
    process. A collective: every rank calls it at the same point."""
    env = current()
    if not env.distributed:
        return 1.0
    return env.world_size * local_count / max(sum_across_ranks(local_count), 1.0)


def gather_tensor(t: torch.Tensor) -> torch.Tensor:
    """The ranks' equally shaped `t`, concatenated along dim 0 in rank order (CPU)."""
    if not current().distributed:
        return t
    t = t.detach().to(_device()).contiguous()
    parts = [torch.empty_like(t) for _ in range(current().world_size)]
    dist.all_gather(parts, t)
    return torch.cat(parts).cpu()


def gather_lists(rows: list[Any]) -> list[Any]:
    """The ranks' lists of plain data, concatenated in rank order (small data: samples, prompts)."""
    if not current().distributed:
        return rows
    parts: list[list[Any] | None] = [None] * current().world_size
    dist.all_gather_object(parts, rows)
    return [row for part in parts for row in part]


def from_main(compute: Callable[[], T]) -> T:
    """`compute()` run on rank 0 alone and its result (plain data) handed to every rank: what the ranks
    must decide identically (skip, resume) is read once, by the rank that writes it. A collective."""
    env = current()
    if not env.distributed:
        return compute()
    box = [compute() if env.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _device() -> torch.device:
    """Where the backend reduces: NCCL only on the GPU, gloo on the CPU."""
    return torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")
