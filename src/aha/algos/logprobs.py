"""Token log-probabilities and entropies from logits, computed in chunks to bound memory.

The naive `torch.log_softmax(logits.float() / T, -1).gather(-1, tokens)` materialises a float32
[N, T, V] tensor: N*T*V*4 bytes, e.g. 32 x 1024 tokens with a 150k vocabulary (Qwen) is
32*1024*150_000*4 B ~ 20 GB, and autograd keeps it alive until backward. Here the logits are
processed in blocks of at most `chunk_size` tokens: each block is upcast to float32, its logsumexp
and the logit of the chosen token are taken, and the block is freed. A custom autograd function
saves only the logits (which exist anyway) and the per-token logsumexp [N, T], and recomputes each
block's softmax in backward, so the extra memory is O(chunk_size * V) in both passes.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.autograd.function import once_differentiable

DEFAULT_CHUNK_SIZE = 1024


def effective_temperature(temperature: float | None) -> float:
    """0 / None mean greedy sampling, whose log-probs are those of the unscaled distribution."""
    if temperature is None or temperature == 0:
        return 1.0
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    return float(temperature)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for bf16/fp16/fp32 logits; float64 stays float64 (for gradcheck-style tests)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _blocks(n: int, t: int, chunk_size: int) -> Iterator[tuple[slice, slice]]:
    """(rows, cols) slices covering [n, t] with at most max(chunk_size, 1) tokens each, as views along
    the leading dims only, so non-contiguous logits (e.g. a slice of a longer sequence) are never copied
    whole."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if n == 0 or t == 0:
        return
    cols = min(t, chunk_size)
    rows = max(1, chunk_size // max(cols, 1))
    for r0 in range(0, n, rows):
        for c0 in range(0, t, cols):
            yield slice(r0, r0 + rows), slice(c0, c0 + cols)


def _check_shapes(logits: torch.Tensor, tokens: torch.Tensor | None = None) -> None:
    if logits.dim() != 3:
        raise ValueError(f"logits must be [N, T, V], got shape {tuple(logits.shape)}")
    if tokens is not None and tokens.shape != logits.shape[:2]:
        raise ValueError(f"tokens {tuple(tokens.shape)} must be [N, T] = {tuple(logits.shape[:2])}")


class _ChunkedTokenLogprobs(torch.autograd.Function):
    """log_softmax(logits / temperature)[tokens], with a backward that recomputes softmax per block."""

    @staticmethod
    def forward(
        ctx, logits: torch.Tensor, tokens: torch.Tensor, temperature: float, chunk_size: int
    ) -> torch.Tensor:
        n, t, _ = logits.shape
        dtype = _compute_dtype(logits.dtype)
        out = torch.empty(n, t, dtype=dtype, device=logits.device)
        lse = torch.empty(n, t, dtype=dtype, device=logits.device)
        for rows, cols in _blocks(n, t, chunk_size):
            x = logits[rows, cols].to(dtype)
            if temperature != 1.0:
                x = x / temperature
            block_lse = torch.logsumexp(x, dim=-1)
            picked = x.gather(-1, tokens[rows, cols].unsqueeze(-1)).squeeze(-1)
            out[rows, cols] = picked - block_lse
            lse[rows, cols] = block_lse
        ctx.save_for_backward(logits, tokens, lse)
        ctx.temperature = temperature
        ctx.chunk_size = chunk_size
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        # d logp(k) / d logit_v = (onehot_k(v) - softmax_v) / temperature
        logits, tokens, lse = ctx.saved_tensors
        temperature = ctx.temperature
        dtype = lse.dtype
        n, t, _ = logits.shape
        grad_logits = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
        for rows, cols in _blocks(n, t, ctx.chunk_size):
            x = logits[rows, cols].to(dtype, copy=True)
            if temperature != 1.0:
                x.div_(temperature)
            probs = x.sub_(lse[rows, cols].unsqueeze(-1)).exp_()
            g = (grad_out[rows, cols].to(dtype) / temperature).unsqueeze(-1)
            block_grad = probs.mul_(-g)
            block_grad.scatter_add_(-1, tokens[rows, cols].unsqueeze(-1), g)
            grad_logits[rows, cols] = block_grad
        return grad_logits, None, None, None


def token_logprobs(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    temperature: float | None = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    """log softmax(logits / temperature) at `tokens`: [N, T, V] x [N, T] -> [N, T] float32 (float64
    for float64 logits). Gradients flow to `logits`; temperature 0 or None means 1 (see RolloutBatch:
    greedy log-probs are plain log-softmax). `tokens` must be valid ids (mask padding afterwards)."""
    _check_shapes(logits, tokens)
    return _ChunkedTokenLogprobs.apply(logits, tokens.long(), effective_temperature(temperature), chunk_size)


@torch.no_grad()
def token_entropy(
    logits: torch.Tensor,
    temperature: float | None = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    """Entropy of softmax(logits / temperature) per position, [N, T] float32 (detached, chunked)."""
    _check_shapes(logits)
    temperature = effective_temperature(temperature)
    n, t, _ = logits.shape
    dtype = _compute_dtype(logits.dtype)
    out = torch.empty(n, t, dtype=dtype, device=logits.device)
    for rows, cols in _blocks(n, t, chunk_size):
        x = logits[rows, cols].to(dtype)
        if temperature != 1.0:
            x = x / temperature
        probs = torch.softmax(x, dim=-1)
        # xlogy(0, 0) = 0, so vocabulary entries masked to -inf do not turn the sum into NaN.
        out[rows, cols] = -torch.special.xlogy(probs, probs).sum(dim=-1)
    return out


def token_entropy_with_grad(logits: torch.Tensor, temperature: float | None = 1.0) -> torch.Tensor:
    """Entropy of softmax(logits / temperature) per position, [N, T] float32, its graph kept (an
    entropy bonus needs the gradient); unchunked, so it holds [N, T, V] float32 for backward."""
    _check_shapes(logits)
    logp = torch.log_softmax(logits.float() / effective_temperature(temperature), dim=-1)
    return -(logp.exp() * logp).sum(-1)
