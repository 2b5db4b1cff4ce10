"""Gradient (activation) checkpointing: keep only each decoder layer's input for backward and run the
layer again there, trading about one more forward for the activations of all but one layer.

HF's own switch, non-reentrant (`use_reentrant=False`: works with inputs that need no gradient, with
keyword arguments, and with aha's lean activations, whose saved tensors go through the same hooks).
In training mode HF then drops the KV cache inside the layers, which
aha.models.forward's shared-prompt path needs; that path steps aside then (`checkpointing_drops_cache`).
"""

from __future__ import annotations

from transformers import PreTrainedModel


def enable_gradient_checkpointing(model: PreTrainedModel) -> None:
    """Checkpoint every decoder layer of `model`; ValueError naming the class if it cannot."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ValueError(
            f"{type(model).__name__} does not support gradient checkpointing; "
            "set train.gradient_checkpointing=false"
        )
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x's name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def is_checkpointing(model) -> bool:
    """Whether any module of `model` has HF's checkpointing switched on (every transformers 5.x)."""
    return any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
