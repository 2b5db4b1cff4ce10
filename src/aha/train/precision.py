"""Mixed precision: float32 master weights and optimizer state, the forward in bf16 or fp16 under autocast.

Why not bf16 weights: bf16 keeps 8 significant bits, so a weight w moves only if its update exceeds about
|w| * 2^-9. AdamW's update is about lr per step, so at lr 1e-6 nearly every update rounds away (issue 17:
15 of 1,000 weights of a pure-bf16 model moved in 10 steps). Here the weights stay float32 and autocast
casts them to the lower precision for the matrix products only; AdamW updates the float32 copy.

fp16 has 5 exponent bits: small gradients underflow to zero. So fp16-mixed scales the loss before
backward (a GradScaler), unscales the gradients before clipping, skips any step whose gradients
overflowed (and halves the scale), and checkpoints the scaler's state so a resumed run continues with it.

One `Precision` object is made per run (TrainingSession) and handed to everything that runs the model.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from aha.config import ConfigError

if TYPE_CHECKING:
    from aha.train.nonfinite import NonFiniteGuard

PRECISIONS = ("auto", "fp32", "bf16-mixed", "fp16-mixed")
COMPUTE_DTYPES = {"bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float16}
INITIAL_LOSS_SCALE = 2.0**16  # torch.amp.GradScaler's default
ROLLOUT_DTYPES = ("auto", "float32", "bfloat16")  # rollout.dtype


def resolve_precision(name: str, device: str | torch.device) -> str:
    """`auto` is bf16-mixed on a CUDA device that supports bf16, fp32 elsewhere (the CPU included: its
    compiled kernels and lean activations are float32)."""
    if name not in PRECISIONS:
        raise ConfigError(f"model.precision={name!r} is not one of {', '.join(PRECISIONS)}")
    device = torch.device(device)
    if name == "auto":
        return "bf16-mixed" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if name == "bf16-mixed" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(
            "model.precision=bf16-mixed: this GPU has no bf16 support; use fp16-mixed (loss-scaled) or fp32"
        )
    return name


@dataclass
class StepResult:
    grad_norm: float | None  # before clipping; None when not clipped (max_norm None); inf/nan on overflow
    skipped: bool  # fp16-mixed: the gradients overflowed, the parameters were left as they were
    nonfinite: bool = False  # fp32 / bf16-mixed: the guard found a NaN/inf gradient norm; no step taken


class Precision:
    """How a run computes: `name` is fp32, bf16-mixed or fp16-mixed (`auto` resolved for `device`)."""

    def __init__(self, name: str, device: str | torch.device = "cpu"):
        self.name = resolve_precision(name, device)
        self.device_type = torch.device(device).type
        self.compute_dtype = COMPUTE_DTYPES.get(self.name)  # None: float32 throughout
        self.scaler = None
        if self.name == "fp16-mixed":
            self.scaler = torch.amp.GradScaler(self.device_type, init_scale=INITIAL_LOSS_SCALE)

    def __repr__(self) -> str:
        return f"Precision({self.name!r}, {self.device_type!r})"

    def autocast(self) -> AbstractContextManager:
        """The context every forward of the run goes in (training, reference, rollouts, evaluation)."""
        if self.compute_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.compute_dtype)

    def backward(self, loss: torch.Tensor) -> None:
        """`loss.backward()`, through the loss scaler under fp16-mixed."""
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def guarded_step(
        self,
        optimizer: torch.optim.Optimizer,
        loss: torch.Tensor,
        loss_value: float,
        grad_clip: float,
        guard: NonFiniteGuard,
    ) -> StepResult | None:
        """One optimizer step on `loss` unless `guard` finds `loss_value` non-finite (None then) or, in
        `step`, the gradient norm; `grad_clip` <= 0 measures the norm without clipping. The gradients
        are dropped afterwards, so a skipped step leaves none behind."""
        result = None
        if guard.ok("loss", loss_value):
            self.backward(loss)
            result = self.step(optimizer, grad_clip if grad_clip > 0 else float("inf"), guard)
        optimizer.zero_grad(set_to_none=True)
        return result

    def step(
        self, optimizer: torch.optim.Optimizer, max_norm: float | None, guard: NonFiniteGuard | None = None
    ) -> StepResult:
        """Unscale (fp16-mixed), clip the global gradient norm to `max_norm` (None: no clipping, inf:
        measure only), then `optimizer.step()`, which fp16-mixed skips when a gradient is inf or NaN.
        Without a loss scaler, `guard` sees the gradient norm first (measured even when not clipped);
        a NaN/inf norm raises (stop) or leaves the optimizer untouched (skip, `nonfinite` set)."""
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        norm = None if max_norm is None else _as_float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        if self.scaler is None:
            if guard is not None:
                measured = norm if norm is not None else _total_norm(params)
                if not guard.ok("gradient norm", measured):
                    return StepResult(norm, skipped=False, nonfinite=True)
            optimizer.step()
            return StepResult(norm, skipped=False)
        scale = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        # update() lowers the scale exactly when this step found an overflow (and skipped the step).
        return StepResult(norm, skipped=self.scaler.get_scale() < scale)

    def metrics(self) -> dict[str, float]:
        return {} if self.scaler is None else {"amp/loss_scale": self.scaler.get_scale()}

    def state_dict(self) -> dict:
        """What a checkpoint keeps (the loss scaler's scale and growth counter; nothing otherwise)."""
        return {} if self.scaler is None else {"grad_scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict | None) -> None:
        if self.scaler is not None and state and "grad_scaler" in state:
            self.scaler.load_state_dict(state["grad_scaler"])


def rollout_precision(dtype: str, training: Precision) -> Precision:
    """The precision rollouts run at for `rollout.dtype`: auto is the training forward's; float32 and
    bfloat16 name it (bfloat16 runs the sampler under bf16 autocast, so its decode step fuses bf16 weights).
    Compare `.compute_dtype` with the training one to know whether the rollouts are off-policy by rounding."""
    if dtype not in ROLLOUT_DTYPES:
        raise ConfigError(f"rollout.dtype={dtype!r} is not one of {', '.join(ROLLOUT_DTYPES)}")
    if dtype == "auto" or {"float32": None, "bfloat16": torch.bfloat16}[dtype] == training.compute_dtype:
        return training
    name = "fp32" if dtype == "float32" else "bf16-mixed"
    return Precision(name, torch.device(training.device_type))


def _total_norm(params: list[torch.Tensor]) -> float:
    """The global L2 norm of the gradients, read only (nothing is clipped)."""
    return _as_float(torch.nn.utils.get_total_norm([p.grad for p in params])) if params else 0.0


def _as_float(norm: torch.Tensor) -> float:
    """A gradient norm as a number; under FSDP2 it is a DTensor over the shards, made whole first."""
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


def lean_activations_blocker(device: str | torch.device, precision: str, lora_enabled: bool) -> str | None:
    """Why `model.lean_activations` must stay off for this run, or None where it applies. The lean
    forwards and their compiled kernels were written and tested for full float32 models on the CPU;
    elsewhere they would be untested (autocast casts inside them, adapters wrap the projections)."""
    if torch.device(device).type != "cpu":
        return f"it applies on the CPU only, this run is on {device}"
    if precision != "fp32":
        return f"it applies to fp32 only, this run is {precision}"
    if lora_enabled:
        return "it does not apply to LoRA adapters"
    return None
