"""GPU measurements behind docs/ARCHITECTURE.md's precision numbers, on a randomly initialised Llama of
Qwen2.5-0.5B's shape (no hub access): the reference pass resident vs offloaded (`algo.ref_offload`), the
reference's memory in fp32 vs bf16-mixed, and one GRPO policy update in fp32 vs bf16-mixed (time and
peak CUDA memory).

    python bench/precision_gpu.py [--out results.json]

Needs a CUDA device (`--smoke`: a tiny shape on the CPU, to check the script runs). Times are medians of
a few repeats after a warm-up, synchronised.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from aha.train.optim import build_optimizer  # noqa: E402
from aha.train.policy_update import PolicyLossSettings, UpdateBatch, policy_update  # noqa: E402
from aha.train.precision import Precision  # noqa: E402
from aha.train.reference import ReferencePolicy  # noqa: E402

SHAPE = dict(  # Qwen2.5-0.5B's sizes (a tied head), as a Llama
    vocab_size=151936,
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    tie_word_embeddings=True,
)
ROWS, PROMPT, COMPLETION, MICRO = 32, 128, 256, 8
GB = 1e9


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        _sync()
        t0 = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def allocated() -> float:
    return torch.cuda.memory_allocated() / GB if torch.cuda.is_available() else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--smoke", action="store_true", help="a tiny shape on the CPU")
    args = parser.parse_args()
    device = "cpu" if args.smoke else "cuda"
    shape = dict(SHAPE, vocab_size=128, hidden_size=56, intermediate_size=128, num_hidden_layers=2)
    shape = shape if args.smoke else SHAPE
    torch.manual_seed(0)
    with torch.device(device):
        policy = LlamaForCausalLM(LlamaConfig(**shape))
    g = torch.Generator(device=device).manual_seed(0)
    ids = torch.randint(0, shape["vocab_size"], (ROWS, PROMPT + COMPLETION), device=device, generator=g)
    batch = UpdateBatch(
        ids,
        torch.ones_like(ids),
        torch.ones(ROWS, COMPLETION, device=device),
        torch.randn(ROWS, device=device, generator=g),
    )
    settings = PolicyLossSettings(
        0.2, 0.2, beta=0.04, kl_estimator="k3", loss_agg="token-mean", temperature=1.0
    )
    results: dict = {
        "shape": shape,
        "rows": ROWS,
        "prompt": PROMPT,
        "completion": COMPLETION,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
    }
    for name in ("fp32", "bf16-mixed"):
        precision = Precision(name, device)
        row: dict = {}
        for offload in (False, True):
            before = allocated()
            ref = ReferencePolicy(policy, precision, device, offload=offload)
            key = "offloaded" if offload else "resident"
            row[f"reference_{key}_gpu_gb"] = allocated() - before
            row[f"reference_{key}_pass_s"] = timed(lambda ref=ref: ref.logprobs(batch, 1.0), repeats=3)
            row["reference_weight_gb"] = (
                sum(p.numel() * p.element_size() for p in ref.model.parameters()) / GB
            )
            batch.ref_logprobs = ref.logprobs(batch, 1.0)
            del ref
        optimizer = build_optimizer(policy, lr=1e-6, weight_decay=0.0)

        def update(precision=precision, optimizer=optimizer) -> None:
            policy_update(
                policy,
                optimizer,
                batch,
                settings,
                passes=1,
                minibatches=1,
                group_size=8,
                grad_clip=1.0,
                generator=torch.Generator().manual_seed(0),
                micro_batch_size=MICRO,
                precision=precision,
            )

        update()  # AdamW state allocated
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        row["update_s"] = timed(update, repeats=3)
        if device == "cuda":
            row["update_allocated_peak_gb"] = torch.cuda.max_memory_allocated() / GB
            row["update_reserved_peak_gb"] = torch.cuda.max_memory_reserved() / GB
        del optimizer
        results[name] = row
        print(name, json.dumps(row, indent=1), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
