"""A decode step with static shapes, for GPUs: captured once as a CUDA graph and replayed every token.

Why: a GPU decodes a small model's token in well under a millisecond of kernel time, but the eager step
launches a few hundred kernels from Python (24 layers x ~20 ops), so launch overhead, not the GPU, sets
the pace (issue 24: 18 ms a token for a 308M Llama on an H200). A CUDA graph replays all of them with one
launch, which needs every tensor the step touches to keep its address and shape from token to token:

- the KV cache is one preallocated buffer per layer [batch, kv_heads, capacity, head_dim], zeroed once
  (masked positions are multiplied by exactly zero; garbage could be NaN), and attention always reads
  the whole capacity, with a boolean `visible` buffer masking what is not written yet;
- the step's inputs (tokens, positions, the index the new keys/values go to) are device tensors that
  the loop overwrites in place (`set_inputs`), so no Python number enters the captured work;
- the fused weights (q/k/v in one matrix, gate/up in one) are buffers in the compute dtype that
  `refresh` copies the model's current parameters into, in place, once per `generate` call; norms and
  the embedding are the model's own parameters, which the optimizer also updates in place.

The same step runs eagerly on the CPU (tests) and anywhere CUDA graphs are off; only the capture is
CUDA-only (`GraphedStep`). The arithmetic is that of the HF Llama/Qwen2 forward under autocast: the
residual stream and norms in the parameters' dtype (float32), products in the compute dtype, rotary in
float32, attention over keys/values stored in the compute dtype.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers.cache_utils import Cache

log = logging.getLogger(__name__)


@dataclass
class _LayerWeights:
    input_norm: torch.Tensor  # the model's parameter
    qkv: torch.Tensor  # [(heads + 2 * kv_heads) * head_dim, hidden], compute dtype, refreshed
    qkv_bias: torch.Tensor | None
    out: torch.Tensor
    post_norm: torch.Tensor
    gate_up: torch.Tensor  # [2 * intermediate, hidden]
    down: torch.Tensor


class StaticWeights:
    """The model's weights as the static step reads them: fused projections in `compute_dtype` (None: the
    parameters' dtype) in buffers that `refresh` overwrites in place, and the norms and embedding as the
    model's own parameters. One per sampler and dtype, shared by its steps of every batch size. Build it
    only for models that `aha.rollout.llama_decode.hand_written_step_applies` accepts."""

    def __init__(self, model: PreTrainedModel, compute_dtype: torch.dtype | None):
        self.model = model
        config = model.config
        first = model.model.layers[0]
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim, self.scaling = first.self_attn.head_dim, first.self_attn.scaling
        self.intermediate = first.mlp.gate_proj.out_features
        self.eps = model.model.norm.variance_epsilon
        self.embed = model.model.embed_tokens.weight
        self.final_norm = model.model.norm.weight
        self.dtype = compute_dtype or self.embed.dtype
        self.device = self.embed.device
        self.lm_head = self._buffer(model.lm_head.weight.shape)
        self.layers = [self._layer(layer) for layer in model.model.layers]
        self.refresh()

    def _buffer(self, shape) -> torch.Tensor:
        return torch.empty(shape, dtype=self.dtype, device=self.device)

    def _layer(self, layer) -> _LayerWeights:
        attn, mlp = layer.self_attn, layer.mlp
        qkv_rows = (self.heads + 2 * self.kv_heads) * self.head_dim
        return _LayerWeights(
            input_norm=layer.input_layernorm.weight,
            qkv=self._buffer((qkv_rows, attn.q_proj.in_features)),
            qkv_bias=self._buffer((qkv_rows,)) if attn.q_proj.bias is not None else None,
            out=self._buffer(attn.o_proj.weight.shape),
            post_norm=layer.post_attention_layernorm.weight,
            gate_up=self._buffer((2 * self.intermediate, attn.q_proj.in_features)),
            down=self._buffer(mlp.down_proj.weight.shape),
        )

    @torch.no_grad()
    def refresh(self) -> None:
        """Copy the model's current weights into the buffers (in place: captured graphs stay valid)."""
        self.lm_head.copy_(self.model.lm_head.weight)
        for static, layer in zip(self.layers, self.model.model.layers, strict=True):
            attn, mlp = layer.self_attn, layer.mlp
            _copy_rows(static.qkv, [attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
            if static.qkv_bias is not None:
                _copy_rows(static.qkv_bias, [attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias])
            static.out.copy_(attn.o_proj.weight)
            _copy_rows(static.gate_up, [mlp.gate_proj.weight, mlp.up_proj.weight])
            static.down.copy_(mlp.down_proj.weight)


class StaticDecodeStep:
    """One token per row for `batch` rows with room for `capacity` positions, reading `weights`."""

    def __init__(self, weights: StaticWeights, batch: int, capacity: int):
        self.weights, self.batch, self.capacity = weights, batch, capacity
        self.dtype, self.device = weights.dtype, weights.device
        kv_shape = (batch, weights.kv_heads, capacity, weights.head_dim)
        self.keys = [torch.zeros(kv_shape, dtype=self.dtype, device=self.device) for _ in weights.layers]
        self.values = [torch.zeros(kv_shape, dtype=self.dtype, device=self.device) for _ in weights.layers]
        positions = torch.arange(capacity, device=self.device)[None]
        cos, sin = weights.model.model.rotary_emb(weights.embed[:1], positions)
        half = weights.head_dim // 2
        # rotate_half(x) * sin == cat(x2, x1) * sin with the first half of sin negated.
        self.cos, self.sin = cos[0].float(), sin[0].float().clone()
        self.sin[:, :half] = -self.sin[:, :half]
        self.tokens = torch.zeros(batch, dtype=torch.long, device=self.device)
        self.positions = torch.zeros(batch, dtype=torch.long, device=self.device)
        self.write_index = torch.zeros(1, dtype=torch.long, device=self.device)
        self.visible = torch.zeros(batch, capacity, dtype=torch.bool, device=self.device)

    @torch.no_grad()
    def load_prefill(self, cache: Cache, prompt_mask: torch.Tensor, last_positions: torch.Tensor) -> None:
        """Start a batch: the prompts' keys/values from a prefill `cache` (its first P positions), the prompt
        mask [batch, P] as what is visible, and each row's last prompt position [batch]."""
        length = prompt_mask.shape[1]
        for keys, values, layer in zip(self.keys, self.values, cache.layers, strict=True):
            keys[:, :, :length].copy_(layer.keys[:, :, :length])
            values[:, :, :length].copy_(layer.values[:, :, :length])
        self.visible.zero_()
        self.visible[:, :length] = prompt_mask.bool()
        self.positions.copy_(last_positions)

    def set_inputs(self, tokens: torch.Tensor, index: int) -> None:
        """The next step feeds `tokens` [batch] one position after the last, writing cache index `index`."""
        self.tokens.copy_(tokens)
        self.positions.add_(1)
        self.write_index.fill_(index)
        self.visible[:, index] = True

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """LlamaRMSNorm: normalise in float32, scale in the residual's dtype."""
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.weights.eps)
        return weight * x32.to(x.dtype)

    @torch.no_grad()
    def __call__(self) -> torch.Tensor:
        """Logits [batch, vocab] (compute dtype) for the step's inputs; writes their keys/values."""
        with torch.autocast(self.device.type, enabled=False):  # every dtype is explicit here
            return self._forward()

    def _forward(self) -> torch.Tensor:
        w = self.weights
        batch, heads, kv_heads, head_dim = self.batch, w.heads, w.kv_heads, w.head_dim
        half, dtype = head_dim // 2, self.dtype
        mask = torch.zeros(batch, 1, 1, self.capacity, dtype=dtype, device=self.device)
        mask.masked_fill_(~self.visible[:, None, None, :], float("-inf"))
        cos, sin = self.cos[self.positions][:, None], self.sin[self.positions][:, None]
        hidden = F.embedding(self.tokens, w.embed)
        for layer, keys, values in zip(w.layers, self.keys, self.values, strict=True):
            x = self._norm(hidden, layer.input_norm).to(dtype)
            qkv = F.linear(x, layer.qkv, layer.qkv_bias).view(batch, heads + 2 * kv_heads, head_dim)
            qk = qkv[:, : heads + kv_heads].float()
            qk = (qk * cos + torch.cat([qk[..., half:], qk[..., :half]], dim=-1) * sin).to(dtype)
            keys.index_copy_(2, self.write_index, qk[:, heads:, None])
            values.index_copy_(2, self.write_index, qkv[:, heads + kv_heads :, None])
            # One query per row: group query heads under their shared KV head (no repeat of K/V).
            query = qk[:, :heads].reshape(batch, kv_heads, heads // kv_heads, head_dim)
            attended = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=w.scaling)
            hidden = hidden + F.linear(attended.reshape(batch, heads * head_dim), layer.out).to(hidden.dtype)
            gate_up = F.linear(self._norm(hidden, layer.post_norm).to(dtype), layer.gate_up)
            mlp = F.silu(gate_up[:, : w.intermediate]) * gate_up[:, w.intermediate :]
            hidden = hidden + F.linear(mlp, layer.down).to(hidden.dtype)
        return F.linear(self._norm(hidden, w.final_norm).to(dtype), w.lm_head)


def _copy_rows(target: torch.Tensor, parts: list[torch.Tensor]) -> None:
    """Copy `parts` one after another into the rows of `target` (casting to its dtype), in place."""
    start = 0
    for part in parts:
        target[start : start + part.shape[0]].copy_(part)
        start += part.shape[0]


class GraphedStep:
    """Runs a `StaticDecodeStep`, on CUDA as a graph captured at the first call and replayed after.

    The first call runs the step eagerly twice on a side stream (CUDA's rule before capture: lazy
    initialisations must not happen inside it), then captures it. Each run writes the same keys/values
    at the same index from the same inputs, so the repeats change nothing. Later calls replay the graph
    on whatever the input buffers then hold. Elsewhere it calls the step, and so it does from then on if
    the capture fails (logged, and kept in `capture_error`)."""

    def __init__(self, step: StaticDecodeStep, use_graph: bool | None = None):
        self.step = step
        self.use_graph = step.device.type == "cuda" if use_graph is None else use_graph
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None
        self.capture_error: str | None = None

    def __call__(self) -> torch.Tensor:
        if not self.use_graph:
            return self.step()
        if self.graph is None:
            try:
                self._capture()
            except RuntimeError as error:  # a kernel that cannot be captured here: run eagerly instead
                log.warning("CUDA graph capture of the decode step failed (%s); decoding eagerly", error)
                self.capture_error, self.use_graph, self.graph = str(error), False, None
                return self.step()
        self.graph.replay()
        return self.logits

    def _capture(self) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self.step()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self.step()
