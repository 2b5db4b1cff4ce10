"""Decode-step attention on the CPU: torch's bf16 SDPA kernel against the float32 kernel and against the
torch decode step's own bf16 attention (float32 products over bf16-rounded inputs and attention
weights: aha.rollout.llama_decode.low_precision_attention_cpu).

Why: with `rollout.dtype=bfloat16` the sampler's projections run as bf16 matmuls, which this CPU does
faster than float32 ones, yet a bf16 rollout of the 25M model was no faster than a float32 one. The
attention of one query per row was where the time went. Shapes: the 25M grpo_vs_trl model's decode (32
rows, 8 heads of 64, keys for 6 + 64 positions), one call per layer and token; seconds per call, median
over interleaved repeats.

    python bench/decode_attention_cpu.py            # --quick: a few repeats (its test)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))

from _common_timing import median, time_interleaved  # noqa: E402
from _hardware import machine_description  # noqa: E402

DEFAULT_OUT = Path(__file__).parent / "results" / "decode_attention_cpu.json"
ROWS, HEADS, HEAD_DIM, POSITIONS = 32, 8, 64, 70


def attention_runs(calls: int) -> dict:
    """Each variant as a function that makes `calls` attention calls at the decode shape."""
    from aha.rollout.llama_decode import low_precision_attention_cpu

    generator = torch.Generator().manual_seed(0)
    query = torch.randn(ROWS, HEADS, 1, HEAD_DIM, generator=generator)
    keys = torch.randn(ROWS, HEADS, POSITIONS, HEAD_DIM, generator=generator).bfloat16()
    values = torch.randn(ROWS, HEADS, POSITIONS, HEAD_DIM, generator=generator).bfloat16()
    scale = HEAD_DIM**-0.5
    q16, q32, k32, v32 = query.bfloat16(), query, keys.float(), values.float()

    def repeat(fn):
        return lambda: [fn() for _ in range(calls)]

    return {
        "sdpa_bf16": repeat(lambda: F.scaled_dot_product_attention(q16, keys, values, scale=scale)),
        "sdpa_fp32": repeat(lambda: F.scaled_dot_product_attention(q32, k32, v32, scale=scale)),
        "aha_bf16": repeat(lambda: low_precision_attention_cpu(query, k32, v32, None, scale, torch.bfloat16)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calls", type=int, default=200, help="attention calls per timed repeat")
    parser.add_argument("--quick", action="store_true", help="2 repeats of 10 calls")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    repeats, calls = (2, 10) if args.quick else (args.repeats, args.calls)
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        runs = attention_runs(calls)
        seconds = time_interleaved(runs, repeats, warmups=runs)
        per_call = {name: median(s) / calls for name, s in seconds.items()}
        rows.append(
            {
                "threads": threads,
                "seconds": seconds,
                "seconds_per_call": per_call,
                "sdpa_bf16_over_sdpa_fp32": per_call["sdpa_bf16"] / per_call["sdpa_fp32"],
                "sdpa_bf16_over_aha_bf16": per_call["sdpa_bf16"] / per_call["aha_bf16"],
            }
        )
        print(
            f"{threads} thread(s): bf16 SDPA {per_call['sdpa_bf16'] * 1e6:.0f} us, fp32 SDPA "
            f"{per_call['sdpa_fp32'] * 1e6:.0f} us, aha bf16 {per_call['aha_bf16'] * 1e6:.0f} us per call"
        )
    result = {
        "benchmark": "decode_attention_cpu",
        "shape": {"rows": ROWS, "heads": HEADS, "head_dim": HEAD_DIM, "positions": POSITIONS},
        "repeats": repeats,
        "calls": calls,
        "machine": machine_description(),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
