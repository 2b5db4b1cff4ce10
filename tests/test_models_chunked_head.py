"""score_completions' chunked LM head: the same log-probs, entropies and parameter gradients as the
full-logits path on Llama, Qwen2 and GPT-2 (left-padded prompts, temperature 0.7, shared and per-row
prompts), and an explicit fall back to the full-logits path for heads it cannot reproduce."""

from __future__ import annotations

import pytest
import torch
from transformers import Gemma2Config, Gemma2ForCausalLM

import aha.models.forward as forward
from aha.algos.logprobs import token_entropy
from aha.models.forward import chunked_head, chunked_head_for, next_token_logprobs, score_completions
from aha.models.loading import load_model

PAD = 0


def _batch(completion_len: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Two prompts of 5 and 3 tokens (left-padded to 5), each three times, then right-padded completions."""
    g = torch.Generator().manual_seed(1)
    prompts = torch.randint(3, 40, (2, 5), generator=g)
    prompt_mask = torch.ones(2, 5, dtype=torch.long)
    prompt_mask[1, :2] = 0
    prompts = prompts.masked_fill(prompt_mask == 0, PAD)
    rows = torch.tensor([0, 1, 0, 1, 0, 1])
    completions = torch.randint(3, 40, (6, completion_len), generator=g)
    completion_mask = torch.ones(6, completion_len, dtype=torch.long)
    completion_mask[2, 2:] = 0
    completions = completions.masked_fill(completion_mask == 0, PAD)
    return torch.cat([prompts[rows], completions], 1), torch.cat([prompt_mask[rows], completion_mask], 1)


@pytest.fixture
def model_of(request, tiny_varied_model_dir):
    def load(name: str):
        if name == "llama":
            return load_model(str(tiny_varied_model_dir))
        return request.getfixturevalue(f"tiny_{name}")[0]

    return load


def _score(model, ids, mask, shared: bool, **kwargs):
    """(log-probs, entropy, parameter gradients) of a weighted sum of the scored log-probs."""
    model.zero_grad(set_to_none=True)
    scores = score_completions(model, ids, mask, 4, 0.7, shared_prompt=shared, with_entropy=True, **kwargs)
    weights = torch.linspace(0.5, 1.5, scores.logprobs.numel()).view_as(scores.logprobs)
    (scores.logprobs * weights * mask[:, -4:]).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)  # the Qwen2 and GPT-2 models are shared by the whole session
    return scores.logprobs.detach(), scores.entropy, grads


@pytest.mark.parametrize("architecture", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("shared", [True, False])
def test_chunked_head_matches_full_logits(model_of, architecture, shared, monkeypatch):
    model = model_of(architecture)
    assert chunked_head(model) is model.get_output_embeddings()
    ids, mask = _batch()
    chunked = _score(model, ids, mask, shared, chunk_tokens=5)  # 24 tokens in 5 chunks, the last partial
    monkeypatch.setattr(forward, "chunked_head", lambda model: None)
    full = _score(model, ids, mask, shared)
    # float32 rounding: the head's matmul over [5, H] chunks instead of [B, C + 1, H], the same softmax
    # reductions; ~1e-7 relative per op, a few hundred ops deep: 1e-5 on the O(1) log-probs and entropies,
    # the gradients relative to each tensor's largest entry.
    torch.testing.assert_close(chunked[0], full[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(chunked[1], full[1], rtol=1e-5, atol=1e-5)
    for a, b in zip(chunked[2], full[2], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * b.abs().max().item())


def test_entropy_is_that_of_the_models_own_logits(tiny_varied_model_dir):
    model = load_model(str(tiny_varied_model_dir))
    ids, mask = _batch()
    with torch.no_grad():
        scores = score_completions(model, ids, mask, 4, 0.7, shared_prompt=False, with_entropy=True)
        positions = torch.cumsum(mask, 1) - 1
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions.clamp(min=0)).logits
    expected = token_entropy(logits[:, -5:-1], 0.7)
    scored = mask[:, -4:].bool()  # padding positions see a different (masked) context there
    torch.testing.assert_close(scores.entropy[scored], expected[scored], rtol=1e-5, atol=1e-5)  # f32 rounding
    assert score_completions(model, ids, mask, 4).entropy is None  # computed only when asked for


def _reference_logprobs(model, ids, mask, temperature=0.7):
    """log_softmax of the model's own logits, each row alone without its padding."""
    out = torch.zeros(ids.shape[0], 4)
    with torch.no_grad():
        for row in range(ids.shape[0]):
            real = ids[row][mask[row] == 1]
            logp = torch.log_softmax(model(input_ids=real[None]).logits[0].float() / temperature, -1)
            n = int(mask[row, -4:].sum())
            start = len(real) - n
            out[row, :n] = torch.stack([logp[start + t - 1, real[start + t]] for t in range(n)])
    return out


def _check_fallback(model):
    ids, mask = _batch()
    assert chunked_head(model) is None
    with torch.no_grad():
        got = score_completions(model, ids, mask, 4, 0.7, with_entropy=True)
    scored = mask[:, -4:].bool()
    torch.testing.assert_close(
        got.logprobs[scored], _reference_logprobs(model, ids, mask)[scored], atol=1e-5, rtol=1e-5
    )
    assert got.entropy.shape == (6, 4)


def test_head_with_a_bias_falls_back_to_full_logits(tiny_varied_model_dir):
    model = load_model(str(tiny_varied_model_dir))
    head = model.lm_head
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():
        biased.weight.copy_(head.weight)
        biased.bias.normal_(
            0.0, 1.0, generator=torch.Generator().manual_seed(0)
        )  # the chunked head would miss it
    model.lm_head = biased
    _check_fallback(model)


def test_soft_capped_logits_fall_back_to_full_logits():
    torch.manual_seed(0)
    config = Gemma2Config(
        vocab_size=50,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        final_logit_softcapping=0.5,  # small: the capping changes every log-prob visibly
        pad_token_id=0,
    )
    model = Gemma2ForCausalLM(config).eval()
    _check_fallback(model)


def test_sft_token_logprobs_match_full_logits(tiny_varied_model_dir, monkeypatch):
    """next_token_logprobs (SFT's loss): chunked head and full logits agree in value and gradient on a
    right-padded batch, and only the masked-in targets are returned, in row-major order."""
    model = load_model(str(tiny_varied_model_dir))
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 40, (3, 9), generator=g)
    loss_mask = torch.zeros(3, 9, dtype=torch.long)
    loss_mask[0, 4:] = 1
    loss_mask[1, 6:8] = 1  # then right padding
    loss_mask[2, 2:5] = 1

    def run(chunk_tokens=None):
        model.zero_grad(set_to_none=True)
        logprobs = next_token_logprobs(model, ids, loss_mask, chunk_tokens)
        (logprobs * torch.linspace(0.5, 1.5, logprobs.numel())).sum().backward()
        return logprobs.detach(), [p.grad.clone() for p in model.parameters()]

    chunked = run(chunk_tokens=4)  # 11 targets in 3 chunks
    monkeypatch.setattr(forward, "chunked_head", lambda model: None)
    full = run()
    assert chunked[0].shape == (int(loss_mask[:, 1:].sum()),)
    torch.testing.assert_close(chunked[0], full[0], rtol=1e-5, atol=1e-5)  # float32 rounding, as above
    for a, b in zip(chunked[1], full[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * b.abs().max().item())


def test_the_head_is_chunked_only_when_the_logits_exceed_one_chunk(tiny_varied_model_dir, monkeypatch):
    """Both sides of the size rule, seen through what autograd saves: the full [B, C, V] logits or not."""
    model = load_model(str(tiny_varied_model_dir))
    ids, mask = _batch()  # 6 rows x 4 completion tokens, V = 100: 2400 logits
    vocab = model.config.vocab_size

    def largest_saved() -> int:
        """Elements of the largest saved tensor over the vocabulary (last dimension V)."""
        largest = 0

        def pack(t):
            nonlocal largest
            if t.dim() and t.shape[-1] == vocab:
                largest = max(largest, t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            score_completions(model, ids, mask, 4).logprobs.sum().backward()
        model.zero_grad(set_to_none=True)
        return largest

    assert chunked_head_for(model, 24) is None  # 24 tokens fit one chunk of 2^26 / 100
    assert largest_saved() >= 6 * 4 * vocab  # the full-logits path saves the [6, 4, V] logits
    monkeypatch.setattr(forward, "chunk_tokens_for", lambda vocab: 5)  # chunks of 5 tokens: 24 > 5
    assert chunked_head_for(model, 24) is model.lm_head
    assert largest_saved() == 0  # only hidden states, the head's weight [V, H] and [N] vectors
    assert chunked_head_for(model, 5) is None
    assert chunked_head_for(model, 5, chunk_tokens=5) is model.lm_head  # forced


def test_a_lora_wrapped_model_is_chunked_and_prompt_tuning_is_not(tiny_varied_model_dir, monkeypatch):
    """peft: LoRA leaves the head and the backbone's interface alone (the chunked path applies and agrees
    with full logits); prompt tuning adds tokens in the wrapper's forward, so it takes the full logits."""
    peft = pytest.importorskip("peft")
    lora = peft.get_peft_model(
        load_model(str(tiny_varied_model_dir)), peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    )
    assert chunked_head(lora) is lora.get_base_model().lm_head
    ids, mask = _batch()
    with torch.no_grad():
        chunked = score_completions(lora, ids, mask, 4, 0.7, chunk_tokens=5).logprobs
        monkeypatch.setattr(forward, "chunked_head", lambda model: None)
        full = score_completions(lora, ids, mask, 4, 0.7).logprobs
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-5)  # float32 rounding, as above
    prompt_tuned = peft.get_peft_model(
        load_model(str(tiny_varied_model_dir)),
        peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3),
    )
    monkeypatch.undo()
    assert chunked_head(prompt_tuned) is None
