"""A real architecture at a real size on a GPU: does `aha grpo` train it correctly, and what does it cost?

Issue 17's GPU check. A randomly initialised model of Qwen2-0.5B's shape (24 layers x 896, 14 query / 2
key-value heads, MLP 4864, the 151,936-token vocabulary, tied embeddings: 494M parameters) is trained by
`run_grpo`, the code behind `aha grpo`, with bf16-mixed precision, in four settings: LoRA off/on x
gradient checkpointing off/on. Each setting reports seconds per step (median after the first), the peak
CUDA memory (allocated and reserved), whether every loss was finite, and what moved: the share of the
trainable weights that changed (full fine-tuning: the fp32 master weights; LoRA: the adapters' B
matrices, which start at zero) and, under LoRA, that the base weights did not move.

The tokenizer has one token per printable character plus filler tokens up to the model's vocabulary, so
every sampled id decodes. Prompts are the built-in arithmetic task's; the reward is the share of digits
in a completion (bench/_bench_rewards.py, as grpo_vs_trl uses), which varies within every group of a
random model's samples, so every update has a real gradient. Completions are forced to full length
(min_new_tokens = max_new_tokens). Learning is not measured here (the CPU tests measure it).

    python bench/gpu_real_model.py                       # needs CUDA; ~4 minutes on an H200
    python bench/gpu_real_model.py --shape tiny --device cpu --steps 2   # the CPU smoke run its test uses
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from _hardware import machine_description  # noqa: E402

DEFAULT_OUT = Path(__file__).parent / "results" / "gpu_real_model.json"
QWEN2_05B = dict(
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    vocab_size=151_936,
    max_position_embeddings=4096,
    rope_theta=1_000_000.0,
    tie_word_embeddings=True,
)
TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=4096,
    max_position_embeddings=512,
    rope_theta=10_000.0,
    tie_word_embeddings=True,
)
SHAPES = {"qwen2-0.5b": QWEN2_05B, "tiny": TINY}
SETTINGS = [
    {"name": "full", "lora": False, "checkpointing": False},
    {"name": "full + checkpointing", "lora": False, "checkpointing": True},
    {"name": "LoRA r=16", "lora": True, "checkpointing": False},
    {"name": "LoRA r=16 + checkpointing", "lora": True, "checkpointing": True},
]


def build_model(out_dir: Path, shape: dict, seed: int = 0) -> int:
    """Save a random-init Qwen2 of `shape` and a character tokenizer padded to its vocabulary; returns
    the parameter count."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    from aha.models.tiny import BOS, CHARACTERS, EOS, PAD

    tokens = [PAD, BOS, EOS, *CHARACTERS]
    tokens += [f"<filler{i}>" for i in range(shape["vocab_size"] - len(tokens))]
    raw = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(tokens)}, unk_token=" "))
    raw.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    raw.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=" "
    )
    config = Qwen2Config(**shape, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return sum(p.numel() for p in model.parameters())


def load_tensors(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(path))
    return tensors


def moved_share(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> float:
    """Share of the elements of the tensors both hold that differ."""
    changed = total = 0
    for name, old in before.items():
        if name in after:
            changed += int((after[name].float() != old.float()).sum())
            total += old.numel()
    return changed / max(total, 1)


def grpo_overrides(model_dir: Path, run_dir: Path, args: argparse.Namespace) -> list[str]:
    """The `aha grpo` options of one timed run of the workload in `args` (this script's and
    torchrun_fsdp2_gpu.py's); the caller adds what its setting changes."""
    return [
        f"model.path={model_dir}",
        f"model.device={args.device}",
        f"model.precision={args.precision}",
        f"train.steps={args.steps}",
        f"train.prompts_per_step={args.prompts}",
        f"rollout.group_size={args.group}",
        f"rollout.max_new_tokens={args.tokens}",
        f"rollout.min_new_tokens={args.tokens}",
        "rewards.functions=[_bench_rewards:digit_fraction]",
        "algo.beta=0.04",
        f"optim.lr={args.lr}",
        "eval.every=0",
        f"eval.num_prompts={args.prompts}",
        "track.sample_every=0",
        "track.plot=false",
        "run.progress=false",
        f"run.output_dir={run_dir}",
    ]


def step_summary(history: list[dict]) -> dict:
    """A run's step timings (medians after the first step, which warms up), whether every loss was
    finite, and its peak CUDA memory, from `run_grpo`'s history."""
    steps = [row for row in history if row["step"] > 0 and "time/step_s" in row]
    step_times = [row["time/step_s"] for row in steps]
    return {
        "step_s_median": statistics.median(step_times[1:] or step_times),
        "generate_s_median": statistics.median([r["time/generate_s"] for r in steps][1:] or [0.0]),
        "update_s_median": statistics.median([r["time/update_s"] for r in steps][1:] or [0.0]),
        "losses_finite": all(math.isfinite(r["loss"]) for r in steps if "loss" in r),
        "loss_rows": sum("loss" in r for r in steps),
        "cuda_allocated_peak_gb": max(
            (r.get("memory/cuda_allocated_peak_gb", 0.0) for r in steps), default=0.0
        ),
        "cuda_reserved_peak_gb": max(
            (r.get("memory/cuda_reserved_peak_gb", 0.0) for r in steps), default=0.0
        ),
    }


def run_setting(setting: dict, model_dir: Path, run_dir: Path, args: argparse.Namespace) -> dict:
    from aha.config import load_config
    from aha.train.checkpoint import latest_checkpoint
    from aha.train.grpo import GRPORunConfig, run_grpo

    overrides = [
        *grpo_overrides(model_dir, run_dir, args),
        f"model.lora.r={16 if setting['lora'] else 0}",
        f"train.gradient_checkpointing={str(setting['checkpointing']).lower()}",
    ]
    cfg = load_config(GRPORunConfig, overrides=overrides)
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    t0 = time.perf_counter()
    result = run_grpo(cfg)
    wall = time.perf_counter() - t0
    ckpt = latest_checkpoint(run_dir)
    after = load_tensors(ckpt)
    out = {**setting, "wall_s": wall, **step_summary(result.history)}
    if setting["lora"]:
        lora_b = {k: v for k, v in after.items() if "lora_B" in k}
        out["trainable_moved_share"] = moved_share(
            {k: torch.zeros_like(v) for k, v in lora_b.items()}, lora_b
        )
        out["adapter_tensors"] = len(lora_b)
    else:
        out["trainable_moved_share"] = moved_share(load_tensors(model_dir), after)
    return out


def format_table(rows: list[dict]) -> str:
    lines = [
        "| setting | s/step | generate s | update s | peak allocated GB | peak reserved GB | trainable moved | losses finite |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['step_s_median']:.2f} | {r['generate_s_median']:.2f} | {r['update_s_median']:.2f} | "
            f"{r['cuda_allocated_peak_gb']:.1f} | {r['cuda_reserved_peak_gb']:.1f} | "
            f"{r['trainable_moved_share']:.1%} | {r['losses_finite']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen2-0.5b")
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-6)
    parser.add_argument("--settings", nargs="*", type=int, help="indices into the settings (default: all)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            "error: this benchmark needs CUDA (no CUDA device is visible); --device cpu --shape tiny runs its smoke test"
        )
        return 2
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        params = build_model(model_dir, SHAPES[args.shape])
        print(f"{args.shape}: {params / 1e6:.1f}M parameters", flush=True)
        chosen = [SETTINGS[i] for i in args.settings] if args.settings else SETTINGS
        for i, setting in enumerate(chosen):
            run_dir = Path(tmp) / f"run{i}"
            row = run_setting(setting, model_dir, run_dir, args)
            shutil.rmtree(run_dir)  # a full checkpoint with AdamW state is ~6 GB at this size
            rows.append(row)
            print(json.dumps(row), flush=True)
    report = {
        "machine": machine_description(),
        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
        "torch": torch.__version__,
        "shape": args.shape,
        "parameters": params,
        "workload": {k: getattr(args, k) for k in ("precision", "steps", "prompts", "group", "tokens", "lr")},
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
