from __future__ import annotations

import math

import pytest
import torch

from aha.algos.logprobs import token_entropy, token_logprobs


def naive_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    return torch.log_softmax(logits.float() / temperature, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def make(shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    n, t, v = shape
    logits = (torch.randn(n, t, v, generator=g) * 3).to(dtype).requires_grad_(True)
    tokens = torch.randint(0, v, (n, t), generator=g)
    upstream = torch.randn(n, t, generator=g)  # arbitrary weights so every position's gradient matters
    return logits, tokens, upstream


def test_by_hand():
    # logits [0, ln 2, ln 5]: softmax = [1, 2, 5] / 8 -> log-probs of tokens 2 and 0: ln(5/8), ln(1/8)
    logits = torch.log(torch.tensor([[[1.0, 2.0, 5.0], [1.0, 2.0, 5.0]]]))
    out = token_logprobs(logits, torch.tensor([[2, 0]]))
    torch.testing.assert_close(out, torch.tensor([[math.log(5 / 8), math.log(1 / 8)]]))
    # temperature 2: logits / 2 = ln of [1, sqrt 2, sqrt 5] -> p(2) = sqrt5 / (1 + sqrt2 + sqrt5)
    out_t = token_logprobs(logits, torch.tensor([[2, 0]]), temperature=2.0)
    z = 1 + math.sqrt(2) + math.sqrt(5)
    torch.testing.assert_close(out_t, torch.tensor([[math.log(math.sqrt(5) / z), math.log(1 / z)]]))


@pytest.mark.parametrize("shape", [(2, 5, 11), (3, 7, 50), (1, 1, 3), (4, 2, 17)])
@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.3])
@pytest.mark.parametrize("chunk_size", [1, 3, 1024])
def test_matches_naive_values_and_gradients(shape, temperature, chunk_size):
    # chunk_size 1 and 3 split rows and the time axis into blocks; 1024 takes everything at once.
    logits, tokens, upstream = make(shape)
    out = token_logprobs(logits, tokens, temperature, chunk_size=chunk_size)
    ref = naive_logprobs(logits, tokens, temperature)
    assert out.dtype == torch.float32 and out.shape == tokens.shape
    torch.testing.assert_close(out, ref)
    (grad,) = torch.autograd.grad((out * upstream).sum(), logits)
    (ref_grad,) = torch.autograd.grad((ref * upstream).sum(), logits)
    torch.testing.assert_close(grad, ref_grad)


def test_bf16_logits():
    logits, tokens, upstream = make((3, 6, 40), dtype=torch.bfloat16)
    out = token_logprobs(logits, tokens, 0.8, chunk_size=4)
    ref = naive_logprobs(logits, tokens, 0.8)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)  # same float32 math on the same bf16 values
    (grad,) = torch.autograd.grad((out * upstream).sum(), logits)
    (ref_grad,) = torch.autograd.grad((ref * upstream).sum(), logits)
    assert grad.dtype == torch.bfloat16
    torch.testing.assert_close(grad.float(), ref_grad.float(), atol=1e-2, rtol=1e-2)


def test_non_contiguous_logits_slice():
    # What a trainer does: logits of prompt + completion, sliced to the completion positions.
    full, _, _ = make((2, 9, 13))
    logits = full[:, 3:-1]
    tokens = torch.randint(0, 13, (2, 5), generator=torch.Generator().manual_seed(3))
    out = token_logprobs(logits, tokens, chunk_size=2)
    torch.testing.assert_close(out, naive_logprobs(logits, tokens))
    (grad,) = torch.autograd.grad(out.sum(), full)
    (ref_grad,) = torch.autograd.grad(naive_logprobs(logits, tokens).sum(), full)
    torch.testing.assert_close(grad, ref_grad)
    assert grad[:, :3].abs().sum() == 0 and grad[:, -1].abs().sum() == 0


def test_gradcheck_float64():
    logits, tokens, _ = make((2, 3, 5), dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: token_logprobs(x, tokens, 0.9, chunk_size=2), (logits,))


@pytest.mark.parametrize("temperature", [0, 0.0, None])
def test_zero_or_none_temperature_means_one(temperature):
    logits, tokens, _ = make((2, 3, 5))
    torch.testing.assert_close(
        token_logprobs(logits, tokens, temperature), naive_logprobs(logits, tokens, 1.0)
    )


def test_no_grad_and_bad_inputs():
    logits, tokens, _ = make((2, 3, 5))
    with torch.no_grad():
        out = token_logprobs(logits, tokens)
    assert not out.requires_grad
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(logits, tokens, -1.0)
    with pytest.raises(ValueError, match=r"\[N, T\]"):
        token_logprobs(logits, tokens[:, :2])
    with pytest.raises(ValueError, match=r"\[N, T, V\]"):
        token_logprobs(logits[0], tokens[0])
    with pytest.raises(ValueError, match="chunk_size"):
        token_logprobs(logits, tokens, chunk_size=0)


def naive_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    logp = torch.log_softmax(logits.float() / temperature, -1)
    return -(logp.exp() * logp).sum(-1)


@pytest.mark.parametrize("temperature", [1.0, 0.6])
@pytest.mark.parametrize("chunk_size", [1, 4, 1024])
def test_entropy_matches_naive(temperature, chunk_size):
    logits, _, _ = make((3, 5, 21))
    out = token_entropy(logits, temperature, chunk_size=chunk_size)
    assert out.dtype == torch.float32 and not out.requires_grad
    torch.testing.assert_close(out, naive_entropy(logits.detach(), temperature))


def test_entropy_by_hand_and_masked_vocab():
    # uniform over 4 -> ln 4; one-hot-ish with -inf elsewhere -> 0 (not NaN)
    # [0, 0, -inf, -inf] -> uniform over 2 -> ln 2
    logits = torch.tensor(
        [[[0.0, 0.0, 0.0, 0.0], [5.0, -math.inf, -math.inf, -math.inf], [0.0, 0.0, -math.inf, -math.inf]]]
    )
    torch.testing.assert_close(token_entropy(logits), torch.tensor([[math.log(4), 0.0, math.log(2)]]))
