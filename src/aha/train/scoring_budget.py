"""How many rows one no-grad scoring pass (reference or old policy) takes: as many as fit a memory budget.

The budget is half the device memory free for tensors on CUDA (what the driver reports free plus what
PyTorch's allocator holds unused), and a fixed `CPU_BUDGET_BYTES` on the CPU. A row's cost is an upper
estimate of what a no-grad forward holds for it at once: a few hidden-size and MLP-size activations per
token, one layer's attention scores (materialised by the eager and math attention kernels), the KV cache
the shared-prompt path keeps for every layer, and, for models without the chunked LM head, the
completion logits in the model's dtype and in float32. Models the chunked head serves hold those per row
while a pass's completion logits fit one chunk (they then take the full-logits path,
`forward.chunked_head_for`), and one chunk's logits and softmax, taken off the budget once, beyond that.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from aha.algos.head_logprobs import chunk_tokens_for
from aha.models.forward import chunked_head

CPU_BUDGET_BYTES = 1 << 30
CUDA_BUDGET_SHARE = 0.5  # of the free memory: the estimate leaves out allocator rounding and fragmentation


def scoring_budget_bytes(device: torch.device | str) -> int:
    """Bytes one scoring pass may take on `device`."""
    device = torch.device(device)
    if device.type != "cuda":
        return CPU_BUDGET_BYTES
    free, _ = torch.cuda.mem_get_info(device)
    unused_cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(CUDA_BUDGET_SHARE * (free + unused_cached))


def row_bytes(model: PreTrainedModel, seq_len: int, completion_len: int) -> int:
    """Upper estimate of the bytes a no-grad scoring pass holds per row of `seq_len` tokens."""
    cfg = model.config.get_text_config()
    hidden = cfg.hidden_size
    inner = getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * hidden
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or hidden // heads
    elements = seq_len * (4 * hidden + 3 * inner)  # residual, norm, attention output; MLP gate, up, product
    elements += heads * seq_len * seq_len  # one layer's attention scores
    elements += 2 * cfg.num_hidden_layers * seq_len * kv_heads * head_dim  # KV cache, every layer
    size = torch.finfo(model.dtype).bits // 8
    total = elements * size
    if chunked_head(model) is None:
        total += completion_len * cfg.vocab_size * (size + 4)  # the logits and their float32 copy
    return total


def rows_per_pass(model: PreTrainedModel, seq_len: int, completion_len: int, budget_bytes: int) -> int:
    """Rows per scoring pass within `budget_bytes` (at least one)."""
    per_row = row_bytes(model, seq_len, completion_len)
    if chunked_head(model) is None:
        return max(1, budget_bytes // per_row)
    vocab = model.config.get_text_config().vocab_size
    chunk = chunk_tokens_for(vocab)
    head_per_row = completion_len * vocab * 4 * 2  # a chunk's float32 logits and its softmax
    rows = budget_bytes // (per_row + head_per_row)
    if rows * completion_len > chunk:  # more tokens than one chunk: the head holds one chunk at most
        rows = (budget_bytes - chunk * vocab * 4 * 2) // per_row
    return max(1, rows)
