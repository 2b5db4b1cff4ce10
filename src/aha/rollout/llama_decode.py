"""One decoding step (one new token per row) of a Llama-architecture model, written out by hand.

Why: on a CPU with a small model the generic HF forward spends a good share of each step on
bookkeeping (decorators, mask construction, ~40 small ops per layer), and the shape of its matmuls is
a poor one for MKL at decoding batch sizes (`Projection`). This step does the same math with fused
weights (q/k/v in one matmul, gate/up in one) and a rotary table built once per call. It reads and
writes the KV-cache buffers that the HF prefill filled (`PreallocatedLayer`), so prefill stays on the
generic path.

The math is that of transformers' Llama/Qwen2 modules; `decode_step_for` returns None (and the
sampler falls back to the HF forward) for anything it does not cover exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from aha.models.lean_activations import is_plain_linear
from aha.rollout.decode_kernel import KernelDecodeStep, load_decode_kernel

SUPPORTED_MODEL_TYPES = ("llama", "qwen2")
# Rotary variants whose angles depend on the position only (not on the sequence length seen so far).
STATIC_ROPE_TYPES = ("default", "linear", "llama3")


# Up to this many rows a projection runs as W @ x.T (weights on the left); above it as x @ W.T.
WEIGHTS_LEFT_MAX_ROWS = 48


class Projection:
    """x @ W.T for a weight W [out, in] (nn.Linear's layout), in the faster form for the batch size.

    Why: with MKL on this kind of CPU, for 2-48 rows W @ x.T runs 1.2-3x faster than x @ W.T or a
    product with a pre-transposed copy (a 25M-parameter Llama's decoding matmuls at 32 rows: 23 vs
    34 ms); from ~64 rows, and for a single row, x @ (a contiguous W.T) is the faster one. The
    transposed copy is made only when a batch first needs it (once per `generate` call at most).
    """

    def __init__(self, weight: torch.Tensor):
        self.weight = weight
        self._transposed: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if 1 < x.shape[0] <= WEIGHTS_LEFT_MAX_ROWS:
            return torch.mm(self.weight, x.t()).t().contiguous()
        if self._transposed is None:
            self._transposed = self.weight.t().contiguous()
        return torch.mm(x, self._transposed)


@dataclass
class _LayerWeights:
    input_norm: torch.Tensor
    qkv: Projection  # [(heads + 2 * kv_heads) * head_dim, hidden]
    qkv_bias: torch.Tensor | None
    out: Projection
    post_norm: torch.Tensor
    gate_up: Projection  # [2 * intermediate, hidden]
    down: Projection


def decode_step_for(
    model: PreTrainedModel, max_positions: int, kernel: bool = True
) -> LlamaDecodeStep | KernelDecodeStep | None:
    """A decode step for `model` if it is a plain (unwrapped, unquantised) Llama or Qwen2 with full
    attention, SiLU MLPs and static rotary angles; otherwise None. For an fp32 model on the CPU it is the
    compiled step where that builds here (`kernel=False`: always the torch step): in fp32, or under bf16
    autocast in its bf16 form where MKL has a bf16 gemm. Under any other autocast the torch step: a run's
    rollouts must be computed at the precision they are asked for (aha.train.precision).

    A wrapped model (a peft `PeftModel` with LoRA adapters, say) gets None: the step would read the base
    weights and bypass whatever the wrapper adds; so does a layer whose projections are not plain Linear
    (adapters injected in place)."""
    if not hand_written_step_applies(model):
        return None
    step = LlamaDecodeStep(model, max_positions)
    library = load_decode_kernel() if kernel else None
    on_cpu = step.embed.device.type == "cpu"
    if library is None or not on_cpu or step.embed.dtype != torch.float32:
        return step
    if step.matmul_dtype is None or (step.matmul_dtype == torch.bfloat16 and library.mkl["gemm_bf16"]):
        return KernelDecodeStep(step, library)
    return step


def hand_written_step_applies(model: PreTrainedModel) -> bool:
    """Whether `model` is a plain (unwrapped, unquantised) Llama or Qwen2 with full attention, SiLU MLPs
    and static rotary angles: what the hand-written decode steps (this one, the compiled kernel and the
    static-cache step of aha.rollout.static_decode) compute exactly."""
    if not isinstance(model, PreTrainedModel):
        return False
    config = model.config
    if getattr(config, "model_type", None) not in SUPPORTED_MODEL_TYPES:
        return False
    if config.hidden_act != "silu" or any(
        t != "full_attention" for t in getattr(config, "layer_types", None) or []
    ):
        return False
    if getattr(model.model.rotary_emb, "rope_type", None) not in STATIC_ROPE_TYPES:
        return False
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        linears = [
            attn.q_proj,
            attn.k_proj,
            attn.v_proj,
            attn.o_proj,
            mlp.gate_proj,
            mlp.up_proj,
            mlp.down_proj,
        ]
        if not all(is_plain_linear(m) for m in linears) or any(m.bias is not None for m in linears[3:]):
            return False
    if not is_plain_linear(model.lm_head) or model.lm_head.bias is not None:
        return False
    return True


class LlamaDecodeStep:
    """Weights fused from the model's current parameters (built per `generate` call, so training
    updates are always seen), plus cos/sin for positions [0, max_positions)."""

    def __init__(self, model: PreTrainedModel, max_positions: int):
        first = model.model.layers[0].self_attn
        self.heads = model.config.num_attention_heads
        self.kv_heads = model.config.num_key_value_heads
        self.head_dim = first.head_dim
        self.scaling = first.scaling
        self.eps = model.model.norm.variance_epsilon
        self.intermediate = model.model.layers[0].mlp.gate_proj.out_features
        self.embed = model.model.embed_tokens.weight
        self.final_norm = model.model.norm.weight
        # Under autocast the products run in its dtype: the weights are fused in it, once per call, or
        # autocast would cast them again at every token (it keeps casts of parameters, not of copies).
        device_type = self.embed.device.type
        enabled = torch.is_autocast_enabled(device_type)
        self.matmul_dtype = torch.get_autocast_dtype(device_type) if enabled else None
        self.attend_in_float32 = device_type == "cpu" and self.matmul_dtype is not None
        self.lm_head = self._projection(model.lm_head.weight)
        self.layers = [self._fuse(layer) for layer in model.model.layers]
        positions = torch.arange(max_positions, device=self.embed.device)[None]
        cos, sin = model.model.rotary_emb(self.embed[:1], positions)
        half = self.head_dim // 2
        # rotate_half(x) * sin == cat(x2, x1) * sin with the first half of sin negated.
        self.cos, self.sin = cos[0], sin[0].clone()
        self.sin[:, :half] = -self.sin[:, :half]

    def _projection(self, weight: torch.Tensor) -> Projection:
        return Projection(weight if self.matmul_dtype is None else weight.to(self.matmul_dtype))

    def _fuse(self, layer) -> _LayerWeights:
        attn, mlp = layer.self_attn, layer.mlp
        projections = (attn.q_proj, attn.k_proj, attn.v_proj)
        biases = [p.bias for p in projections]
        return _LayerWeights(
            input_norm=layer.input_layernorm.weight,
            qkv=self._projection(torch.cat([p.weight for p in projections])),
            qkv_bias=torch.cat(biases) if all(b is not None for b in biases) else None,
            out=self._projection(attn.o_proj.weight),
            post_norm=layer.post_attention_layernorm.weight,
            gate_up=self._projection(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])),
            down=self._projection(mlp.down_proj.weight),
        )

    def _rms_norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """LlamaRMSNorm: normalise in float32, scale in the model's dtype."""
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return weight * x32.to(x.dtype)

    def _attend(self, query, keys, values, mask) -> torch.Tensor:
        if self.attend_in_float32:
            return low_precision_attention_cpu(query, keys, values, mask, self.scaling, self.matmul_dtype)
        return F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=self.scaling)

    def __call__(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        key_buffers: list[torch.Tensor],
        value_buffers: list[torch.Tensor],
        length: int,
        attention: torch.Tensor | None,
    ) -> torch.Tensor:
        """Logits [B, V] for `tokens` [B] at `positions` [B]; their keys/values are written at index
        `length` of each layer's buffers [B, kv_heads, capacity, head_dim], and attention covers
        indices [0, length] where `attention` [B, >= length + 1] is 1 (None: all of them)."""
        batch, heads, kv_heads, head_dim = tokens.shape[0], self.heads, self.kv_heads, self.head_dim
        mask = None
        if attention is not None:
            visible = attention[:, None, None, : length + 1] == 1
            mask = torch.zeros(visible.shape, dtype=self.embed.dtype, device=tokens.device)
            mask.masked_fill_(~visible, float("-inf"))
        half = head_dim // 2
        cos, sin = self.cos[positions][:, None], self.sin[positions][:, None]
        hidden = F.embedding(tokens, self.embed)
        for weights, keys, values in zip(self.layers, key_buffers, value_buffers, strict=True):
            x = self._rms_norm(hidden, weights.input_norm)
            qkv = weights.qkv(x)
            if weights.qkv_bias is not None:
                qkv += weights.qkv_bias
            qkv = qkv.view(batch, heads + 2 * kv_heads, head_dim)
            qk = qkv[:, : heads + kv_heads]
            qk = qk * cos + torch.cat([qk[..., half:], qk[..., :half]], dim=-1) * sin
            new_keys, new_values = qk[:, heads:], qkv[:, heads + kv_heads :]
            if self.attend_in_float32:  # float32 buffers hold bf16-rounded values (hold_rounded_in_float32)
                new_keys, new_values = new_keys.to(self.matmul_dtype), new_values.to(self.matmul_dtype)
            keys[:, :, length] = new_keys
            values[:, :, length] = new_values
            # One query per row: group query heads under their shared KV head (no repeat of K/V).
            query = qk[:, :heads].reshape(batch, kv_heads, heads // kv_heads, head_dim)
            attended = self._attend(query, keys[:, :, : length + 1], values[:, :, : length + 1], mask)
            hidden = hidden + weights.out(attended.reshape(batch, heads * head_dim))
            x = self._rms_norm(hidden, weights.post_norm)
            gate_up = weights.gate_up(x)
            hidden = hidden + weights.down(
                F.silu(gate_up[:, : self.intermediate]) * gate_up[:, self.intermediate :]
            )
        return self.lm_head(self._rms_norm(hidden, self.final_norm))


def low_precision_attention_cpu(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
    dtype: torch.dtype,
) -> torch.Tensor:
    """What torch's CPU SDPA kernel computes in `dtype` (bf16 under autocast): inputs and attention weights
    rounded to `dtype`, products accumulated and the softmax taken in float32, the output in `dtype`.
    Written out in float32 ops because that kernel took several times as long for one query per row, the
    decode step's case (`python bench/decode_attention_cpu.py`). `keys` and `values` are float32 tensors
    already holding `dtype`-rounded values (the cache keeps them so: no conversion per token)."""
    with torch.autocast("cpu", enabled=False):
        scores = (query.to(dtype).float() @ keys.transpose(-1, -2)) * scale
        if mask is not None:
            scores = scores + mask
        weights = torch.softmax(scores, dim=-1).to(dtype).float()
        return (weights @ values).to(dtype)
