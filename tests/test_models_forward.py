"""score_completions: log-probs match a hand-written log_softmax over one plain forward, and the
shared-prompt path (each distinct prompt run once) gives the same log-probs and gradients, on Llama,
Qwen2 and GPT-2."""

from __future__ import annotations

import pytest
import torch

from aha.models.forward import distinct_rows, score_completions
from aha.models.loading import load_model

PAD = 0


def _group_batch(completion_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """3 distinct prompts of lengths 5, 3 and 4 (left-padded to 5), each repeated 3 times, followed by
    completions of which some end early (right-padded)."""
    g = torch.Generator().manual_seed(0)
    prompt_lengths = [5, 3, 4]
    prompt_ids = torch.randint(3, 40, (3, 5), generator=g)
    prompt_mask = torch.ones(3, 5, dtype=torch.long)
    for i, n in enumerate(prompt_lengths):
        prompt_mask[i, : 5 - n] = 0
    prompt_ids = prompt_ids.masked_fill(prompt_mask == 0, PAD)
    rows = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2])  # groups need not be contiguous
    completions = torch.randint(3, 40, (9, completion_len), generator=g)
    completion_mask = torch.ones(9, completion_len, dtype=torch.long)
    if completion_len > 1:
        completion_mask[1, -1:] = 0
        completion_mask[4, 1:] = 0
    completions = completions.masked_fill(completion_mask == 0, PAD)
    return torch.cat([prompt_ids[rows], completions], 1), torch.cat([prompt_mask[rows], completion_mask], 1)


def test_logprobs_match_a_hand_written_reference(tiny_varied_model_dir):
    model = load_model(str(tiny_varied_model_dir))
    ids, mask = _group_batch(completion_len=4)
    with torch.no_grad():
        scores = score_completions(model, ids, mask, 4, temperature=0.7, shared_prompt=False)
        for row in (0, 2, 4):  # each row alone, without its padding: no mask or position bookkeeping
            real = ids[row][mask[row] == 1]
            logp = torch.log_softmax(model(input_ids=real[None]).logits[0].float() / 0.7, -1)
            n = int(mask[row, -4:].sum())
            start = len(real) - n
            expected = torch.stack([logp[start + t - 1, real[start + t]] for t in range(n)])
            assert torch.allclose(scores.logprobs[row, :n], expected, atol=1e-5)


@pytest.fixture
def model_of(request, tiny_varied_model_dir):
    """The model a parametrised test names: the tiny Llama, or the Qwen2 (grouped-query attention, q/k/v
    biases) or GPT-2 (learned absolute positions) of conftest."""

    def load(name: str):
        if name == "llama":
            return load_model(str(tiny_varied_model_dir))
        return request.getfixturevalue(f"tiny_{name}")[0]

    return load


@pytest.mark.parametrize("architecture", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("completion_len", [1, 4])
def test_shared_prompt_gives_the_same_logprobs_and_gradients(model_of, architecture, completion_len):
    model = model_of(architecture)
    ids, mask = _group_batch(completion_len)
    scored = mask[:, -completion_len:].bool()

    def logprobs_and_grads(shared: bool):
        model.zero_grad(set_to_none=True)
        logprobs = score_completions(model, ids, mask, completion_len, temperature=0.7, shared_prompt=shared)
        (logprobs.logprobs * scored).sum().backward()
        return logprobs.logprobs.detach(), [p.grad.clone() for p in model.parameters()]

    plain, plain_grads = logprobs_and_grads(shared=False)
    shared, shared_grads = logprobs_and_grads(shared=True)
    model.zero_grad(set_to_none=True)  # the Qwen2 and GPT-2 models are shared by the whole session
    assert torch.allclose(shared[scored], plain[scored], atol=1e-5)
    assert shared.shape == plain.shape
    for a, b in zip(shared_grads, plain_grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5 * b.abs().max().item())


def test_distinct_rows_in_order_of_appearance():
    block = torch.tensor([[5, 1], [2, 2], [5, 1], [2, 2], [0, 7]])
    first_rows, inverse = distinct_rows(block)
    assert first_rows.tolist() == [0, 1, 4]
    assert inverse.tolist() == [0, 1, 0, 1, 2]
    assert torch.equal(block[first_rows][inverse], block)
