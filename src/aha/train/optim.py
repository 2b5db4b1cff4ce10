"""AdamW with the usual weight-decay split, and learning-rate schedules with linear warm-up.

Schedules are functions of the number of optimizer steps already taken, `s`: the update number s + 1
uses lr * factor(s). With W warm-up steps and T total steps:
  warm-up   s < W:  factor = (s + 1) / W       (the first update already moves; the W-th uses the peak)
  decay     s >= W: p = min(1, (s - W) / (T - W)), and with m = min_lr_ratio
            cosine:   m + (1 - m) * (1 + cos(pi * p)) / 2
            linear:   m + (1 - m) * (1 - p)
            constant: 1
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.optim.lr_scheduler import LambdaLR

SCHEDULES = ("cosine", "linear", "constant")
FUSED_ADAMW_DEVICES = ("cpu", "cuda")


def build_optimizer(
    model: torch.nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters. Biases and norm weights (1-D tensors) get no weight decay:
    shrinking a norm's gain or a bias towards 0 is not the regularisation decay is meant to be.

    The fused implementation where the parameters' device has one (CPU and CUDA; what TRL's trainer
    defaults to as well): at 25M parameters on 2 CPU threads a step takes 23 ms instead of 86 ms."""
    decay, no_decay = [], []
    for param in model.parameters():  # shared (tied) parameters are listed once
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    if not decay and not no_decay:
        raise ValueError("the model has no trainable parameters (all have requires_grad=False)")
    groups = [
        {"params": params, "weight_decay": wd}
        for params, wd in ((decay, weight_decay), (no_decay, 0.0))
        if params
    ]
    fused = all(p.device.type in FUSED_ADAMW_DEVICES for p in decay + no_decay)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused or None)


def lr_factor(
    kind: str, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0
) -> Callable[[int], float]:
    """The multiplier of the peak learning rate after `s` optimizer steps (see the module docstring)."""
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; choose one of {', '.join(SCHEDULES)}")
    if total_steps < 1 or not 0 <= warmup_steps <= total_steps:
        raise ValueError(
            f"need 0 <= warmup_steps <= total_steps and total_steps >= 1, got {warmup_steps}, {total_steps}"
        )
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        shape = (1.0 + math.cos(math.pi * progress)) / 2 if kind == "cosine" else 1.0 - progress
        return min_lr_ratio + (1.0 - min_lr_ratio) * shape

    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    total_steps: int,
    kind: str = "cosine",
    min_lr_ratio: float = 0.0,
) -> LambdaLR:
    """Per-step LR schedule; call `scheduler.step()` after each `optimizer.step()`."""
    return LambdaLR(optimizer, lr_factor(kind, warmup_steps, total_steps, min_lr_ratio))
