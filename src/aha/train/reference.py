"""The frozen reference policy that GRPO's KL penalty is measured against: a copy of the starting policy.

Under bf16-mixed (or fp16-mixed) the copy keeps the weights of its plain `nn.Linear` layers in the compute
dtype: autocast would cast them to it before every product anyway, so the reference's log-probs are the
same numbers (tested) while those weights take half the memory. Everything else (embeddings, norms, a
head tied to the embedding) stays float32, as autocast would read it.

Under LoRA there is no copy at all: the reference is the policy itself with its adapters switched off
(peft's `disable_adapter`), the base model it started from; offloading has nothing to move then.

With `offload`, the reference lives in CPU memory and visits the device only for its pass: its weights
cross to the device and back once per step (the cost is docs/ARCHITECTURE.md's), and the device holds
only the policy between passes.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from transformers import PreTrainedModel

from aha.dist.wrap import full_state_dict
from aha.models.lean_activations import is_plain_linear
from aha.models.lora import adapters_disabled, is_lora_model
from aha.train.policy_update import UpdateBatch, completion_logprobs
from aha.train.precision import Precision


class ReferencePolicy:
    """`logprobs(batch)` of a frozen copy of `policy`; `sync_from(policy)` makes it the current policy."""

    def __init__(self, policy: PreTrainedModel, precision: Precision, device: str, offload: bool = False):
        self.precision = precision
        self.device = device
        self.shares_policy = is_lora_model(policy)
        self.home = "cpu" if offload and not self.shares_policy else device
        self.model = policy if self.shares_policy else frozen_copy(policy, self.home, precision.compute_dtype)

    def logprobs(self, batch: UpdateBatch, temperature: float) -> torch.Tensor:
        """Completion log-probs under the reference, computed as the policy's are (same precision)."""
        if self.shares_policy:
            with adapters_disabled(self.model):
                return completion_logprobs(self.model, batch, temperature, self.precision)
        if self.home == self.device:
            return completion_logprobs(self.model, batch, temperature, self.precision)
        self.model.to(self.device)
        try:
            return completion_logprobs(self.model, batch, temperature, self.precision)
        finally:
            self.model.to(self.home)

    def sync_from(self, policy: nn.Module) -> None:
        """The R1-Zero style reset: the reference becomes the current policy (cast as at the start)."""
        self.model.load_state_dict(full_state_dict(policy))  # gathered from the shards under fsdp2


def frozen_copy(model: nn.Module, device: str, linear_dtype: torch.dtype | None = None) -> nn.Module:
    """A copy of `model` in eval mode without gradients, its tensors made directly on `device` (a CPU
    copy never passes through the GPU), plain `nn.Linear` weights and biases in `linear_dtype` if given.
    Parameters a Linear shares with another module (a head tied to the embedding) keep their dtype."""
    linear_params: set[int] = set()
    other_params: set[int] = set()
    for module in model.modules():
        ids = {id(p) for p in module.parameters(recurse=False)}
        (linear_params if is_plain_linear(module) else other_params).update(ids)
    cast = linear_params - other_params if linear_dtype is not None else set()
    memo: dict[int, torch.Tensor] = {}
    for param in model.parameters():
        dtype = linear_dtype if id(param) in cast else param.dtype
        memo[id(param)] = nn.Parameter(param.detach().to(device, dtype, copy=True), requires_grad=False)
    for buffer in model.buffers():
        memo[id(buffer)] = buffer.detach().to(device, copy=True)
    return copy.deepcopy(model, memo).eval()
