"""Model FLOPs of one GRPO step on a Llama, counted from the config (the numerator of "fraction of peak").

Counted: every matmul of the model, 2 FLOPs per multiply-add. Per token and layer
  q/k/v/o projections  2 * h * (h + 2 * kv_dim + h)      (kv_dim = h * kv_heads / heads)
  MLP (gate, up, down) 2 * 3 * h * I
  attention            4 * h * ctx   (Q K^T and A V, each 2 * h * ctx; ctx = positions attended, causal)
and the LM head 2 * h * V only at the positions whose logits are used. Not counted: norms, rotary,
softmax, SiLU, embedding lookups, the optimizer (all O(params) or O(tokens * h), a few percent here).

One GRPO step over B sequences of a P-token prompt and C completion tokens (mu = 1, beta > 0):
  generation   a causal forward over P + C - 1 positions (KV cache), LM head at the C sampling positions
  reference    a teacher-forced forward over P + C positions, LM head at the C completion positions
  policy       the same forward plus its backward (2x the forward): 3 forwards
so step FLOPs = B * (gen + 4 * teacher_forced). This is the work the algorithm needs, whichever tool runs it;
an implementation that recomputes more (e.g. logits at prompt positions) gets no credit for it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LlamaShape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int

    @classmethod
    def from_config(cls, config) -> LlamaShape:
        return cls(
            hidden=config.hidden_size,
            layers=config.num_hidden_layers,
            heads=config.num_attention_heads,
            kv_heads=config.num_key_value_heads or config.num_attention_heads,
            intermediate=config.intermediate_size,
            vocab=config.vocab_size,
        )


def forward_flops(shape: LlamaShape, positions: int, logit_positions: int) -> float:
    """FLOPs of one causal forward over `positions` tokens with the LM head at `logit_positions` of them."""
    h = shape.hidden
    kv_dim = h * shape.kv_heads // shape.heads
    per_token_layer = 2 * h * (2 * h + 2 * kv_dim) + 2 * 3 * h * shape.intermediate
    # Causal attention: the token at position t attends to t + 1 positions; sum_t (t + 1) = L (L + 1) / 2.
    attention_layer = 4 * h * positions * (positions + 1) / 2
    lm_head = 2 * h * shape.vocab * logit_positions
    return shape.layers * (per_token_layer * positions + attention_layer) + lm_head


@dataclass(frozen=True)
class StepFlops:
    generation: float  # sampling the completions (token by token, a few rows per matmul)
    training: float  # reference forward + policy forward and backward (whole sequences per matmul)

    @property
    def total(self) -> float:
        return self.generation + self.training


def grpo_step_flops(shape: LlamaShape, sequences: int, prompt_len: int, completion_len: int) -> StepFlops:
    """Model FLOPs of one GRPO step (generation + reference forward + policy forward and backward)."""
    generation = forward_flops(shape, prompt_len + completion_len - 1, completion_len)
    teacher_forced = forward_flops(shape, prompt_len + completion_len, completion_len)
    return StepFlops(generation=sequences * generation, training=sequences * 4 * teacher_forced)


def decode_projection_shapes(shape: LlamaShape) -> list[tuple[int, int]]:
    """(out, in) of every weight one decoding step multiplies by, fused as aha's decode step fuses them:
    q/k/v in one, gate/up in one, per layer, then the LM head."""
    h, kv_dim, i = shape.hidden, shape.hidden * shape.kv_heads // shape.heads, shape.intermediate
    layer = [(h + 2 * kv_dim, h), (h, h), (2 * i, h), (h, i)]
    return layer * shape.layers + [(shape.vocab, h)]
