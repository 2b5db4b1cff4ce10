"""How far a bf16 copy of the policy is from the fp32 policy on the fp32 policy's own samples.

bench/README names bf16 sampler weights as the lever left on the 25M GRPO step (its decoding matmuls:
3.98 vs ~9.2 ms), and as a design change: the rollout would sample from a rounded policy, off-policy by
rounding (as verl's bf16 rollouts are). This measures that gap before anyone builds it. Completions are
sampled from the fp32 model (aha's native sampler, temperature 1), then every completion token is scored
by the fp32 model and by a bf16 copy (teacher-forced, the trainer's own scoring), and the script reports
what a PPO-style update would see: the per-token log-ratio log pi_bf16 - log pi_fp32, the share of
tokens whose ratio leaves the clip range [1 - clip, 1 + clip], the KL between the two next-token
distributions, and how often their argmax differs.

Two models: the 25M grpo_vs_trl model (random init: flat distributions, the mild case) and the
`aha demo` SFT checkpoint (trained: peaked distributions, short completions).

    python bench/bf16_rollout_gap.py
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from _hardware import machine_description  # noqa: E402

DEFAULT_OUT = Path(__file__).parent / "results" / "bf16_rollout_gap.json"


def measure_gap(model, tokenizer, prompts: list[str], new_tokens: int, clip: float, seed: int) -> dict:
    """Sample from the fp32 `model`, score the samples with it and with a bf16 copy; the gap's statistics."""
    from aha.models.forward import score_completions
    from aha.models.positions import left_padded_position_ids
    from aha.rollout.base import SamplingParams
    from aha.rollout.native import NativeSampler

    params = SamplingParams(max_new_tokens=new_tokens, temperature=1.0, seed=seed)
    batch = NativeSampler(model, tokenizer).generate(prompts, params)
    completion_len = batch.completion_mask.shape[1]
    rounded = copy.deepcopy(model).to(torch.bfloat16)
    positions = left_padded_position_ids(batch.attention_mask)

    def completion_logits(m):  # the distributions behind the scored tokens (score_completions keeps none)
        out = m(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=positions)
        return out.logits[:, -completion_len - 1 : -1].float()

    with torch.no_grad():
        exact = score_completions(model, batch.input_ids, batch.attention_mask, completion_len)
        approx = score_completions(rounded, batch.input_ids, batch.attention_mask, completion_len)
        exact_logits, approx_logits = completion_logits(model), completion_logits(rounded)
    mask = batch.completion_mask.bool()
    log_ratio = (approx.logprobs - exact.logprobs)[mask]
    log_p, log_q = exact_logits.log_softmax(-1), approx_logits.log_softmax(-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)[mask]
    argmax_differs = (exact_logits.argmax(-1) != approx_logits.argmax(-1))[mask]
    ratio = log_ratio.exp()
    magnitude = log_ratio.abs()
    return {
        "tokens": int(mask.sum()),
        "mean_completion_tokens": float(batch.completion_mask.sum(1).float().mean()),
        "log_ratio_mean": float(log_ratio.mean()),
        "log_ratio_abs_mean": float(magnitude.mean()),
        "log_ratio_abs_p99": float(magnitude.quantile(0.99)),
        "log_ratio_abs_max": float(magnitude.max()),
        "outside_clip_share": float(((ratio < 1 - clip) | (ratio > 1 + clip)).float().mean()),
        "kl_mean": float(kl.mean()),
        "argmax_differs_share": float(argmax_differs.float().mean()),
    }


def _bench_model(size: str, workdir: Path, seed: int, groups: int, group_size: int, new_tokens: int):
    from grpo_vs_trl import SIZES, addition_prompts, build_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir, *_ = build_model(SIZES[size], workdir / f"model-{size}", seed)
    prompts = [row["prompt"] for row in addition_prompts(groups, seed) for _ in range(group_size)]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return SIZES[size].name, model, AutoTokenizer.from_pretrained(model_dir), prompts, new_tokens


def _demo_model(workdir: Path, seed: int, quick: bool, groups: int, group_size: int):
    from _demo_checkpoint import demo_grpo_settings, demo_sft_checkpoint
    from transformers import AutoModelForCausalLM, AutoTokenizer

    checkpoint = demo_sft_checkpoint(workdir / "demo", quick=quick, seed=seed)
    prompts = [row["prompt"] for row in checkpoint.eval_prompts[:groups] for _ in range(group_size)]
    model = AutoModelForCausalLM.from_pretrained(checkpoint.path, dtype=torch.float32)
    new_tokens = demo_grpo_settings(steps=1).max_new_tokens  # the demo's completion length
    return "demo SFT", model, AutoTokenizer.from_pretrained(checkpoint.path), prompts, new_tokens


def markdown_table(rows: list[dict], clip: float) -> str:
    lines = [
        f"| model | tokens | mean abs log-ratio | p99 | max | ratio outside [{1 - clip:g}, {1 + clip:g}] "
        "| KL(fp32 \\|\\| bf16) per token | argmax differs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['tokens']} | {r['log_ratio_abs_mean']:.2e} | {r['log_ratio_abs_p99']:.2e} "
            f"| {r['log_ratio_abs_max']:.2e} | {100 * r['outside_clip_share']:.3f}% | {r['kl_mean']:.2e} "
            f"| {100 * r['argmax_differs_share']:.2f}% |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--groups", type=int, default=16, help="distinct prompts per model")
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64, help="completion length for the bench model")
    parser.add_argument("--clip", type=float, default=0.2, help="the update's clip range (aha's default)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--quick", action="store_true", help="the toy model and a 2-step SFT demo model")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        size = "toy" if args.quick else "25m"
        models = [
            _bench_model(size, workdir, args.seed, args.groups, args.group_size, args.new_tokens),
            _demo_model(workdir, args.seed, args.quick, args.groups, args.group_size),
        ]
        for name, model, tokenizer, prompts, new_tokens in models:
            stats = measure_gap(model, tokenizer, prompts, new_tokens, args.clip, args.seed)
            rows.append({"model": name, "max_new_tokens": new_tokens, **stats})
    table = markdown_table(rows, args.clip)
    print(table)
    result = {
        "command": " ".join(["python bench/bf16_rollout_gap.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine_description(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "rows": rows,
        "table": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
