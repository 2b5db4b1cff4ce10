"""aha's GRPO step against TRL's GRPOTrainer on a GPU, same model and work, in one run (issue 24).

A 308M-parameter Llama (24 layers x 1024, 16 heads, MLP 2816, the character vocabulary of aha's tiny
models, random init), bf16-mixed in both tools (float32 weights, bf16 autocast: aha's
`model.precision=bf16-mixed`, TRL's `bf16=True`), 16 prompts x 8 completions x exactly 128 new tokens
(min_new_tokens), beta = 0.04, one pass per batch, token-mean loss (TRL "dapo"). aha runs `run_grpo` (the
code behind `aha grpo`) with its default native engine, which on CUDA decodes with the static KV cache
and a CUDA graph (aha.rollout.static_decode). TRL runs twice: without gradient checkpointing and with it
(its default). Each tool is a fresh child process (bench/_grpo_runners.py, shared with grpo_vs_trl.py).

Targets (issue 24): aha's generation <= 0.25 s a step and aha's step <= 0.3x TRL's (the faster TRL run).

    python bench/gpu_grpo_vs_trl.py            # needs CUDA; ~3 minutes on an H200; writes
                                               # bench/results/gpu_grpo_vs_trl.json and docs/benchmarks.md
    python bench/gpu_grpo_vs_trl.py --smoke    # the CPU smoke run its test uses (toy model, one step)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from _grpo_runners import GRPOBenchSettings, RunRecord, run_in_child  # noqa: E402
from _hardware import machine_description  # noqa: E402
from grpo_vs_trl import SIZES, ModelSize, addition_prompts, build_model  # noqa: E402

DEFAULT_OUT = BENCH_DIR / "results" / "gpu_grpo_vs_trl.json"
MODEL_308M = ModelSize("308M", hidden=1024, layers=24, heads=16, intermediate=2816)
TARGET_GENERATE_S = 0.25
TARGET_STEP_RATIO = 0.3
RUNS = {  # name -> (tool, TRL gradient checkpointing)
    "aha": ("aha", None),
    "trl": ("trl", False),
    "trl_checkpointing": ("trl", True),
}
RUN_NAMES = {
    "aha": "aha (`aha grpo`, native sampler: static KV cache + CUDA graph)",
    "trl": "TRL GRPOTrainer, HF generate, no gradient checkpointing",
    "trl_checkpointing": "TRL, gradient checkpointing (its default)",
}


def summarize(records: dict[str, RunRecord], warmup: int) -> dict:
    """Medians per run after the warm-up steps, and aha's ratios to each TRL run."""
    out: dict = {}
    for name, r in records.items():
        out[name] = {
            "step_s_median": statistics.median(r.step_s[warmup:]),
            "generate_s_median": statistics.median(r.generate_s[warmup:]),
            "step_s_all": r.step_s,
            "generate_s_all": r.generate_s,
            "completion_lengths": sorted(set(r.completion_length)),
            "cuda_peak_allocated_gb": r.cuda_peak_allocated_bytes / 1e9,
            "wall_s": r.wall_s,
            "settings_used": r.settings_used,
        }
    if "aha" in out:
        aha = out["aha"]
        for name in [n for n in out if n.startswith("trl")]:
            aha[f"step_over_{name}"] = aha["step_s_median"] / out[name]["step_s_median"]
            aha[f"generate_over_{name}"] = aha["generate_s_median"] / out[name]["generate_s_median"]
    return out


def render_section(data: dict) -> str:
    """The docs/benchmarks.md section (bench/report.py calls it)."""
    s, runs = data["settings"], data["runs"]
    lines = [
        "## GRPO step on a GPU: aha vs TRL (issue 24)\n",
        f"{data['model']['parameters'] / 1e6:.0f}M-parameter Llama ({s['layers']} layers x {s['hidden']}, "
        f"character vocabulary, random init), {s['precision']} in both tools{_precision_note(s['precision'])}, "
        f"{s['prompts_per_step']} prompts x {s['group_size']} completions x exactly {s['new_tokens']} new tokens, "
        f"beta = {s['beta']}, one pass per batch, token-mean loss; medians over {s['measured_steps']} steps "
        f"after {s['warmup_steps']} warm-up step(s), one run per row, each in its own process.\n",
        f"```\n{data['command']}\n```\n",
        f"- GPU: {data['gpu']}; torch {data['machine']['torch']}, transformers "
        f"{data['machine']['transformers']}, TRL {data['machine']['trl']}",
        f"- Run {data['started']}, {data['duration_s'] / 60:.1f} min in all\n",
        "| run | s/step | generation s/step | peak CUDA allocated (GB) |",
        "|---|---|---|---|",
    ]
    for name, r in runs.items():
        lines.append(
            f"| {RUN_NAMES.get(name, name)} | {r['step_s_median']:.3f} | {r['generate_s_median']:.3f} "
            f"| {r['cuda_peak_allocated_gb']:.1f} |"
        )
    aha = runs.get("aha")
    trl_runs = [n for n in runs if n.startswith("trl")]
    if aha and trl_runs:
        fastest = min(trl_runs, key=lambda n: runs[n]["step_s_median"])
        ratio = aha[f"step_over_{fastest}"]
        gen = aha["generate_s_median"]
        lines += [
            "",
            f"Targets: aha's generation <= {TARGET_GENERATE_S} s: {gen:.3f} s "
            f"({'met' if gen <= TARGET_GENERATE_S else 'not met'}); aha's step <= {TARGET_STEP_RATIO}x the "
            f"faster TRL run's: {ratio:.2f}x ({'met' if ratio <= TARGET_STEP_RATIO else 'not met'}).",
        ]
    for name, error in data.get("errors", {}).items():
        lines.append(f"\n{name} failed: `{error.splitlines()[-1] if error else error}`")
    lengths = {name: r["completion_lengths"] for name, r in runs.items()}
    lines.append(f"\nCompletion lengths seen per step (must all be {s['new_tokens']}): {lengths}.\n")
    return "\n".join(lines)


def _precision_note(precision: str) -> str:
    return " (float32 weights, bf16 autocast)" if precision == "bf16-mixed" else ""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=3, help="measured steps per run")
    parser.add_argument("--warmup", type=int, default=1, help="steps per run left out (CUDA graph capture)")
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--threads", type=int, default=4, help="CPU threads per child")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=600, help="seconds per child process")
    parser.add_argument("--out", type=Path, default=None, help=f"results JSON (default {DEFAULT_OUT})")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="CPU, toy model, one step, 8 tokens; writes --out (or a temp file) only",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print("error: this benchmark needs CUDA (no CUDA device is visible); --smoke runs its CPU smoke test")
        return 2
    started = time.time()
    size, device, precision = (
        (SIZES["toy"], "cpu", "fp32") if args.smoke else (MODEL_308M, "cuda", "bf16-mixed")
    )
    prompts, group, tokens = (2, 4, 8) if args.smoke else (16, 8, 128)
    steps, warmup = (1, 0) if args.smoke else (args.steps, args.warmup)
    records: dict[str, RunRecord] = {}
    errors: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="aha-gpu-bench-") as tmp:
        model_dir, params, _, prompt_len = build_model(size, Path(tmp) / "model", args.seed)
        print(f"{size.name}: {params / 1e6:.1f}M parameters", file=sys.stderr, flush=True)
        base = GRPOBenchSettings(
            model_dir=str(model_dir),
            train_prompts=addition_prompts(4 * prompts, args.seed),
            eval_prompts=addition_prompts(4, args.seed + 1),
            reward="_bench_rewards:digit_fraction",
            steps=warmup + steps,
            prompts_per_step=prompts,
            group_size=group,
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            beta=0.04,
            loss_agg="token-mean",
            seed=args.seed,
            threads=args.threads,
            device=device,
            precision=precision,
        )
        for name in args.runs:
            tool, checkpointing = RUNS[name]
            print(f"running {name}", file=sys.stderr, flush=True)
            settings = replace(base, trl_gradient_checkpointing=checkpointing)
            try:
                records[name] = run_in_child(tool, settings, Path(tmp) / name, timeout_s=args.timeout)
            except Exception as error:  # one tool failing (TRL missing, say) must not lose the others
                errors[name] = f"{type(error).__name__}: {str(error)[-2000:]}"
                print(f"{name} failed: {errors[name]}", file=sys.stderr, flush=True)
                continue
            r = records[name]
            print(
                f"  {name}: step {statistics.median(r.step_s[warmup:]):.3f} s, generation "
                f"{statistics.median(r.generate_s[warmup:]):.3f} s",
                file=sys.stderr,
                flush=True,
            )
    results = {
        "benchmark": "gpu_grpo_vs_trl",
        "command": " ".join(
            ["python bench/gpu_grpo_vs_trl.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "duration_s": time.time() - started,
        "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
        "machine": machine_description(),
        "model": {"name": size.name, "parameters": params, "prompt_tokens": prompt_len},
        "settings": {
            "layers": size.layers,
            "hidden": size.hidden,
            "precision": precision,
            "prompts_per_step": prompts,
            "group_size": group,
            "new_tokens": tokens,
            "beta": 0.04,
            "warmup_steps": warmup,
            "measured_steps": steps,
            "threads": args.threads,
        },
        "runs": summarize(records, warmup),
        "errors": errors,
    }
    import report

    out = args.out or (Path(tempfile.mkdtemp()) / "gpu_grpo_vs_trl.json" if args.smoke else DEFAULT_OUT)
    report.save_results(results, out, regenerate_page=not args.smoke)
    print(render_section(results))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
