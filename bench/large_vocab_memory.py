"""Peak memory and time of the policy's scoring pass (score_completions + backward) at Qwen's 151,936-token
vocabulary: the chunked LM head against the full-logits path, with and without gradient checkpointing.

A randomly initialised bf16 Llama (hidden 1024, 4 layers) scores GRPO-shaped batches (groups of 8 rows
sharing a 128-token prompt, 512 completion tokens). For each setting: the peak of
`torch.cuda.max_memory_allocated` above what the weights hold, the median time of 3 passes after a
warm-up, and, for the chunked head, how far its log-probs and head gradient are from the full-logits
path's (bf16 model: both round the logits to bf16 before the float32 softmax). Then the rows per no-grad
scoring pass that the device's free memory allows (aha.train.scoring_budget).

    python bench/large_vocab_memory.py            # CUDA; --quick: a small CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import aha.models.forward as forward
import aha.train.scoring_budget as scoring_budget
from aha.models.checkpointing import enable_gradient_checkpointing
from aha.models.forward import score_completions
from aha.train.scoring_budget import rows_per_pass, scoring_budget_bytes

DEFAULT_OUT = Path(__file__).parent / "results" / "large_vocab_memory.json"
VOCAB = 151_936
QUICK_VOCAB = 4096  # the CPU smoke run checks the script, not the memory


def build(quick: bool, device: str) -> LlamaForCausalLM:
    torch.manual_seed(0)
    size = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
    if not quick:
        size = dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=4, num_attention_heads=16)
    config = LlamaConfig(vocab_size=QUICK_VOCAB if quick else VOCAB, max_position_embeddings=1024, **size)
    dtype = torch.float32 if quick else torch.bfloat16
    return LlamaForCausalLM(config).to(device=device, dtype=dtype).train()


def batch(rows: int, prompt_len: int, completion_len: int, device: str, vocab: int):
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(3, vocab, (rows // 8, prompt_len), generator=g).repeat_interleave(8, 0)
    ids = torch.cat([prompts, torch.randint(3, vocab, (rows, completion_len), generator=g)], 1)
    return ids.to(device), torch.ones_like(ids).to(device)


def one_pass(model, ids, mask, completion_len):
    scores = score_completions(model, ids, mask, completion_len, temperature=0.9)
    scores.logprobs.sum().backward()
    grad = model.lm_head.weight.grad.float()
    model.zero_grad(set_to_none=True)
    return scores.logprobs.detach().float(), grad


def measure(model, ids, mask, completion_len, device) -> dict:
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    out = one_pass(model, ids, mask, completion_len)  # warm-up
    del out
    sync()
    base = torch.cuda.memory_allocated() if device == "cuda" else 0
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        logprobs, grad = one_pass(model, ids, mask, completion_len)
        sync()
        times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30 if device == "cuda" else None
    return {"peak_gib": peak, "seconds": statistics.median(times), "logprobs": logprobs, "grad": grad}


def _disable_checkpointing(model) -> None:
    (getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable)()


def run(quick: bool) -> dict:
    device = "cpu" if quick else "cuda"
    model = build(quick, device)
    shapes = [(16, 16, 32)] if quick else [(64, 128, 512), (128, 128, 512)]
    rows_out = []
    full_head = forward.chunked_head
    for rows, prompt_len, completion_len in shapes:
        ids, mask = batch(rows, prompt_len, completion_len, device, model.config.vocab_size)
        for checkpointing in (False, True):
            if checkpointing:
                enable_gradient_checkpointing(model)
            else:
                _disable_checkpointing(model)
            results = {}
            for head in ("chunked", "full-logits"):
                forward.chunked_head = full_head if head == "chunked" else (lambda m: None)
                try:
                    results[head] = measure(model, ids, mask, completion_len, device)
                except torch.OutOfMemoryError:
                    results[head] = None
                finally:
                    forward.chunked_head = full_head
                    if device == "cuda":
                        torch.cuda.empty_cache()
            chunked, full = results["chunked"], results["full-logits"]
            row = {
                "rows": rows,
                "prompt": prompt_len,
                "completion": completion_len,
                "checkpointing": checkpointing,
            }
            for head, r in results.items():
                row[head] = None if r is None else {"peak_gib": r["peak_gib"], "seconds": r["seconds"]}
            if chunked is not None and full is not None:
                row["logprobs_max_abs_diff"] = float((chunked["logprobs"] - full["logprobs"]).abs().max())
                scale = float(full["grad"].abs().max())
                row["head_grad_max_abs_diff_rel"] = (
                    float((chunked["grad"] - full["grad"]).abs().max()) / scale
                )
            print(json.dumps(row), flush=True)
            rows_out.append(row)
    _disable_checkpointing(model)
    budget = scoring_budget_bytes(device)
    rows, prompt_len, completion_len = shapes[-1]
    no_grad = {"budget_gib": budget / 2**30, "seq_len": prompt_len + completion_len}
    no_grad["rows_per_pass_chunked"] = rows_per_pass(
        model, prompt_len + completion_len, completion_len, budget
    )
    scoring_budget.chunked_head = lambda m: None
    no_grad["rows_per_pass_full_logits"] = rows_per_pass(
        model, prompt_len + completion_len, completion_len, budget
    )
    scoring_budget.chunked_head = full_head
    print(json.dumps(no_grad), flush=True)
    device_name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    return {"device": device_name, "torch": torch.__version__, "rows": rows_out, "no_grad_passes": no_grad}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="A small CPU smoke run (no numbers to report).")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    result = run(args.quick)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
