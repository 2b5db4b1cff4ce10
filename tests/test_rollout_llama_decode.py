"""The hand-written Llama/Qwen2 decoding step gives the HF model's own outputs, and is refused for
models whose math it does not cover (the sampler then uses the generic HF forward)."""

from __future__ import annotations

import pytest
import torch

from aha.models.loading import load_model, load_tokenizer
from aha.models.positions import left_padded_position_ids
from aha.rollout.base import SamplingParams
from aha.rollout.llama_decode import WEIGHTS_LEFT_MAX_ROWS, Projection, decode_step_for
from aha.rollout.native import NativeSampler

PROMPTS = ["Hi", "What is 12 + 30?", "x", "The quick brown fox jumps over"]


@pytest.fixture(scope="module")
def tiny_llama(tiny_varied_model_dir):
    return load_model(str(tiny_varied_model_dir)), load_tokenizer(str(tiny_varied_model_dir))


def _teacher_forced_error(model, batch, temperature: float) -> float:
    mask = batch.attention_mask
    with torch.no_grad():
        logits = model(
            input_ids=batch.input_ids, attention_mask=mask, position_ids=left_padded_position_ids(mask)
        ).logits.float()
    prompt_len = batch.prompt_ids.shape[1]
    logprobs = torch.log_softmax(logits[:, prompt_len - 1 : -1] / temperature, -1)
    reference = logprobs.gather(2, batch.completion_ids[..., None]).squeeze(-1) * batch.completion_mask
    return (batch.logprobs - reference).abs().max().item()


@pytest.mark.parametrize("rows", [1, 3, WEIGHTS_LEFT_MAX_ROWS, WEIGHTS_LEFT_MAX_ROWS + 1, 100])
def test_projection_is_x_times_weight_transposed_in_either_form(rows):
    generator = torch.Generator().manual_seed(rows)
    weight, x = torch.randn(24, 16, generator=generator), torch.randn(rows, 16, generator=generator)
    projection = Projection(weight)
    for _ in range(2):  # the second call reuses the transposed copy where one was made
        out = projection(x)
        assert out.is_contiguous()
        torch.testing.assert_close(out, x @ weight.T)


@pytest.mark.parametrize("copies", [1, 16], ids=["4-rows", "64-rows"])
@pytest.mark.parametrize("name", ["tiny_llama", "tiny_qwen2"])
def test_fast_step_matches_the_hf_forward(name, copies, request):
    """4 rows take the weights-left matmuls, 64 rows the x @ W.T ones (`Projection`)."""
    model, tokenizer = request.getfixturevalue(name)
    assert decode_step_for(model, 64) is not None
    fast, generic = NativeSampler(model, tokenizer), NativeSampler(model, tokenizer, fast_decode=False)
    greedy = SamplingParams(max_new_tokens=16, temperature=0)
    prompts = PROMPTS * copies
    fast_batch, generic_batch = fast.generate(prompts, greedy), generic.generate(prompts, greedy)
    assert torch.equal(fast_batch.completion_ids, generic_batch.completion_ids)
    assert torch.allclose(fast_batch.logprobs, generic_batch.logprobs, atol=1e-5)
    sampled = fast.generate(PROMPTS * 2, SamplingParams(max_new_tokens=16, temperature=0.8, top_k=30, seed=0))
    assert _teacher_forced_error(model, sampled, 0.8) <= 1e-4


def test_other_architectures_use_the_generic_forward(tiny_gpt2, tiny_qwen2):
    model, tokenizer = tiny_gpt2
    assert decode_step_for(model, 64) is None
    batch = NativeSampler(model, tokenizer).generate(PROMPTS, SamplingParams(max_new_tokens=12, seed=0))
    assert _teacher_forced_error(model, batch, 1.0) <= 1e-4

    qwen2, _ = tiny_qwen2
    qwen2.config.layer_types = ["sliding_attention"] * qwen2.config.num_hidden_layers
    try:
        assert decode_step_for(qwen2, 64) is None
    finally:
        qwen2.config.layer_types = ["full_attention"] * qwen2.config.num_hidden_layers
    assert decode_step_for(qwen2, 64) is not None
