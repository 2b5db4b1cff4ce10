"""The static-cache decode path (aha.rollout.static_decode / static_loop) on the CPU: its log-probs are the
model's, it samples what the native loop samples, ends rows at EOS and stop strings checked in blocks, and
keeps its steps (buffers, and on CUDA the graphs) between calls while seeing the current weights. The CUDA
graph itself is tested at the end, on CUDA only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.tolerances import bf16_logprob_atol
from test_rollout_native import PROMPTS, assert_rounding_close, teacher_forced_logprobs

import aha.rollout.static_loop as static_loop
from aha.models.loading import load_model, load_tokenizer
from aha.models.positions import left_padded_position_ids
from aha.rollout.base import SamplingParams
from aha.rollout.native import NativeSampler


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_varied_model_dir):
    return load_model(str(tiny_varied_model_dir)), load_tokenizer(str(tiny_varied_model_dir))


@pytest.fixture(scope="module")
def static(model_and_tokenizer) -> NativeSampler:
    return NativeSampler(*model_and_tokenizer, decode="static")


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_equal_teacher_forced_forward(model_and_tokenizer, static, temperature, monkeypatch):
    model, _ = model_and_tokenizer
    monkeypatch.setattr(static_loop, "STOP_CHECK_EVERY", 5)  # stop strings found across several blocks
    params = SamplingParams(
        max_new_tokens=24, temperature=temperature, top_k=40, top_p=0.95, stop_strings=("e", "7"), seed=0
    )
    batch = static.generate(PROMPTS * 4, params)
    assert batch.extras["decode"] == "static"
    lengths = batch.completion_mask.sum(1)
    assert (lengths < 24).any() and (lengths == 24).any(), "need rows that end early and rows that run on"
    assert (batch.logprobs[batch.completion_mask == 0] == 0).all()
    assert (batch.logprobs[batch.completion_mask == 1] < 0).all()
    assert_rounding_close(model, batch, temperature)


def test_samples_what_the_native_loop_samples(model_and_tokenizer, static):
    """With no row ending early, both loops draw one uniform per row per step from the same generator,
    so the same seed gives the same tokens; log-probs agree to float32 rounding."""
    model, tokenizer = model_and_tokenizer
    params = SamplingParams(max_new_tokens=16, min_new_tokens=16, temperature=1.0, seed=3)
    ours = static.generate(PROMPTS * 2, params)
    theirs = NativeSampler(model, tokenizer, decode="torch").generate(PROMPTS * 2, params)
    assert torch.equal(ours.completion_ids, theirs.completion_ids)
    assert_rounding_close(model, ours, 1.0)
    again = static.generate(PROMPTS * 2, params)
    assert torch.equal(again.completion_ids, ours.completion_ids) and torch.equal(
        again.logprobs, ours.logprobs
    )


@pytest.mark.parametrize("check_every", [3, 16])
def test_greedy_stop_strings_and_eos_match_the_native_loop(
    model_and_tokenizer, static, monkeypatch, check_every
):
    """Greedy decoding is deterministic, so the static loop must end every row exactly where the native
    loop does: at EOS, at the token completing a stop string (found in blocks of `check_every`), or at
    max_new_tokens; same ids, masks, text and truncation flags."""
    model, tokenizer = model_and_tokenizer
    monkeypatch.setattr(static_loop, "STOP_CHECK_EVERY", check_every)
    native = NativeSampler(model, tokenizer, decode="torch")
    free = native.generate(PROMPTS, SamplingParams(max_new_tokens=20, temperature=0))
    stop = free.completions[1][6:8]
    for params in (
        SamplingParams(max_new_tokens=20, temperature=0),
        SamplingParams(max_new_tokens=20, temperature=0, stop_strings=(stop, "o")),
        SamplingParams(max_new_tokens=40, temperature=3.0, min_new_tokens=5, seed=0),  # EOS comes up
    ):
        ours = static.generate(PROMPTS * 4, params)
        if params.temperature == 0:
            expected = native.generate(PROMPTS * 4, params)
            assert ours.completions == expected.completions
            assert torch.equal(ours.completion_ids, expected.completion_ids)
            assert torch.equal(ours.completion_mask, expected.completion_mask)
            assert torch.equal(ours.truncated, expected.truncated)
        else:  # sampled: the native loop drops ended rows (other draws), so check the rules instead
            lengths = ours.completion_mask.sum(1)
            assert (lengths >= 5).all() and (~ours.truncated).any()
            ended = ~ours.truncated
            assert (ours.completion_ids[ended, lengths[ended] - 1] == tokenizer.eos_token_id).all()
            assert (ours.completion_ids[:, :4] != tokenizer.eos_token_id).all()
        assert_rounding_close(model, ours, params.temperature)
    stopped = static.generate(PROMPTS, SamplingParams(max_new_tokens=20, temperature=0, stop_strings=(stop,)))
    assert stopped.completions[1].endswith(stop) and not stopped.truncated[1]


def test_the_step_is_kept_between_calls_and_sees_new_weights(tiny_varied_model_dir):
    """The second call reuses the first call's step (on CUDA: its captured graph) and still samples from
    the weights as they are now: `refresh` copies them in place."""
    model, tokenizer = load_model(str(tiny_varied_model_dir)), load_tokenizer(str(tiny_varied_model_dir))
    sampler = NativeSampler(model, tokenizer, decode="static")
    params = SamplingParams(max_new_tokens=12, temperature=1.0, seed=1)
    before = sampler.generate(PROMPTS, params)
    kept, weights = sampler.static_steps[len(PROMPTS)], sampler.static_weights
    with torch.no_grad():  # what an optimizer step does: parameters change in place
        for p in model.parameters():
            p.mul_(1.3)
    after = sampler.generate(PROMPTS, params)
    assert sampler.static_steps[len(PROMPTS)] is kept and sampler.static_weights is weights
    assert not torch.allclose(after.logprobs, before.logprobs)
    assert_rounding_close(model, after, 1.0)
    sampler.generate(PROMPTS * 2, params)  # another batch size (evaluation's, say): a step of its own
    assert list(sampler.static_steps) == [len(PROMPTS), 2 * len(PROMPTS)]
    again = sampler.generate(PROMPTS, params)  # back to the first: still there, same weights buffers
    assert sampler.static_steps[len(PROMPTS)] is kept and sampler.static_weights is weights
    assert torch.equal(again.completion_ids, after.completion_ids)
    sampler.generate(PROMPTS * 3, params)  # a third size: the least recently used step goes
    assert list(sampler.static_steps) == [len(PROMPTS), 3 * len(PROMPTS)]


def assert_bf16_close(model, batch, temperature: float) -> None:
    """The sampler's log-probs under bf16 autocast equal the teacher-forced forward's under the same
    autocast within bf16 rounding (helpers/tolerances.py: bf16_logprob_atol)."""
    device = batch.input_ids.device.type
    mask = batch.attention_mask
    with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16):
        logits = model(
            input_ids=batch.input_ids, attention_mask=mask, position_ids=left_padded_position_ids(mask)
        ).logits
        reference = teacher_forced_logprobs(model, batch, temperature)
    atol = bf16_logprob_atol(model.config, logits.float().abs().max().item(), temperature)
    error = (batch.logprobs - reference).abs().max().item()
    assert error <= atol, (error, atol)


def test_bf16_autocast_logprobs_equal_teacher_forced_forward(model_and_tokenizer, static):
    model, _ = model_and_tokenizer
    with torch.autocast("cpu", dtype=torch.bfloat16):
        batch = static.generate(PROMPTS * 2, SamplingParams(max_new_tokens=16, temperature=1.0, seed=0))
    assert static.static_weights.dtype == torch.bfloat16
    assert_bf16_close(model, batch, 1.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graph_logprobs_equal_teacher_forced_forward_in_bf16(tiny_varied_model_dir):
    """On CUDA the default native engine takes the static step and replays it as a CUDA graph; under bf16
    autocast its log-probs equal the teacher-forced forward's within bf16 rounding, call after call."""
    model = load_model(str(tiny_varied_model_dir)).cuda()
    tokenizer = load_tokenizer(str(tiny_varied_model_dir))
    sampler = NativeSampler(model, tokenizer)
    params = SamplingParams(max_new_tokens=24, temperature=1.0, stop_strings=("e",), seed=0)
    for _ in range(2):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            batch = sampler.generate(PROMPTS * 4, params)
        assert batch.extras["decode"] == "static, CUDA graph", batch.extras.get("graph_capture_error")
        assert sampler.static_steps[len(PROMPTS) * 4].graph is not None
        assert (batch.completion_mask.sum(1) < 24).any()
        assert_bf16_close(model, batch, 1.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_grpo_on_cuda_learns_with_the_graphed_sampler(tmp_path, monkeypatch):
    """`run_grpo` on CUDA (bf16-mixed, the default there) samples through the CUDA graph, evaluation's
    batch size and training's alternating, and learns the digit reward as on the CPU (test_train_grpo)."""
    from aha.config import load_config
    from aha.models.tiny import create_tiny_model
    from aha.train.grpo import GRPORunConfig, run_grpo

    monkeypatch.syspath_prepend(str(Path(__file__).parent / "helpers"))
    model_dir = create_tiny_model(tmp_path / "model", seed=0)
    overrides = [
        f"model.path={model_dir}",
        "model.device=cuda",
        f"run.output_dir={tmp_path / 'run'}",
        "run.progress=false",
        "rewards.functions=[toy_rewards:digit_fraction]",
        "rollout.max_new_tokens=8",
        "train.prompts_per_step=8",
        "train.steps=20",
        "optim.lr=3e-3",
        "algo.beta=0.01",
        "data.arithmetic_train_size=200",
        "data.arithmetic_eval_size=16",
        "eval.num_prompts=16",
        "eval.every=5",
        "track.plot=false",
    ]
    result = run_grpo(load_config(GRPORunConfig, overrides=overrides))
    rewards = [row["reward/mean"] for row in result.history if "reward/mean" in row]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert first < 0.3 and last > first + 0.3, (first, last)
