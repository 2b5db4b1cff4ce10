"""The hand-written Llama/Qwen2 decoding steps (torch ops, and the compiled kernel) give the HF model's
own outputs, and are refused for models whose math they do not cover (the sampler then uses the
generic HF forward). The kernel builds here, falls back when it cannot, and leaves torch's
floating-point mode alone."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers.kernels import require_bf16_decode_kernel, require_decode_kernel
from helpers.tolerances import BF16_UNIT_ROUNDOFF, bf16_forward_atol, forward_atol, logprob_atol

from aha.models.lean_activations import LeanProjection, use_lean_activations
from aha.models.loading import load_model, load_tokenizer
from aha.models.positions import left_padded_position_ids
from aha.rollout.base import SamplingParams
from aha.rollout.decode_kernel import KernelDecodeStep, load_decode_kernel
from aha.rollout.llama_decode import (
    WEIGHTS_LEFT_MAX_ROWS,
    LlamaDecodeStep,
    Projection,
    decode_step_for,
    low_precision_attention_cpu,
)
from aha.rollout.native import NativeSampler

PROMPTS = ["Hi", "What is 12 + 30?", "x", "The quick brown fox jumps over"]


@pytest.fixture(scope="module")
def tiny_llama(tiny_varied_model_dir):
    return load_model(str(tiny_varied_model_dir)), load_tokenizer(str(tiny_varied_model_dir))


def _teacher_forced_error(model, batch, temperature: float) -> float:
    """The sampler's log-probs against one teacher-forced forward, as a share of the float32 tolerance
    (helpers/tolerances.py): <= 1 means they differ by rounding only."""
    mask = batch.attention_mask
    with torch.no_grad():
        logits = model(
            input_ids=batch.input_ids, attention_mask=mask, position_ids=left_padded_position_ids(mask)
        ).logits.float()
    prompt_len = batch.prompt_ids.shape[1]
    logits = logits[:, prompt_len - 1 : -1]
    logprobs = torch.log_softmax(logits / temperature, -1)
    reference = logprobs.gather(2, batch.completion_ids[..., None]).squeeze(-1) * batch.completion_mask
    atol = logprob_atol(model.config, logits.abs().max().item(), temperature)
    return (batch.logprobs - reference).abs().max().item() / atol


@pytest.mark.parametrize("rows", [1, 3, WEIGHTS_LEFT_MAX_ROWS, WEIGHTS_LEFT_MAX_ROWS + 1, 100])
def test_projection_is_x_times_weight_transposed_in_either_form(rows):
    generator = torch.Generator().manual_seed(rows)
    weight, x = torch.randn(24, 16, generator=generator), torch.randn(rows, 16, generator=generator)
    projection = Projection(weight)
    for _ in range(2):  # the second call reuses the transposed copy where one was made
        out = projection(x)
        assert out.is_contiguous()
        torch.testing.assert_close(out, x @ weight.T)


@pytest.mark.parametrize("decode", ["kernel", "torch"])
@pytest.mark.parametrize("copies", [1, 16], ids=["4-rows", "64-rows"])
@pytest.mark.parametrize("name", ["tiny_llama", "tiny_qwen2"])
def test_fast_step_matches_the_hf_forward(name, copies, decode, request):
    """4 rows take the torch step's weights-left matmuls, 64 rows its x @ W.T ones (`Projection`); the
    prompts' lengths differ, so rows are left-padded and attention is masked."""
    model, tokenizer = request.getfixturevalue(name)
    if decode == "kernel":
        require_decode_kernel()
    step_type = KernelDecodeStep if decode == "kernel" else LlamaDecodeStep
    assert isinstance(decode_step_for(model, 64, kernel=decode == "kernel"), step_type)
    fast, generic = (
        NativeSampler(model, tokenizer, decode=decode),
        NativeSampler(model, tokenizer, decode="hf"),
    )
    greedy = SamplingParams(max_new_tokens=16, temperature=0)
    prompts = PROMPTS * copies
    fast_batch, generic_batch = fast.generate(prompts, greedy), generic.generate(prompts, greedy)
    assert torch.equal(fast_batch.completion_ids, generic_batch.completion_ids)
    with torch.no_grad():
        logits = model(input_ids=generic_batch.input_ids, attention_mask=generic_batch.attention_mask).logits
    atol = logprob_atol(model.config, logits.abs().max().item())
    assert torch.allclose(fast_batch.logprobs, generic_batch.logprobs, atol=atol)
    sampled = fast.generate(PROMPTS * 2, SamplingParams(max_new_tokens=16, temperature=0.8, top_k=30, seed=0))
    assert _teacher_forced_error(model, sampled, 0.8) <= 1


@pytest.mark.parametrize("rows", [1, 5, 33])
def test_kernel_prefill_and_step_equal_the_hf_forward_and_torch_step(tiny_qwen2, rows):
    """Rows left-padded to different lengths. The kernel's prefill gives the HF forward's last logits and
    the same keys/values at every real position (padding is never read); then one decoding step from
    each cache gives the torch step's logits and writes the same keys and values."""
    require_decode_kernel()
    model, tokenizer = tiny_qwen2
    prompts = [PROMPTS[i % len(PROMPTS)] * (1 + i % 3) for i in range(rows)]
    ids, mask = tokenizer(prompts, padding=True, padding_side="left", return_tensors="pt").values()
    length, capacity = ids.shape[1], ids.shape[1] + 4
    torch_step, kernel_step = decode_step_for(model, capacity, kernel=False), decode_step_for(model, capacity)
    assert isinstance(kernel_step, KernelDecodeStep)
    positions = left_padded_position_ids(mask)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions)
    layers = range(len(model.model.layers))
    hf_cache = [[torch.zeros(rows, 2, capacity, 16) for _ in layers] for _ in range(2)]
    for layer, k, v in zip(out.past_key_values.layers, *hf_cache, strict=True):
        k[:, :, :length], v[:, :, :length] = layer.keys, layer.values
    kernel_cache = [[torch.zeros(rows, 2, capacity, 16) for _ in layers] for _ in range(2)]
    with torch.no_grad():
        first = kernel_step.forward_tokens(ids, positions, *kernel_cache, 0, mask)

    # Keys, values and logits are outputs of the same float32 forward in another rounding order: each
    # within the whole model's bound for its own magnitude (helpers/tolerances.py), relative tolerance 0.
    def close(got, expected):
        atol = forward_atol(model.config, expected.abs().max().item())
        torch.testing.assert_close(got, expected, rtol=0, atol=atol)

    close(first, out.logits[:, -1])
    real = mask[:, None, :, None].bool()
    for hf_buffers, kernel_buffers in zip(hf_cache, kernel_cache, strict=True):
        for e, g in zip(hf_buffers, kernel_buffers, strict=True):
            close(g[:, :, :length] * real, e[:, :, :length] * real)

    tokens = first.argmax(-1)
    attention = torch.cat([mask, torch.ones(rows, 1, dtype=mask.dtype)], dim=1)
    with torch.no_grad():
        expected = torch_step(tokens, positions[:, -1] + 1, *hf_cache, length, attention)
        got = kernel_step(tokens, positions[:, -1] + 1, *kernel_cache, length, attention)
    close(got, expected)
    for hf_buffers, kernel_buffers in zip(hf_cache, kernel_cache, strict=True):
        for e, g in zip(hf_buffers, kernel_buffers, strict=True):
            close(g[:, :, length], e[:, :, length])


def test_kernel_builds_here_and_keeps_denormals():
    """Where there is a C compiler the kernel must build (a silent fallback would hide a broken build);
    loading it must not switch the process to flush-to-zero, as a -ffast-math library would."""
    assert require_decode_kernel() is load_decode_kernel()
    tiny = torch.tensor(1e-40)
    assert (tiny * 1.0).item() > 0.0


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_qwen2"])
def test_a_model_switched_to_lean_activations_keeps_the_fast_step(name, request):
    """The trainers switch the policy to lean activations (its q, k, v projections included) before the
    sampler sees it; the decode step must still take it, and sample what it samples from the HF model."""
    model, tokenizer = request.getfixturevalue(name)
    lean = copy.deepcopy(model)
    assert use_lean_activations(lean) > 0
    assert any(type(m) is LeanProjection for m in lean.modules())
    assert type(decode_step_for(lean, 64)) is type(decode_step_for(model, 64))
    assert decode_step_for(lean, 64, kernel=False) is not None
    greedy = SamplingParams(max_new_tokens=12, temperature=0)
    lean_batch = NativeSampler(lean, tokenizer).generate(PROMPTS, greedy)
    assert torch.equal(
        lean_batch.completion_ids, NativeSampler(model, tokenizer).generate(PROMPTS, greedy).completion_ids
    )


def test_kernel_falls_back_to_the_torch_step_without_a_compiler(tiny_llama, monkeypatch, tmp_path):
    model, tokenizer = tiny_llama
    monkeypatch.setenv("CC", "no-such-compiler")
    monkeypatch.setenv("AHA_CACHE_DIR", str(tmp_path))  # nothing built here yet
    load_decode_kernel.cache_clear()
    try:
        assert load_decode_kernel() is None
        assert isinstance(decode_step_for(model, 64), LlamaDecodeStep)
        batch = NativeSampler(model, tokenizer).generate(PROMPTS, SamplingParams(max_new_tokens=8, seed=0))
        assert _teacher_forced_error(model, batch, 1.0) <= 1
        monkeypatch.setenv("CC", "cc")
        monkeypatch.setenv("AHA_DECODE_KERNEL", "0")
        load_decode_kernel.cache_clear()
        assert load_decode_kernel() is None
    finally:
        load_decode_kernel.cache_clear()


def test_other_architectures_use_the_generic_forward(tiny_gpt2, tiny_qwen2):
    model, tokenizer = tiny_gpt2
    assert decode_step_for(model, 64) is None
    batch = NativeSampler(model, tokenizer).generate(PROMPTS, SamplingParams(max_new_tokens=12, seed=0))
    assert _teacher_forced_error(model, batch, 1.0) <= 1

    qwen2, _ = tiny_qwen2
    qwen2.config.layer_types = ["sliding_attention"] * qwen2.config.num_hidden_layers
    try:
        assert decode_step_for(qwen2, 64) is None
    finally:
        qwen2.config.layer_types = ["full_attention"] * qwen2.config.num_hidden_layers
    assert decode_step_for(qwen2, 64) is not None


def test_cpu_bf16_attention_rounds_as_the_bf16_kernel():
    """Under bf16 autocast on the CPU the torch step's attention is float32 products over bf16-rounded
    inputs (keys and values kept so in float32 buffers) and attention weights: torch's bf16 SDPA kernel
    is several times slower at one query per row (bench/decode_attention_cpu.py). Against that kernel on
    the same inputs, padding mask included, the two differ only in where float32 sums are rounded: by at
    most one bf16 rounding of the output (relative 2^-8) plus one of the weights carried through the
    value sum, each of max |value|."""
    generator = torch.Generator().manual_seed(0)
    batch, kv_heads, group, length, head_dim = 6, 2, 3, 37, 16
    query = torch.randn(batch, kv_heads, group, head_dim, generator=generator)  # float32, as rotated
    keys = torch.randn(batch, kv_heads, length, head_dim, generator=generator).bfloat16()
    values = torch.randn(batch, kv_heads, length, head_dim, generator=generator).bfloat16()
    mask = torch.zeros(batch, 1, 1, length)
    mask[::2, :, :, :5] = float("-inf")  # left padding on every other row
    scale = head_dim**-0.5
    ours = low_precision_attention_cpu(query, keys.float(), values.float(), mask, scale, torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        kernel = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=scale)
    assert ours.dtype == kernel.dtype == torch.bfloat16
    atol = 2 * BF16_UNIT_ROUNDOFF * values.float().abs().max().item()
    torch.testing.assert_close(ours.float(), kernel.float(), atol=atol, rtol=0)
    unmasked = low_precision_attention_cpu(query, keys.float(), values.float(), None, scale, torch.bfloat16)
    assert not torch.allclose(unmasked.float(), kernel.float(), atol=atol, rtol=0)  # the check can fail


def test_the_torch_step_attends_in_float32_only_on_the_cpu_under_autocast(tiny_llama):
    model, _ = tiny_llama
    assert not LlamaDecodeStep(model, 8).attend_in_float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert LlamaDecodeStep(model, 8).attend_in_float32


def test_under_cpu_autocast_the_cache_holds_bf16_values_in_float32(tiny_llama):
    """The prefill's keys and values are rounded to bf16 once and kept in float32 buffers, which the
    step's attention reads as they are; a float32 prefill's are not so rounded (the check can fail)."""
    model, tokenizer = tiny_llama
    sampler = NativeSampler(model, tokenizer, decode="torch")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cache, *_, step = sampler.prefill(PROMPTS, 4)
    assert step.attend_in_float32
    for layer in cache.layers:
        for filled in (layer.keys, layer.values):
            assert filled.dtype == torch.float32
            assert torch.equal(filled, filled.bfloat16().float())
    cache, *_ = sampler.prefill(PROMPTS, 4)
    keys = cache.layers[0].keys
    assert not torch.equal(keys, keys.bfloat16().float())


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_qwen2"])
@pytest.mark.parametrize("rows", [1, 5, 33])
def test_bf16_kernel_equals_the_hf_forward_and_torch_step_under_cpu_autocast(name, rows, request):
    """rollout.dtype=bfloat16 on the CPU: under bf16 autocast the kernel runs its bf16 form (bf16 matmuls,
    autocast's roundings). Rows left-padded to different lengths. Its prefill gives the HF forward's last
    logits under the same autocast and leaves bf16 values in the cache; one step from its cache gives the
    torch step's logits from the HF cache (rounded as the torch path rounds it) and writes the same key
    and value; each within bf16 rounding (helpers/tolerances.py), not to the bit: other accumulation
    orders, and the HF forward rounds its q/k/v biases inside the matmul. The kernel's fp32 form differs
    from these logits by more than float32 rounding: the roundings happen, the check can fail."""
    require_bf16_decode_kernel()
    model, tokenizer = request.getfixturevalue(name)
    prompts = [PROMPTS[i % len(PROMPTS)] * (1 + i % 3) for i in range(rows)]
    ids, mask = tokenizer(prompts, padding=True, padding_side="left", return_tensors="pt").values()
    length, capacity = ids.shape[1], ids.shape[1] + 4
    positions = left_padded_position_ids(mask)
    shape = (rows, model.config.num_key_value_heads, capacity, model.model.layers[0].self_attn.head_dim)
    layers = range(len(model.model.layers))

    def bf16_close(got, expected):
        atol = bf16_forward_atol(model.config, expected.abs().max().item())
        torch.testing.assert_close(got, expected.float(), rtol=0, atol=atol)

    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        kernel_step = decode_step_for(model, capacity)
        torch_step = decode_step_for(model, capacity, kernel=False)
        assert isinstance(kernel_step, KernelDecodeStep) and kernel_step.low_precision
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions)
        kernel_cache = [[torch.zeros(shape) for _ in layers] for _ in range(2)]
        first = kernel_step.forward_tokens(ids, positions, *kernel_cache, 0, mask)
        bf16_close(first, out.logits[:, -1])
        hf_cache = [[torch.zeros(shape) for _ in layers] for _ in range(2)]
        for layer, k, v in zip(out.past_key_values.layers, *hf_cache, strict=True):
            k[:, :, :length] = layer.keys.bfloat16().float()  # as hold_rounded_in_float32 keeps them
            v[:, :, :length] = layer.values.bfloat16().float()
        real = mask[:, None, :, None].bool()
        for buffers in kernel_cache:
            for filled in buffers:
                assert torch.equal(filled, filled.bfloat16().float())
        for hf_buffers, kernel_buffers in zip(hf_cache, kernel_cache, strict=True):
            for e, g in zip(hf_buffers, kernel_buffers, strict=True):
                bf16_close(g[:, :, :length] * real, e[:, :, :length] * real)

        tokens = first.argmax(-1)
        attention = torch.cat([mask, torch.ones(rows, 1, dtype=mask.dtype)], dim=1)
        expected = torch_step(tokens, positions[:, -1] + 1, *hf_cache, length, attention)
        got = kernel_step(tokens, positions[:, -1] + 1, *kernel_cache, length, attention)
        bf16_close(got, expected)
        for hf_buffers, kernel_buffers in zip(hf_cache, kernel_cache, strict=True):
            for e, g in zip(hf_buffers, kernel_buffers, strict=True):
                bf16_close(g[:, :, length], e[:, :, length])

    with torch.no_grad():
        fp32_step = decode_step_for(model, capacity)
        assert isinstance(fp32_step, KernelDecodeStep) and not fp32_step.low_precision
        fp32_cache = [[torch.zeros(shape) for _ in layers] for _ in range(2)]
        fp32_logits = fp32_step.forward_tokens(ids, positions, *fp32_cache, 0, mask)
    atol = forward_atol(model.config, fp32_logits.abs().max().item())
    assert not torch.allclose(first, fp32_logits, rtol=0, atol=atol)


def test_decode_step_for_picks_the_kernel_form_for_the_autocast(tiny_llama, monkeypatch):
    """fp32: the kernel's fp32 form; bf16 autocast: its bf16 form, or the torch step where MKL has no bf16
    gemm; fp16 autocast: the torch step (the kernel has no fp16 form)."""
    library = require_bf16_decode_kernel()
    model, _ = tiny_llama
    assert not decode_step_for(model, 8).low_precision
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert decode_step_for(model, 8).low_precision
        monkeypatch.setitem(library.mkl, "gemm_bf16", None)
        assert type(decode_step_for(model, 8)) is LlamaDecodeStep
    with torch.autocast("cpu", dtype=torch.float16):
        assert type(decode_step_for(model, 8)) is LlamaDecodeStep
