"""A Qwen-sized vocabulary (151,936 tokens) on a 2-layer, 64-wide Llama, through the real
score_completions and backward: no tensor of V x T elements is saved for backward, and the peak memory
grows with the completion length by far less than one float32 [T, V] tensor would add. The same
measurements on the full-logits path show the instrument sees what it is meant to see."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch.profiler import ProfilerActivity, profile
from transformers import LlamaConfig, LlamaForCausalLM

import aha.models.forward as forward
from aha.models.forward import score_completions

VOCAB = 151_936
HIDDEN = 64
ROWS = 4
CHUNK = 16  # tokens per head chunk: 16 x V float32 logits = 9.7 MB


@pytest.fixture(scope="module")
def qwen_vocab_llama():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
    )
    return LlamaForCausalLM(config).train()


def _batch(completion_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, VOCAB, (ROWS, 6 + completion_len), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # a left-padded prompt
    return ids, mask


def _score_and_backward(model, completion_len: int) -> None:
    ids, mask = _batch(completion_len)
    # Rows of distinct prompts: the per-row forward (the shared path is no different at the head).
    scores = score_completions(model, ids, mask, completion_len, temperature=0.7, chunk_tokens=CHUNK)
    scores.logprobs.sum().backward()
    model.zero_grad(set_to_none=True)


def _largest_saved(model, completion_len: int) -> int:
    """Elements of the largest tensor autograd saves for backward."""
    largest = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal largest
        largest = max(largest, t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _score_and_backward(model, completion_len)
    return largest


def _peak_bytes(model, completion_len: int, tmp_path) -> int:
    """Peak bytes of the tensors allocated while scoring and backpropagating (torch.profiler's CPU
    memory timeline: every allocation and free, summed over categories)."""
    with profile(
        activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True
    ) as prof:
        _score_and_backward(model, completion_len)
    path = tmp_path / f"memory-{completion_len}.json"
    with warnings.catch_warnings():  # deprecated for CUDA snapshots; the CPU timeline has no successor
        warnings.simplefilter("ignore", FutureWarning)
        prof.export_memory_timeline(str(path), device="cpu")
    _, sizes = json.loads(path.read_text())
    return max(sum(s) for s in sizes)


def _use_full_logits(monkeypatch) -> None:
    monkeypatch.setattr(forward, "chunked_head", lambda model: None)


@pytest.mark.parametrize("full_logits", [False, True], ids=["chunked", "full-logits"])
def test_no_saved_tensor_holds_vocab_by_tokens(qwen_vocab_llama, full_logits, monkeypatch):
    if full_logits:
        _use_full_logits(monkeypatch)
    completion_len = 64  # 256 scored tokens: V x T = 4x the head weight's V x H
    largest = _largest_saved(qwen_vocab_llama, completion_len)
    weight = VOCAB * HIDDEN  # the head's weight is saved (by reference) for its own gradient
    if full_logits:
        assert largest >= ROWS * completion_len * VOCAB  # the [B, C, V] logits
    else:
        assert largest <= weight


@pytest.mark.parametrize("full_logits", [False, True], ids=["chunked", "full-logits"])
def test_peak_memory_does_not_grow_with_vocab_times_tokens(
    qwen_vocab_llama, full_logits, monkeypatch, tmp_path
):
    if full_logits:
        _use_full_logits(monkeypatch)
    short, long = 8, 64
    growth = _peak_bytes(qwen_vocab_llama, long, tmp_path) - _peak_bytes(qwen_vocab_llama, short, tmp_path)
    one_fp32_logits = ROWS * (long - short) * VOCAB * 4  # 218 MB: what [B, C, V] float32 logits add
    if full_logits:
        assert growth >= one_fp32_logits  # the logits, their float32 copy and their gradient all grow
    else:
        # What may grow: activations and gradients of [B, T, H]-sized tensors (a few MB at H = 64).
        assert growth < one_fp32_logits / 20
        peak = _peak_bytes(qwen_vocab_llama, long, tmp_path)
        head_bytes = VOCAB * HIDDEN * 4
        # Gradients of the embedding and the head, the float32 accumulator, a per-chunk product: ~5 weight
        # sizes; two chunks' logits (forward and backward's softmax); 20 MB for the small activations.
        assert peak < 5 * head_bytes + 2 * CHUNK * VOCAB * 4 + 20e6
