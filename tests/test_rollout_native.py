"""The native sampler: its log-probs are the model's, greedy matches `generate`, and it ends rows where
asked (EOS, stop strings, max_new_tokens, never EOS before min_new_tokens)."""

from __future__ import annotations

import math

import pytest
import torch
from helpers.kernels import require_decode_kernel
from helpers.tolerances import logprob_atol

from aha.models.loading import load_model, load_tokenizer
from aha.models.positions import left_padded_position_ids
from aha.rollout import make_engine
from aha.rollout.base import RolloutBatch, SamplingParams
from aha.rollout.decode_kernel import KernelDecodeStep
from aha.rollout.llama_decode import decode_step_for
from aha.rollout.native import NativeSampler, choose_tokens

# Different lengths, so rows are left-padded by different amounts.
PROMPTS = ["Hi", "What is 12 + 30?", "x", "The quick brown fox jumps over", "2*3=", "Once upon a time"]


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_varied_model_dir):
    return load_model(str(tiny_varied_model_dir)), load_tokenizer(str(tiny_varied_model_dir))


@pytest.fixture(scope="module")
def sampler(model_and_tokenizer) -> NativeSampler:
    return NativeSampler(*model_and_tokenizer)


def teacher_forced_logprobs(model, batch: RolloutBatch, temperature: float) -> torch.Tensor:
    """log pi(completion token | prefix) from one forward pass over prompt + completion, 0 on padding."""
    mask = batch.attention_mask
    with torch.no_grad():
        logits = model(
            input_ids=batch.input_ids, attention_mask=mask, position_ids=left_padded_position_ids(mask)
        ).logits.float()
    prompt_len = batch.prompt_ids.shape[1]
    logits = logits[:, prompt_len - 1 : -1] / (temperature or 1.0)
    logprobs = torch.log_softmax(logits, -1).gather(2, batch.completion_ids[..., None]).squeeze(-1)
    return logprobs * batch.completion_mask


def assert_rounding_close(model, batch: RolloutBatch, temperature: float) -> None:
    """The sampler's log-probs equal a teacher-forced forward's within float32 rounding
    (helpers/tolerances.py, from the model's size and the logits' magnitude)."""
    mask = batch.attention_mask
    with torch.no_grad():
        logits = model(
            input_ids=batch.input_ids, attention_mask=mask, position_ids=left_padded_position_ids(mask)
        ).logits
    atol = logprob_atol(model.config, logits.abs().max().item(), temperature)
    reference = teacher_forced_logprobs(model, batch, temperature)
    assert (batch.logprobs - reference).abs().max().item() <= atol


@pytest.mark.parametrize("decode", ["kernel", "torch", "hf"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_equal_teacher_forced_forward(model_and_tokenizer, temperature, decode):
    model, tokenizer = model_and_tokenizer
    if decode == "kernel":  # the compiled step, not a silent fallback to the torch one
        require_decode_kernel()
        assert isinstance(decode_step_for(model, 64), KernelDecodeStep)
    sampler = NativeSampler(model, tokenizer, decode=decode)
    # Frequent characters as stop strings make some rows end early (and the batch be compacted).
    params = SamplingParams(
        max_new_tokens=24, temperature=temperature, top_k=40, top_p=0.95, stop_strings=("e", "7"), seed=0
    )
    batch = sampler.generate(PROMPTS * 4, params)
    lengths = batch.completion_mask.sum(1)
    assert (lengths < 24).any() and (lengths == 24).any(), "need rows that end early and rows that run on"
    assert batch.extras["batch_compactions"] >= 1
    assert batch.logprobs.dtype == torch.float32
    assert (batch.logprobs[batch.completion_mask == 0] == 0).all()
    assert (batch.logprobs[batch.completion_mask == 1] < 0).all()
    assert_rounding_close(model, batch, temperature)


def test_greedy_matches_hf_generate(model_and_tokenizer, sampler):
    model, tokenizer = model_and_tokenizer
    for min_new in (0, 12):
        batch = sampler.generate(
            PROMPTS, SamplingParams(max_new_tokens=20, min_new_tokens=min_new, temperature=0)
        )
        enc = tokenizer(PROMPTS, padding=True, return_tensors="pt")
        out = model.generate(
            **enc,
            do_sample=False,
            max_new_tokens=20,
            min_new_tokens=min_new,
            pad_token_id=tokenizer.pad_token_id,
        )
        expected = out[:, enc["input_ids"].shape[1] :]
        assert torch.equal(batch.prompt_ids, enc["input_ids"])
        assert torch.equal(batch.completion_ids, expected)
        assert len(set(batch.completions)) == len(PROMPTS), "completions should differ between prompts"
        assert_rounding_close(model, batch, 0.0)


def test_repeated_prompts_share_one_prefill(sampler):
    greedy = SamplingParams(max_new_tokens=12, temperature=0)
    alone = sampler.generate(PROMPTS, greedy)
    grouped = sampler.generate([p for p in PROMPTS for _ in range(3)], greedy)
    assert torch.equal(grouped.completion_ids, alone.completion_ids.repeat_interleave(3, dim=0))
    assert torch.equal(grouped.prompt_ids, alone.prompt_ids.repeat_interleave(3, dim=0))
    # The same forward at another batch size (BLAS may block it differently): rounding only.
    model = sampler.model
    with torch.no_grad():
        max_logit = model(input_ids=alone.input_ids, attention_mask=alone.attention_mask).logits.abs().max()
    atol = logprob_atol(model.config, max_logit.item())
    assert torch.allclose(grouped.logprobs, alone.logprobs.repeat_interleave(3, dim=0), atol=atol)


def test_stop_string_cuts_text_mask_and_padding(sampler, model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    greedy = SamplingParams(max_new_tokens=20, temperature=0)
    free = sampler.generate(PROMPTS, greedy)
    # A two-character stop string taken from the middle of row 1's greedy text (char tokenizer: one
    # token per character); decoding is greedy, so the stopped run is the free run cut after it.
    stop = free.completions[1][6:8]
    assert free.truncated.all() and len(stop) == 2
    stopped = sampler.generate(
        PROMPTS, SamplingParams(max_new_tokens=20, temperature=0, stop_strings=(stop,))
    )
    for row, text in enumerate(free.completions):
        if stop in text:
            end = text.index(stop) + len(stop)
            assert stopped.completions[row] == text[:end]
            assert not stopped.truncated[row]
        else:
            end = 20
            assert stopped.completions[row] == text
            assert stopped.truncated[row]
        assert stopped.completion_mask[row].sum() == end
        assert torch.equal(stopped.completion_ids[row, :end], free.completion_ids[row, :end])
        assert (stopped.completion_ids[row, end:] == tokenizer.pad_token_id).all()
        assert (stopped.logprobs[row, end:] == 0).all()
    assert stopped.completions[1].endswith(stop)


def test_min_new_tokens_forbids_early_eos(sampler, model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    # At temperature 3 the draw is close to uniform over ~100 tokens, so EOS comes up about 1% per step.
    hot = SamplingParams(max_new_tokens=40, temperature=3.0, seed=0)
    free = sampler.generate(PROMPTS * 8, hot)
    assert (free.completion_mask.sum(1) < 20).any(), "need EOS before token 20 without min_new_tokens"
    held = sampler.generate(
        PROMPTS * 8, SamplingParams(max_new_tokens=40, temperature=3.0, min_new_tokens=20, seed=0)
    )
    lengths = held.completion_mask.sum(1)
    assert (lengths >= 20).all()
    assert (held.completion_ids[:, :19] != tokenizer.eos_token_id).all()
    ended = ~held.truncated
    assert ended.any()
    assert (held.completion_ids[ended, lengths[ended] - 1] == tokenizer.eos_token_id).all()


def test_same_seed_same_samples_different_seed_different(sampler):
    def run(seed):
        return sampler.generate(PROMPTS, SamplingParams(max_new_tokens=16, temperature=1.0, seed=seed))

    first, again, other = run(5), run(5), run(6)
    assert torch.equal(first.completion_ids, again.completion_ids)
    assert torch.equal(first.logprobs, again.logprobs)
    assert first.completions != other.completions


def test_choose_tokens_truncation_and_untruncated_logprobs():
    # p = [0.5, 0.3, 0.2]. top_p=0.6: the mass before token 1 is 0.5 < 0.6 (kept), before token 2 it is
    # 0.8 >= 0.6 (dropped). top_p=0.5: 0.5 >= 0.5 already drops token 1. top_k=1 keeps token 0 only.
    logits = torch.tensor([[math.log(0.5), math.log(0.3), math.log(0.2)]]).repeat(2000, 1)
    gen = torch.Generator().manual_seed(0)
    drawn = {}
    for name, params in {
        "top_p=0.6": SamplingParams(top_p=0.6),
        "top_p=0.5": SamplingParams(top_p=0.5),
        "top_k=1": SamplingParams(top_k=1),
        "full": SamplingParams(),
    }.items():
        tokens, logprobs = choose_tokens(logits, params, gen)
        drawn[name] = set(tokens.tolist())
        # Untruncated: the log-prob is log p of the drawn token, whatever was cut from the draw.
        expected = torch.tensor([math.log(0.5), math.log(0.3), math.log(0.2)])[tokens]
        # log_softmax of 3 float32 logs of exact probabilities: a few epsilons of values below 2 (~4e-7).
        assert torch.allclose(logprobs, expected, atol=1e-6)
    assert drawn == {"top_p=0.6": {0, 1}, "top_p=0.5": {0}, "top_k=1": {0}, "full": {0, 1, 2}}

    # Temperature 0.5 squares and renormalises: p ~ [0.25, 0.09, 0.04] / 0.38.
    tokens, logprobs = choose_tokens(logits[:1], SamplingParams(temperature=0.5), gen)
    # float32 logs halved and renormalised against float64 arithmetic on the rounded-off probabilities
    # (0.25/0.38 etc. are exact here, the float32 logs are not): ~1e-7 relative on values near 3: 1e-5.
    assert math.isclose(logprobs.item(), math.log([0.25, 0.09, 0.04][tokens.item()] / 0.38), abs_tol=1e-5)

    # Greedy takes the argmax unless it is banned (EOS before min_new_tokens); log-probs stay plain.
    tokens, logprobs = choose_tokens(logits[:1], SamplingParams(temperature=0), None, torch.tensor([0]))
    assert tokens.item() == 1 and math.isclose(logprobs.item(), math.log(0.3), abs_tol=1e-6)


# Token probabilities worked by hand from p = softmax(LOGITS / T), then truncated and renormalised.
LOGITS = [2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0]


def _expected_probs(temperature: float, top_k: int, top_p: float) -> list[float]:
    """What the draw should follow, in float64 and sorted by hand (the logits are in descending order)."""
    weights = [math.exp(x / temperature) for x in LOGITS]
    probs = [w / sum(weights) for w in weights]
    kept = len(probs) if top_k == 0 else top_k
    if (
        top_p < 1.0
    ):  # the smallest head whose mass reaches top_p: a token is kept if the mass before it is below
        kept = min(kept, next(i + 1 for i in range(len(probs)) if sum(probs[: i + 1]) >= top_p))
    # top-k first, then top-p over the renormalised top-k (as `generate` and choose_tokens order them)
    head = [p / sum(probs[:kept]) for p in probs[:kept]] if top_k else probs[:kept]
    if top_k and top_p < 1.0:
        kept = next(i + 1 for i in range(len(head)) if sum(head[: i + 1]) >= top_p)
        head = head[:kept]
    head = [p / sum(head) for p in head]
    return head + [0.0] * (len(LOGITS) - len(head))


@pytest.mark.parametrize(
    "temperature, top_k, top_p",
    [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.5, 0, 1.0), (1.0, 3, 1.0), (1.0, 0, 0.8), (1.3, 5, 0.9)],
)
def test_the_draw_follows_the_softmax_probabilities(temperature, top_k, top_p):
    """Counts over 40,000 seeded draws against the expected probabilities: a chi-square test at a
    false-alarm rate of about 1e-6 (critical value by the Wilson-Hilferty approximation, z = 4.75), and
    tokens cut by top-k or top-p never drawn. An off-by-one in the inverse CDF, a temperature left out of
    the draw or a wrong cut moves some count by hundreds of standard deviations."""
    draws = 40_000
    expected = _expected_probs(temperature, top_k, top_p)
    logits = torch.tensor([LOGITS]).repeat(draws, 1)
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)
    tokens, _ = choose_tokens(logits, params, torch.Generator().manual_seed(0))
    counts = torch.bincount(tokens, minlength=len(LOGITS)).tolist()
    kept = [i for i, p in enumerate(expected) if p > 0]
    assert all(counts[i] == 0 for i in range(len(LOGITS)) if i not in kept), counts
    chi2 = sum((counts[i] - draws * expected[i]) ** 2 / (draws * expected[i]) for i in kept)
    df = len(kept) - 1
    critical = df * (1 - 2 / (9 * df) + 4.75 * math.sqrt(2 / (9 * df))) ** 3
    assert chi2 < critical, (
        f"chi-square {chi2:.1f} >= {critical:.1f} ({df} dof): counts {counts}, p {expected}"
    )


def test_outputs_feed_autograd_and_training_mode_is_restored(model_and_tokenizer, sampler):
    model, _ = model_and_tokenizer
    model.train()
    batch = sampler.generate(PROMPTS[:2], SamplingParams(max_new_tokens=4, seed=0))
    assert model.training
    model.eval()
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    (logits.float().mean() - batch.logprobs.sum()).backward()  # fails on inference-mode tensors
    model.zero_grad()


def test_bad_input_raises_clear_errors(sampler, model_and_tokenizer):
    with pytest.raises(ValueError, match="min_new_tokens"):
        sampler.generate(PROMPTS, SamplingParams(max_new_tokens=4, min_new_tokens=5))
    with pytest.raises(ValueError, match="top_p"):
        sampler.generate(PROMPTS, SamplingParams(top_p=0.0))
    with pytest.raises(ValueError, match=r"indices \[1\]"):
        sampler.generate(["ok", ""], SamplingParams(max_new_tokens=2))
    with pytest.raises(ValueError, match="not one of"):
        make_engine("vllm", *model_and_tokenizer)
    with pytest.raises(ValueError, match="not one of"):
        make_engine("fast", *model_and_tokenizer)
    assert isinstance(make_engine("native", *model_and_tokenizer), NativeSampler)
