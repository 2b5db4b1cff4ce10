"""Gradient checkpointing: score_completions gives the same log-probs and parameter gradients with it as
without, on the shared-prompt and per-row paths (HF drops the KV cache inside checkpointed layers, so
the shared path steps aside in the gradient pass), with and without aha's lean activations."""

from __future__ import annotations

import copy

import pytest
import torch

from aha.models.checkpointing import enable_gradient_checkpointing, is_checkpointing
from aha.models.forward import checkpointing_drops_cache, score_completions
from aha.models.lean_activations import use_lean_activations
from aha.models.loading import load_model

PAD = 0


def _group_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Two prompts (5 and 3 tokens, left-padded), three completions each, one ending early."""
    g = torch.Generator().manual_seed(2)
    prompts = torch.randint(3, 40, (2, 5), generator=g)
    prompt_mask = torch.ones(2, 5, dtype=torch.long)
    prompt_mask[1, :2] = 0
    prompts = prompts.masked_fill(prompt_mask == 0, PAD)
    rows = torch.tensor([0, 0, 0, 1, 1, 1])
    completions = torch.randint(3, 40, (6, 4), generator=g)
    completion_mask = torch.ones(6, 4, dtype=torch.long)
    completion_mask[4, 2:] = 0
    completions = completions.masked_fill(completion_mask == 0, PAD)
    return torch.cat([prompts[rows], completions], 1), torch.cat([prompt_mask[rows], completion_mask], 1)


def _logprobs_and_grads(model, shared: bool):
    ids, mask = _group_batch()
    model.train()
    model.zero_grad(set_to_none=True)
    logprobs = score_completions(model, ids, mask, 4, temperature=0.7, shared_prompt=shared).logprobs
    (logprobs * mask[:, -4:]).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return logprobs.detach()[mask[:, -4:].bool()], grads


def _assert_same(got, want):
    # float32 rounding: the recomputed layers run the same ops (bitwise alike on the CPU), but with
    # checkpointing the gradient pass runs every row's prompt where the reference shares it, which
    # regroups sums: ~1e-7 relative per op, a few hundred deep. The same bounds as test_models_forward.
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-5)
    for a, b in zip(got[1], want[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * b.abs().max().item())


@pytest.fixture
def model_of(request, tiny_varied_model_dir):
    """A private copy (checkpointing is switched on in place) of the named tiny model, its dropout off
    (GPT-2 drops 10% in training mode: two runs would differ by their random masks alone)."""

    def load(name: str):
        if name == "llama":
            return load_model(str(tiny_varied_model_dir))
        model = copy.deepcopy(request.getfixturevalue(f"tiny_{name}")[0])
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        return model

    return load


@pytest.mark.parametrize("architecture", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("shared", [True, False])
def test_checkpointing_gives_the_same_logprobs_and_gradients(model_of, architecture, shared):
    model = model_of(architecture)
    plain = _logprobs_and_grads(model, shared)
    enable_gradient_checkpointing(model)
    assert is_checkpointing(model)
    _assert_same(_logprobs_and_grads(model, shared), plain)


def test_checkpointing_composes_with_lean_activations(tiny_varied_model_dir):
    model = load_model(str(tiny_varied_model_dir))
    assert use_lean_activations(model) > 0
    lean = _logprobs_and_grads(model, shared=True)
    enable_gradient_checkpointing(model)
    _assert_same(_logprobs_and_grads(model, shared=True), lean)


def test_checkpointing_saves_fewer_activations(tiny_varied_model_dir):
    """What it is for: the gradient pass keeps less for backward (each saved storage counted once)."""

    def saved_bytes(model) -> int:
        storages: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        ids, mask = _group_batch()
        model.train()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            score_completions(model, ids, mask, 4).logprobs.sum().backward()
        weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
        return sum(n for ptr, n in storages.items() if ptr not in weights)

    model = load_model(str(tiny_varied_model_dir))
    without = saved_bytes(model)
    enable_gradient_checkpointing(model)
    assert saved_bytes(model) < 0.6 * without


def test_only_training_mode_loses_the_shared_prompt(tiny_varied_model_dir):
    model = load_model(str(tiny_varied_model_dir))
    model.train()
    assert not checkpointing_drops_cache(model)
    enable_gradient_checkpointing(model)
    assert checkpointing_drops_cache(model)
    model.eval()  # as GRPO's reference and old-policy passes run: they keep the shared prompt
    assert not checkpointing_drops_cache(model)


def test_a_model_without_checkpointing_support_is_named():
    class NoCheckpointing(torch.nn.Module):
        supports_gradient_checkpointing = False

    with pytest.raises(ValueError, match="NoCheckpointing does not support gradient checkpointing"):
        enable_gradient_checkpointing(NoCheckpointing())
