"""Token log-probs (and entropies) straight from hidden states and the LM head, a chunk of tokens at a time.

`token_logprobs` (logprobs.py) works on logits the model already produced: [N, T, V] of them, e.g.
128 x 512 completion tokens with Qwen's 151,936-token vocabulary are 20 GB in bf16, kept for backward.
Here the head's matmul is part of the chunked function: each chunk of at most `chunk_tokens` positions
gets its logits (`hidden @ W^T`, in the weight's dtype as `nn.Linear` computes them), upcast to float32,
reduced to the chosen token's log-prob and the logsumexp (and the entropy when asked), and freed. Only
the hidden states [N, H] and the logsumexp [N] are saved; backward recomputes each chunk's logits and
forms grad_hidden = g @ W and grad_W += g^T @ hidden, with g = (onehot - softmax) * grad / temperature.
Peak extra memory: one chunk's logits, chunk_tokens x V, in both passes.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

# Elements of one chunk's float32 logits (256 MB): 441 tokens at a 151,936-token vocabulary; the whole
# batch at once for the character-level tiny models.
CHUNK_ELEMENTS = 1 << 26


def chunk_tokens_for(vocab_size: int, elements: int = CHUNK_ELEMENTS) -> int:
    """Tokens per chunk so that one chunk's logits hold at most `elements` entries (at least one token)."""
    return max(1, elements // max(vocab_size, 1))


def _wide(dtype: torch.dtype) -> torch.dtype:
    """float32 for bf16/fp16/fp32 weights; float64 stays float64 (gradcheck)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _chunk_logits(hidden: torch.Tensor, weight: torch.Tensor, temperature: float) -> torch.Tensor:
    """float32 logits / temperature of one chunk; the matmul in the weight's dtype, as nn.Linear does."""
    x = torch.nn.functional.linear(hidden, weight).to(_wide(weight.dtype))
    return x / temperature if temperature != 1.0 else x


class _HeadLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, tokens, temperature, chunk_tokens, with_entropy):
        n, wide = hidden.shape[0], _wide(weight.dtype)
        out = torch.empty(n, dtype=wide, device=hidden.device)
        lse = torch.empty(n, dtype=wide, device=hidden.device)
        entropy = torch.empty(n if with_entropy else 0, dtype=wide, device=hidden.device)
        for start in range(0, n, chunk_tokens):
            rows = slice(start, start + chunk_tokens)
            x = _chunk_logits(hidden[rows], weight, temperature)
            block_lse = torch.logsumexp(x, dim=-1)
            out[rows] = x.gather(-1, tokens[rows, None]).squeeze(-1) - block_lse
            lse[rows] = block_lse
            if with_entropy:  # H = lse - sum(p * x); head logits are finite, so no 0 * inf
                entropy[rows] = block_lse - (torch.softmax(x, dim=-1) * x).sum(-1)
        ctx.save_for_backward(hidden, weight, tokens, lse)
        ctx.temperature, ctx.chunk_tokens = temperature, chunk_tokens
        ctx.mark_non_differentiable(entropy)
        return out, entropy

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, _grad_entropy):
        hidden, weight, tokens, lse = ctx.saved_tensors
        temperature = ctx.temperature
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        # Half-precision weights: each chunk's product in their dtype (tensor cores), summed over chunks in
        # float32 and rounded once at the end, so many chunks do not round the running sum at each add.
        wide = lse.dtype
        grad_weight = torch.zeros(weight.shape, dtype=wide, device=weight.device) if need_weight else None
        for start in range(0, hidden.shape[0], ctx.chunk_tokens):
            rows = slice(start, start + ctx.chunk_tokens)
            h = hidden[rows]
            probs = _chunk_logits(h, weight, temperature).sub_(lse[rows, None]).exp_()
            g = grad_out[rows, None].to(wide) / temperature  # d logp / d logit = (onehot - p) / T
            g_logits = probs.mul_(-g).scatter_add_(-1, tokens[rows, None], g).to(weight.dtype)
            if need_hidden:
                grad_hidden[rows] = g_logits @ weight
            if need_weight:
                if weight.dtype == wide:
                    grad_weight.addmm_(g_logits.t(), h)
                else:
                    grad_weight.add_(g_logits.t() @ h)
        if need_weight:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None, None, None


def head_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    tokens: torch.Tensor,
    temperature: float = 1.0,
    chunk_tokens: int | None = None,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log softmax(hidden @ weight^T / temperature) at `tokens`, [N] float32; its entropy [N] float32,
    detached, or None; float64 for float64 weights). hidden [N, H], weight [V, H] (a bias-free LM head), tokens [N] valid ids.
    Gradients flow to `hidden` and `weight`; `chunk_tokens` defaults to `chunk_tokens_for(V)`."""
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"need hidden [N, H] and weight [V, H], got {tuple(hidden.shape)}, {tuple(weight.shape)}"
        )
    if tokens.shape != hidden.shape[:1]:
        raise ValueError(f"tokens {tuple(tokens.shape)} must be [N] = {tuple(hidden.shape[:1])}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    chunk = chunk_tokens or chunk_tokens_for(weight.shape[0])
    logprobs, entropy = _HeadLogprobs.apply(
        hidden, weight, tokens.long(), float(temperature), chunk, with_entropy
    )
    return logprobs, entropy if with_entropy else None
