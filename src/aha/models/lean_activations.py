"""Keep fewer activations for the backward pass of Llama-family models, at the cost of a few cheap
elementwise recomputations; the forward computes the Hugging Face modules' numbers (exactly with torch
ops; to float32 rounding with the compiled passes of aha.kernels.layer_kernels, float32 on the CPU).

Autograd saves every intermediate an op needs. In a Llama decoder layer most of those bytes are
elementwise by-products: the MLP keeps gate, silu(gate), up and silu(gate) * up (four tensors of the
intermediate size), each RMSNorm keeps its normalised input next to its output, and the projections
after a norm (q, k, v; gate and up) keep the norm's output once more. Here the MLP keeps only gate and
up (recomputing silu and the product in backward), the norm keeps its input and one scale per row, and
the projections after it keep that same input, recomputing the norm's output in their backward (one
elementwise pass). Measured on the 25M bench model (32 x 64 completion tokens, each saved storage
counted once, weights left out): the policy forward saves 0.72 GB of activations with the HF modules,
0.40 GB with these (0.47 GB before the projections recomputed the norm's output); the recomputation
costs about 1% of the forward+backward (1.011, median of 16 interleaved pairs).

The attention modules keep HF's forward but apply the rotary embedding in one compiled pass each way
(float32 on the CPU): HF's form, two slices, a negation, a concatenation, two products and a sum for each
of q and k, and as many ops in backward, took 0.16 s of the 25M bench model's 1.68 s forward+backward.

Only classes whose forward is known to be exactly the Llama form are switched (`LEAN_NORMS`,
`LEAN_MLPS`, `LEAN_ATTENTIONS`, and an attention's q, k and v projections where they are plain
`nn.Linear`); a module is switched by giving it a subclass whose forward is the lean one, so weights,
state-dict names, `isinstance` checks and `save_pretrained` are untouched.
"""

from __future__ import annotations

import sys
import threading

import torch
import torch.nn.functional as F
from torch import nn

from aha.kernels import layer_kernels

# Classes whose forward is Llama's RMSNorm: weight * (x / rms(x)), computed in float32.
LEAN_NORMS = frozenset({"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm"})
# Classes whose forward is down_proj(act_fn(gate_proj(x)) * up_proj(x)).
LEAN_MLPS = frozenset({"LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP"})
# Attention classes whose forward rotates q and k with their module's apply_rotary_pos_emb (HF's
# q * cos + rotate_half(q) * sin, the same for k).
LEAN_ATTENTIONS = frozenset({"LlamaAttention", "MistralAttention", "Qwen2Attention", "Qwen3Attention"})
# Their projections of the (normed) input, which all four apply directly to the norm's output.
ATTENTION_INPUT_PROJECTIONS = ("q_proj", "k_proj", "v_proj")


# The attribute a lean norm's output carries while gradients are recorded: (input, weight, eps, compiled),
# what `_rms_norm` needs to compute that output again.
_NORM_INPUT = "_aha_norm_input"


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, compiled: bool):
    """(weight * x / rms(x), the per-row scale 1 / rms(x)); the same numbers each time it is called on the
    same tensors, so a recomputation in backward reproduces the forward's output."""
    if compiled:
        return layer_kernels.rms_norm_forward(x, weight, eps)
    wide = x.to(torch.promote_types(x.dtype, torch.float32))
    scale = torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + eps)
    return weight * (wide * scale).to(x.dtype), scale


class _RMSNorm(torch.autograd.Function):
    """weight * (x * rsqrt(mean(x^2) + eps)), saving x and the per-row scale instead of x / rms(x).
    Computed in float32 (as HF does) or in the input's dtype where that is wider; float32 CPU tensors
    take the compiled single-pass forms (aha.kernels.layer_kernels)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        ctx.compiled = layer_kernels.kernel_applies(x, weight)
        out, scale = _rms_norm(x, weight, eps, ctx.compiled)
        ctx.save_for_backward(x, weight, scale)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight, scale = ctx.saved_tensors
        if ctx.compiled:
            grad_x, grad_weight = layer_kernels.rms_norm_backward(grad_out, x, weight, scale)
            return grad_x, grad_weight if ctx.needs_input_grad[1] else None, None
        normed = x.to(scale.dtype) * scale
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = (grad_out * normed.to(x.dtype)).flatten(0, -2).sum(0).to(weight.dtype)
        grad_normed = (grad_out * weight).to(scale.dtype)
        # d/dx of x * s(x) with s = rsqrt(mean(x^2) + eps): s * (g - normed * mean(g * normed)).
        grad_x = scale * (grad_normed - normed * (grad_normed * normed).mean(-1, keepdim=True))
        return grad_x.to(x.dtype), grad_weight, None


class _SiluGateDown(torch.autograd.Function):
    """down(silu(gate) * up), saving gate and up; silu(gate) and the product are recomputed in backward.
    float32 CPU tensors take the compiled single-pass forms (aha.kernels.layer_kernels), others torch ops."""

    @staticmethod
    def forward(ctx, gate, up, weight, bias):
        ctx.save_for_backward(gate, up, weight)
        ctx.has_bias = bias is not None
        ctx.compiled = layer_kernels.kernel_applies(gate, up)
        hidden = layer_kernels.swiglu_forward(gate, up) if ctx.compiled else F.silu(gate) * up
        return F.linear(hidden, weight, bias)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        gate, up, weight = ctx.saved_tensors
        grad_hidden = grad_out @ weight
        if ctx.compiled:  # one pass (aha/kernels/layer_kernels.c)
            grad_gate, grad_up, hidden = layer_kernels.swiglu_backward(grad_hidden, gate, up)
        else:
            act = F.silu(gate)
            grad_up = grad_hidden * act
            hidden = act.mul_(up)  # act is not needed after grad_up
            grad_gate = torch.ops.aten.silu_backward(grad_hidden.mul_(up), gate)
        grad_weight = grad_bias = None
        if ctx.needs_input_grad[2]:
            grad_weight = grad_out.flatten(0, -2).T @ hidden.flatten(0, -2)
        if ctx.has_bias and ctx.needs_input_grad[3]:
            grad_bias = grad_out.flatten(0, -2).sum(0)
        return grad_gate, grad_up, grad_weight, grad_bias


class _LinearsOfNorm(torch.autograd.Function):
    """F.linear(normed, w_i, b_i) for each (w_i, b_i) given after the norm's recipe, where `normed` is
    the lean norm's output for (x, norm_weight, eps, compiled). Saves x, which the norm saves anyway,
    instead of `normed`; backward computes `normed` again (one elementwise pass) for the weights' gradients.
    The gradient reaches x through `normed` and the norm's own backward, never through the recipe."""

    @staticmethod
    def forward(ctx, normed, x, norm_weight, eps, compiled, *weights_and_biases):
        weights, biases = weights_and_biases[0::2], weights_and_biases[1::2]
        ctx.save_for_backward(x, norm_weight, *weights)
        ctx.eps, ctx.compiled, ctx.normed_shape = eps, compiled, normed.shape
        ctx.has_bias = [b is not None for b in biases]
        return tuple(F.linear(normed, w, b) for w, b in zip(weights, biases, strict=True))

    @staticmethod
    def backward(ctx, *grad_outs):
        x, norm_weight, *weights = ctx.saved_tensors
        normed = _rms_norm(x, norm_weight, ctx.eps, ctx.compiled)[0].flatten(0, -2)
        grad_normed, param_grads = None, []
        for i, (grad, weight, has_bias) in enumerate(zip(grad_outs, weights, ctx.has_bias, strict=True)):
            grad = grad.flatten(0, -2)
            if ctx.needs_input_grad[0]:
                grad_normed = grad @ weight if grad_normed is None else grad_normed.addmm_(grad, weight)
            needs_weight, needs_bias = ctx.needs_input_grad[5 + 2 * i : 7 + 2 * i]
            param_grads.append(grad.T @ normed if needs_weight else None)
            param_grads.append(grad.sum(0) if has_bias and needs_bias else None)
        if grad_normed is not None:
            grad_normed = grad_normed.view(ctx.normed_shape)
        return grad_normed, None, None, None, None, *param_grads


class _Rotary(torch.autograd.Function):
    """q * cos + rotate_half(q) * sin and the same for k, in one compiled pass each (and each way)."""

    @staticmethod
    def forward(ctx, q, k, cos, sin):
        ctx.save_for_backward(cos, sin)
        return layer_kernels.rotary(q, cos, sin), layer_kernels.rotary(k, cos, sin)

    @staticmethod
    def backward(ctx, grad_q, grad_k):
        cos, sin = ctx.saved_tensors
        grads = [
            None if g is None else layer_kernels.rotary(g, cos, sin, adjoint=True) for g in (grad_q, grad_k)
        ]
        return grads[0], grads[1], None, None


class _LeanAttentionFlag(threading.local):
    active = False  # whether a lean attention forward runs in this thread


_in_lean_attention = _LeanAttentionFlag()


def _rotary_dispatcher(hf_rotary):
    """The stand-in for a modeling module's apply_rotary_pos_emb: HF's own function, except inside a lean
    attention forward (in this thread) on the shapes and tensors the compiled pass covers."""

    def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):
        if (
            _in_lean_attention.active
            and unsqueeze_dim == 1
            and q.dim() == k.dim() == 4
            and cos.dim() == sin.dim() == 3
            and cos.shape == sin.shape
            and cos.shape[0] in (1, q.shape[0])
            and cos.shape[1:] == q.shape[2:] == k.shape[2:]
            and q.shape[-1] % 2 == 0
            and not (cos.requires_grad or sin.requires_grad)
            and layer_kernels.kernel_applies(q, k, cos, sin)
        ):
            return _Rotary.apply(q, k, cos, sin)
        return hf_rotary(q, k, cos, sin, unsqueeze_dim)

    apply_rotary_pos_emb.hf_rotary = hf_rotary
    return apply_rotary_pos_emb


def _install_rotary_dispatcher(cls: type) -> None:
    """Wrap the apply_rotary_pos_emb of the module defining `cls` (once): HF's attention forward looks it
    up there on each call. Outside lean attention modules the wrapper calls HF's function unchanged."""
    module = sys.modules[cls.__module__]
    current = module.apply_rotary_pos_emb
    if not hasattr(current, "hf_rotary"):
        module.apply_rotary_pos_emb = _rotary_dispatcher(current)


def _lean_attention_forward(self, *args, **kwargs):
    """HF's attention forward, with the rotary dispatcher told (for this thread) that it runs in one."""
    outer = _in_lean_attention.active
    _in_lean_attention.active = True
    try:
        return super(type(self), self).forward(*args, **kwargs)
    finally:
        _in_lean_attention.active = outer


def _lean_norm_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    if hidden_states.dtype != self.weight.dtype:  # mixed dtypes: the HF form's type promotion
        return super(type(self), self).forward(hidden_states)
    out = _RMSNorm.apply(hidden_states, self.weight, self.variance_epsilon)
    if out.requires_grad:  # for the lean projections it feeds (_LinearsOfNorm)
        compiled = layer_kernels.kernel_applies(hidden_states, self.weight)
        recipe = (hidden_states.detach(), self.weight.detach(), self.variance_epsilon, compiled)
        setattr(out, _NORM_INPUT, recipe)
    return out


def _norm_recipe(x: torch.Tensor) -> tuple | None:
    """What _LinearsOfNorm needs to recompute x, where x is a lean norm's output and gradients are recorded."""
    return getattr(x, _NORM_INPUT, None) if torch.is_grad_enabled() else None


def _lean_projection_forward(self, x: torch.Tensor) -> torch.Tensor:
    recipe = _norm_recipe(x)
    if recipe is None:
        return F.linear(x, self.weight, self.bias)
    return _LinearsOfNorm.apply(x, *recipe, self.weight, self.bias)[0]


def _lean_mlp_forward(self, x: torch.Tensor) -> torch.Tensor:
    recipe = _norm_recipe(x)
    if recipe is None:
        gate, up = self.gate_proj(x), self.up_proj(x)
    else:  # one recomputation of x in backward serves both
        g, u = self.gate_proj, self.up_proj
        gate, up = _LinearsOfNorm.apply(x, *recipe, g.weight, g.bias, u.weight, u.bias)
    down = self.down_proj
    return _SiluGateDown.apply(gate, up, down.weight, down.bias)


_LEAN_CLASSES: dict[type, type] = {}


def _lean_class(cls: type, forward) -> type:
    if cls not in _LEAN_CLASSES:
        _LEAN_CLASSES[cls] = type(f"Lean{cls.__name__}", (cls,), {"forward": forward, "__module__": __name__})
    return _LEAN_CLASSES[cls]


# The class of the switched q, k, v projections.
LeanProjection = _lean_class(nn.Linear, _lean_projection_forward)


def is_plain_linear(module: nn.Module) -> bool:
    """Whether `module`'s forward is exactly F.linear(x, weight, bias): an nn.Linear, or one switched to
    the lean projection (which changes only what its backward keeps). Code that reads a model's weights to
    compute its layers itself (the native decode step) accepts both."""
    return type(module) is nn.Linear or type(module) is LeanProjection


def _is_silu_mlp(module: nn.Module) -> bool:
    act = getattr(module, "act_fn", None)
    linears = [getattr(module, name, None) for name in ("gate_proj", "up_proj", "down_proj")]
    return all(type(lin) is nn.Linear for lin in linears) and type(act).__name__ in ("SiLU", "SiLUActivation")


def use_lean_activations(model: nn.Module) -> int:
    """Switch the model's Llama-form RMSNorm, SwiGLU MLP and attention modules (with the attention's
    q, k, v projections) to the lean forwards; returns how many norm, MLP and attention modules.
    Anything else (another architecture, another activation) is left as it is."""
    switched = 0
    for module in model.modules():
        name = type(module).__name__
        if name in LEAN_NORMS and hasattr(module, "variance_epsilon"):
            module.__class__ = _lean_class(type(module), _lean_norm_forward)
        elif name in LEAN_MLPS and _is_silu_mlp(module):
            module.__class__ = _lean_class(type(module), _lean_mlp_forward)
        elif name in LEAN_ATTENTIONS and hasattr(
            sys.modules[type(module).__module__], "apply_rotary_pos_emb"
        ):
            _install_rotary_dispatcher(type(module))
            module.__class__ = _lean_class(type(module), _lean_attention_forward)
            for name in ATTENTION_INPUT_PROJECTIONS:
                projection = getattr(module, name, None)
                if type(projection) is nn.Linear:
                    projection.__class__ = LeanProjection
        else:
            continue
        switched += 1
    return switched
