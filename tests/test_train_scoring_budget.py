"""Rows per no-grad scoring pass: the per-row estimate bounds what a pass really allocates, the rows
follow the budget (fixed on the CPU, the free memory on CUDA), and splitting a batch into passes does not
change its log-probs."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch.profiler import ProfilerActivity, profile
from transformers import LlamaConfig, LlamaForCausalLM

import aha.train.scoring_budget as budget
from aha.algos.head_logprobs import chunk_tokens_for
from aha.models.forward import score_completions
from aha.models.loading import load_model
from aha.train.policy_update import UpdateBatch, completion_logprobs
from aha.train.scoring_budget import CPU_BUDGET_BYTES, row_bytes, rows_per_pass, scoring_budget_bytes


def _batch(rows: int = 16, prompt_len: int = 24, completion_len: int = 16):
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(3, 90, (rows // 4, prompt_len), generator=g).repeat_interleave(4, 0)
    ids = torch.cat([prompts, torch.randint(3, 90, (rows, completion_len), generator=g)], 1)
    mask = torch.ones_like(ids)
    mask[:4, :3] = 0  # one left-padded prompt
    return ids, mask, completion_len


def _peak_bytes(fn, tmp_path) -> int:
    with profile(
        activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True
    ) as prof:
        fn()
    path = tmp_path / "memory.json"
    with warnings.catch_warnings():  # deprecated for CUDA snapshots; the CPU timeline has no successor
        warnings.simplefilter("ignore", FutureWarning)
        prof.export_memory_timeline(str(path), device="cpu")
    return max(sum(s) for s in json.loads(path.read_text())[1])


@pytest.mark.parametrize("full_logits", [False, True], ids=["chunked", "full-logits"])
def test_the_row_estimate_bounds_what_a_pass_allocates(
    tiny_varied_model_dir, tmp_path, monkeypatch, full_logits
):
    import aha.models.forward as forward

    model = load_model(str(tiny_varied_model_dir)).eval()
    if full_logits:
        monkeypatch.setattr(forward, "chunked_head", lambda model: None)
        monkeypatch.setattr(budget, "chunked_head", lambda model: None)
    ids, mask, completion_len = _batch()
    chunk = None if full_logits else 16  # forced: at V = 100 these 256 tokens would fit one default chunk
    with torch.no_grad():
        peak = _peak_bytes(
            lambda: score_completions(model, ids, mask, completion_len, chunk_tokens=chunk), tmp_path
        )
    head = 0 if full_logits else 16 * model.config.vocab_size * 4 * 2  # one chunk's logits and softmax
    assert 0 < peak <= ids.shape[0] * row_bytes(model, ids.shape[1], completion_len) + head


def test_rows_follow_the_budget(tiny_varied_model_dir, monkeypatch):
    model = load_model(str(tiny_varied_model_dir))
    vocab = model.config.vocab_size
    per_row = row_bytes(model, 40, 16) + 16 * vocab * 8  # + one chunk's logits and softmax, float32
    assert rows_per_pass(model, 40, 16, 10 * per_row) == 10  # 160 tokens: within one chunk
    assert rows_per_pass(model, 40, 16, 0) == 1  # never zero rows
    monkeypatch.setattr(budget, "chunked_head", lambda model: None)
    full_row = row_bytes(model, 40, 16)
    assert full_row == per_row  # the logits in float32 and their float32 copy: the same bytes here
    assert rows_per_pass(model, 40, 16, 10 * full_row) == 10


def test_a_large_vocabulary_costs_rows_only_without_the_chunked_head(monkeypatch):
    """Qwen's vocabulary, 512 of 1024 tokens scored: the chunked head's budget goes to activations."""
    config = LlamaConfig(vocab_size=151_936, hidden_size=64, intermediate_size=128, num_hidden_layers=2)
    with torch.device("meta"):  # no memory: only the config and the head's type are read
        model = LlamaForCausalLM(config)
    gib = 1 << 30
    chunked = rows_per_pass(model, 1024, 512, 8 * gib)
    assert chunked * 512 > chunk_tokens_for(151_936)  # many chunks per pass
    assert chunked == (8 * gib - chunk_tokens_for(151_936) * 151_936 * 8) // row_bytes(model, 1024, 512)
    monkeypatch.setattr(budget, "chunked_head", lambda model: None)
    assert rows_per_pass(model, 1024, 512, 8 * gib) < chunked / 5  # 0.6 GB of logits per row


def test_the_cpu_budget_is_fixed():
    assert scoring_budget_bytes("cpu") == CPU_BUDGET_BYTES


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA budget reads the device's free memory")
def test_the_cuda_budget_follows_free_memory():
    before = scoring_budget_bytes("cuda")
    free, _ = torch.cuda.mem_get_info()
    assert 0.4 * free <= before <= 0.6 * torch.cuda.get_device_properties(0).total_memory
    block = torch.empty(int(0.2 * free), dtype=torch.uint8, device="cuda")
    assert scoring_budget_bytes("cuda") < before - 0.05 * free
    del block


def test_passes_split_by_the_budget_give_the_same_logprobs(tiny_varied_model_dir, monkeypatch):
    model = load_model(str(tiny_varied_model_dir))
    ids, mask, completion_len = _batch()
    batch = UpdateBatch(ids, mask, torch.ones(ids.shape[0], completion_len), torch.zeros(ids.shape[0]))
    whole = completion_logprobs(model, batch, temperature=0.7)
    passes = []
    real = budget.rows_per_pass

    def three_rows(*args):
        passes.append(real(*args))
        return 3

    monkeypatch.setattr("aha.train.policy_update.rows_per_pass", three_rows)
    split = completion_logprobs(model, batch, temperature=0.7)
    assert passes and passes[0] >= ids.shape[0]  # the real budget scores these 16 rows in one pass
    # float32 rounding: the shared-prompt groups differ between the split and the whole batch.
    torch.testing.assert_close(split, whole, rtol=1e-5, atol=1e-5)
