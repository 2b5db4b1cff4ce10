"""Wrapping the policy for several processes with torch.distributed's own engines, and full-weight views
of it for checkpoints, exports and sampling.

- ddp: DDP's reducer through `torch.distributed._composable.replicate` (the same gradient all-reduce as
  `DistributedDataParallel`), applied in place: the model keeps its class and attributes, so the scoring
  code that reaches into it (`get_decoder`, `config`, peft's adapters) works unchanged. Every rank holds
  the whole model; gradients are averaged across ranks during backward.
- fsdp2: `torch.distributed.fsdp.fully_shard` on each decoder layer and then on the whole model: the
  parameters become DTensors sharded across ranks, gathered layer by layer for each forward and backward;
  gradients are reduce-scattered (averaged). The gathered weights stay float32, and bf16-mixed autocasts
  the matrix products as in one process: the same numbers as a one-process bf16-mixed run (tested).
  Gathering bf16 weights instead (MixedPrecisionPolicy(param_dtype=bfloat16)) would halve the
  all-gather traffic but also run the norms, embeddings and residual stream in bf16: on the tiny test
  model one GRPO step then landed up to 8% of the step's size away from the one-process bf16-mixed
  step (measured with tests/test_dist_update.py's bf16 case before settling on float32 gathers),
  against 0.15% for DDP and for float32 gathers.

Both average gradients over ranks, so a loss that is each rank's share of the global loss times the
number of ranks (`aha.dist.reduce.rank_weight`) gives the one-process gradient, to float rounding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from aha.config import ConfigError
from aha.dist.env import check_strategy


def wrap_model(model: nn.Module, strategy: str, precision: str) -> nn.Module:
    """Apply `strategy` (ddp or fsdp2) to `model` in place and return it. Build the optimizer after
    this: under fsdp2 the parameters are replaced by sharded ones. `precision` is the run's resolved
    model.precision (fp32, bf16-mixed or fp16-mixed)."""
    check_strategy(strategy)
    if strategy == "ddp":
        from torch.distributed._composable.replicate import replicate

        # No buffer broadcast before each forward: the buffers (rotary tables) are the same on every
        # rank, and a broadcast would make sampling, whose forwards differ in number across ranks, hang.
        replicate(model, forward_sync_buffers=False)
        return model
    if precision == "fp16-mixed":
        raise ConfigError(
            "model.precision=fp16-mixed is not supported with dist.strategy=fsdp2 (its loss scaler does "
            "not handle sharded gradients here); use bf16-mixed or fp32, or dist.strategy=ddp"
        )
    from torch.distributed.fsdp import fully_shard

    for layer in decoder_layers(model):
        fully_shard(layer)
    fully_shard(model)
    return model


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated transformer blocks (the unit FSDP2 gathers at a time), found through HF's own
    `_no_split_modules` class names, which every decoder model declares."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ConfigError(
            f"dist.strategy=fsdp2: {type(base).__name__} names no decoder layer class (_no_split_modules)"
        )
    return layers


def is_wrapped(model: nn.Module) -> bool:
    """Whether `wrap_model` applied either strategy: its hooks run on `model`'s own forward, so the
    scoring code must call that forward (not its backbone and head separately)."""
    from torch.distributed._composable.replicate import DDP

    return isinstance(model, DDP) or is_sharded(model)


def is_sharded(model: nn.Module) -> bool:
    """Whether `model` is under FSDP2 (its parameters are shards, not the weights)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights as plain CPU tensors, on every rank. Under fsdp2 this gathers the
    shards: a collective, so every rank must call it at the same point."""
    if not is_sharded(model):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """`optimizer.state_dict()` with each sharded state tensor (AdamW's moments) made whole: the
    layout of an unsharded run's, so one checkpoint serves either strategy (collective under fsdp2)."""
    state = optimizer.state_dict()
    if not is_sharded(model):
        return state
    return {
        "state": {i: {k: _whole(v) for k, v in s.items()} for i, s in state["state"].items()},
        "param_groups": state["param_groups"],
    }


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Restore `full_optimizer_state`'s output, cutting each whole state tensor to this rank's shard
    of its parameter under fsdp2 (a collective)."""
    if is_sharded(model):
        from torch.distributed.tensor import DTensor, distribute_tensor

        params = [p for group in optimizer.param_groups for p in group["params"]]

        def cut(param: torch.Tensor, value: object) -> object:
            if isinstance(param, DTensor) and torch.is_tensor(value) and value.shape == param.shape:
                local = value.to(param.device_mesh.device_type)
                return distribute_tensor(local, param.device_mesh, param.placements)
            return value  # AdamW's step count

        state = {
            "state": {i: {k: cut(params[i], v) for k, v in s.items()} for i, s in state["state"].items()},
            "param_groups": state["param_groups"],
        }
    optimizer.load_state_dict(state)


def _whole(value: object) -> object:
    return value.full_tensor().cpu() if hasattr(value, "full_tensor") else value


@contextlib.contextmanager
def full_weights(model: nn.Module) -> Iterator[None]:
    """Within the block every rank holds the whole model's weights, gathered once on entry: forwards
    inside communicate nothing, so ranks may run different numbers of them (sampling stops at
    different lengths on different ranks). Resharded on exit. A no-op unless under fsdp2."""
    if not is_sharded(model):
        yield
        return
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.unshard()
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for unit in units:
            unit.set_reshard_after_forward(True, recurse=False)
            unit.reshard()
