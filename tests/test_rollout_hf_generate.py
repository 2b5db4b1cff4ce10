"""The `generate` reference engine: same layout as the native sampler, log-probs equal to the model's."""

from __future__ import annotations

import pytest
import torch

from aha.models.loading import load_model, load_tokenizer
from aha.models.positions import left_padded_position_ids
from aha.rollout import make_engine
from aha.rollout.base import SamplingParams
from aha.rollout.hf_generate import HFGenerateEngine
from aha.rollout.native import NativeSampler

PROMPTS = ["Hi", "What is 12 + 30?", "x", "The quick brown fox jumps over", "2*3=", "Once upon a time"]


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_varied_model_dir):
    return load_model(str(tiny_varied_model_dir)), load_tokenizer(str(tiny_varied_model_dir))


@pytest.fixture(scope="module")
def engine(model_and_tokenizer) -> HFGenerateEngine:
    return HFGenerateEngine(*model_and_tokenizer)


def teacher_forced_logprobs(model, batch, temperature: float) -> torch.Tensor:
    mask = batch.attention_mask
    with torch.no_grad():
        logits = model(
            input_ids=batch.input_ids, attention_mask=mask, position_ids=left_padded_position_ids(mask)
        ).logits.float()
    prompt_len = batch.prompt_ids.shape[1]
    logits = logits[:, prompt_len - 1 : -1] / (temperature or 1.0)
    logprobs = torch.log_softmax(logits, -1).gather(2, batch.completion_ids[..., None]).squeeze(-1)
    return logprobs * batch.completion_mask


def test_greedy_layout_equals_native_sampler(model_and_tokenizer, engine):
    # Greedy decoding is deterministic, so both engines must return the very same batch. The stop string
    # comes from row 1's free-running text, so some rows stop on it and others run to max_new_tokens.
    greedy = SamplingParams(max_new_tokens=20, temperature=0)
    stop = engine.generate(PROMPTS, greedy).completions[1][5:7]
    params = SamplingParams(max_new_tokens=20, temperature=0, stop_strings=(stop,))
    ours, native = (
        engine.generate(PROMPTS, params),
        NativeSampler(*model_and_tokenizer).generate(PROMPTS, params),
    )
    assert ours.truncated.any() and not ours.truncated.all()
    for name in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "truncated"):
        assert torch.equal(getattr(ours, name), getattr(native, name)), name
    assert ours.completions == native.completions
    assert torch.allclose(ours.logprobs, native.logprobs, atol=1e-5)
    assert ours.completions[1].endswith(stop)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_equal_teacher_forced_forward(model_and_tokenizer, engine, temperature):
    model, tokenizer = model_and_tokenizer
    params = SamplingParams(
        max_new_tokens=24, temperature=temperature, top_k=40, top_p=0.95, stop_strings=("e", "7"), seed=3
    )
    batch = engine.generate(PROMPTS * 2, params)
    lengths = batch.completion_mask.sum(1)
    assert (lengths < batch.completion_ids.shape[1]).any(), "need rows that end early"
    assert batch.logprobs.dtype == torch.float32
    assert (batch.logprobs[batch.completion_mask == 0] == 0).all()
    assert (batch.completion_ids[batch.completion_mask == 0] == tokenizer.pad_token_id).all()
    reference = teacher_forced_logprobs(model, batch, temperature)
    assert (batch.logprobs - reference).abs().max().item() <= 1e-4


def test_seed_is_reproducible_and_leaves_global_rng_alone(engine):
    params = SamplingParams(max_new_tokens=12, temperature=1.0, seed=11)
    torch.manual_seed(0)
    expected_next = torch.rand(1)
    torch.manual_seed(0)
    first = engine.generate(PROMPTS, params)
    assert torch.equal(torch.rand(1), expected_next)
    assert torch.equal(engine.generate(PROMPTS, params).completion_ids, first.completion_ids)
    other = engine.generate(PROMPTS, SamplingParams(max_new_tokens=12, temperature=1.0, seed=12))
    assert other.completions != first.completions


def test_ignores_the_models_own_generation_defaults(model_and_tokenizer, engine):
    """A checkpoint's generation_config (here a strong repetition penalty) must not change what we sample."""
    model, _ = model_and_tokenizer
    params = SamplingParams(max_new_tokens=12, temperature=0)
    before = engine.generate(PROMPTS, params)
    model.generation_config.repetition_penalty = 5.0
    try:
        after = engine.generate(PROMPTS, params)
    finally:
        model.generation_config.repetition_penalty = 1.0
    assert torch.equal(before.completion_ids, after.completion_ids)


def test_make_engine_builds_it(model_and_tokenizer):
    assert isinstance(make_engine("hf", *model_and_tokenizer), HFGenerateEngine)
