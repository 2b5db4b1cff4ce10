"""head_logprobs: log-probs and entropies of hidden @ W^T, chunked over tokens, equal the naive full-logits
computation in value and in gradient (hidden and weight), at every chunk size and temperature."""

from __future__ import annotations

import math

import pytest
import torch

from aha.algos.head_logprobs import chunk_tokens_for, head_logprobs


def _naive(hidden, weight, tokens, temperature=1.0):
    logp = torch.log_softmax((hidden @ weight.t()).float() / temperature, -1)
    entropy = -(logp.exp() * logp).sum(-1)
    return logp.gather(-1, tokens[:, None]).squeeze(-1), entropy


def _make(n=13, h=6, v=29, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g, dtype=torch.float64).to(dtype).requires_grad_(True)
    weight = torch.randn(v, h, generator=g, dtype=torch.float64).to(dtype).requires_grad_(True)
    tokens = torch.randint(0, v, (n,), generator=g)
    upstream = torch.randn(n, generator=g)  # every position's gradient weighs differently
    return hidden, weight, tokens, upstream


def test_by_hand():
    # One position, hidden [1, 0], weight rows (ln 1, ln 2, ln 5) x [1, 0]: logits ln [1, 2, 5],
    # softmax [1, 2, 5] / 8; at temperature 2 the logits are ln [1, sqrt 2, sqrt 5].
    hidden = torch.tensor([[1.0, 0.0]])
    weight = torch.tensor([[0.0, 3.0], [math.log(2), -1.0], [math.log(5), 2.0]])
    logp, entropy = head_logprobs(hidden, weight, torch.tensor([2]), with_entropy=True)
    torch.testing.assert_close(logp, torch.tensor([math.log(5 / 8)]))
    p = torch.tensor([1.0, 2.0, 5.0]) / 8
    torch.testing.assert_close(entropy, -(p * p.log()).sum()[None])
    logp_t, _ = head_logprobs(hidden, weight, torch.tensor([0]), temperature=2.0)
    torch.testing.assert_close(logp_t, torch.tensor([-math.log(1 + math.sqrt(2) + math.sqrt(5))]))


@pytest.mark.parametrize("chunk_tokens", [1, 4, 13, 100])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_values_and_gradients_match_full_logits(chunk_tokens, temperature):
    hidden, weight, tokens, upstream = _make()
    logp, entropy = head_logprobs(hidden, weight, tokens, temperature, chunk_tokens, with_entropy=True)
    grads = torch.autograd.grad((logp * upstream).sum(), (hidden, weight))
    ref_logp, ref_entropy = _naive(hidden, weight, tokens, temperature)
    ref_grads = torch.autograd.grad((ref_logp * upstream).sum(), (hidden, weight))
    # float32 rounding: the same matmul and reductions in another grouping, ~1e-7 relative per op over
    # sums of 29 vocabulary terms and 13 tokens: 1e-5 absolute on O(1) values.
    torch.testing.assert_close(logp, ref_logp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(entropy, ref_entropy.detach(), rtol=1e-5, atol=1e-5)
    assert not entropy.requires_grad
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_gradcheck_in_float64():
    hidden, weight, tokens, _ = _make(n=5, h=3, v=7, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda h, w: head_logprobs(h, w, tokens, 0.8, 2)[0], (hidden, weight))


def test_frozen_weight_gets_no_gradient():
    hidden, weight, tokens, _ = _make()
    weight = weight.detach()
    logp, _ = head_logprobs(hidden, weight, tokens, chunk_tokens=4)
    logp.sum().backward()
    assert hidden.grad is not None and weight.grad is None


def test_bf16_weight_matches_bf16_linear_then_float32_softmax():
    # nn.Linear in bf16 then upcast is what the model's own head + token_logprobs compute.
    hidden, weight, tokens, upstream = _make(dtype=torch.bfloat16)
    logp, _ = head_logprobs(hidden, weight, tokens, chunk_tokens=4)
    grads = torch.autograd.grad((logp * upstream).sum(), (hidden, weight))
    ref_logp, _ = _naive(hidden, weight, tokens)
    ref_grads = torch.autograd.grad((ref_logp * upstream).sum(), (hidden, weight))
    torch.testing.assert_close(logp, ref_logp, rtol=1e-5, atol=1e-5)  # same bf16 logits, float32 after
    for got, want in zip(grads, ref_grads, strict=True):
        assert got.dtype == torch.bfloat16
        # bf16 keeps 8 bits: one rounding of the gradient is 2^-8 relative; grad_W sums 13 tokens'
        # products, rounded once here (float32 accumulation) and once per product there.
        torch.testing.assert_close(
            got.float(), want.float(), rtol=2**-6, atol=2**-6 * want.abs().max().item()
        )


def test_chunk_tokens_for_budget():
    assert chunk_tokens_for(151_936, elements=1 << 26) == (1 << 26) // 151_936
    assert chunk_tokens_for(10**9, elements=1 << 26) == 1  # at least one token


def test_shape_errors():
    hidden, weight, tokens, _ = _make()
    with pytest.raises(ValueError, match="tokens"):
        head_logprobs(hidden, weight, tokens[:-1])
    with pytest.raises(ValueError, match="weight"):
        head_logprobs(hidden, weight.t(), tokens)
    with pytest.raises(ValueError, match="temperature"):
        head_logprobs(hidden, weight, tokens, temperature=0.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="checks the CUDA kernels' path")
def test_on_cuda_values_and_gradients_match_full_logits():
    hidden, weight, tokens, upstream = (t.detach().cuda() for t in _make(n=300, h=32, v=5000))
    hidden.requires_grad_(True)
    weight.requires_grad_(True)
    logp, entropy = head_logprobs(hidden, weight, tokens, 0.7, chunk_tokens=64, with_entropy=True)
    grads = torch.autograd.grad((logp * upstream).sum(), (hidden, weight))
    ref_logp, ref_entropy = _naive(hidden, weight, tokens, 0.7)
    ref_grads = torch.autograd.grad((ref_logp * upstream).sum(), (hidden, weight))
    # float32 rounding over 5000-term sums (TF32 off by default for matmuls): 1e-4 on O(1) values.
    torch.testing.assert_close(logp, ref_logp, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(entropy, ref_entropy.detach(), rtol=1e-4, atol=1e-4)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())
