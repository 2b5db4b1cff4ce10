"""aha's GRPO step against TRL's GRPOTrainer on the same work, in one run (issue 5).

The same locally created tiny Llama (character tokenizer) in two sizes, 4 prompts x 8 completions per
optimizer step, every completion exactly 64 new tokens in both tools (min_new_tokens), beta = 0.04 (both keep
a reference model), one optimisation pass per batch, token-mean loss (TRL "dapo"), fp32, CPU, 2 threads.
Each measurement is a fresh child process (its own peak RSS); aha and TRL alternate, and the aha/TRL ratio
is taken within each repeat, so slow drift of the machine's load hits both sides of a ratio alike.

    python bench/grpo_vs_trl.py                 # full benchmark, writes bench/results/grpo_vs_trl.json
                                                # and regenerates docs/benchmarks.md
    python bench/grpo_vs_trl.py --quick         # one step of a toy model (the test), writes nothing in the repo
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from _flops import LlamaShape, decode_projection_shapes, grpo_step_flops  # noqa: E402
from _grpo_runners import GRPOBenchSettings, RunRecord, add_quiet_machine_options, run_when_quiet  # noqa: E402
from _hardware import (  # noqa: E402
    load_average,
    machine_description,
    measure_decode_matmul_rate,
    measure_matmul_peak,
    wait_until_quiet,
)

DEFAULT_OUT = BENCH_DIR / "results" / "grpo_vs_trl.json"
# aha_mb: aha with train.micro_batch_size (--aha-micro-batch); floor: the same step with generation as
# cheap as a forward (_grpo_floor.py).
TOOLS = ("aha", "aha_mb", "trl", "floor")


@dataclass(frozen=True)
class ModelSize:
    name: str
    hidden: int
    layers: int
    heads: int
    intermediate: int  # ~8/3 hidden, rounded up to a multiple of 16, as Llama does


SIZES = {
    "3m": ModelSize("3M", hidden=256, layers=4, heads=4, intermediate=688),
    "25m": ModelSize("25M", hidden=512, layers=8, heads=8, intermediate=1376),
    "toy": ModelSize("toy", hidden=32, layers=2, heads=2, intermediate=64),  # --quick only
}


def addition_prompts(n: int, seed: int) -> list[dict]:
    """Distinct 2-digit additions, "a+b=": every prompt has the same 6 tokens, so no padding differs."""
    rng = random.Random(seed)
    pairs = rng.sample([(a, b) for a in range(10, 100) for b in range(10, 100)], n)
    return [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a, b in pairs]


def build_model(size: ModelSize, out_dir: Path, seed: int) -> tuple[Path, int, LlamaShape, int]:
    """Create and save the model; return its directory, parameter count, shape and the prompt length."""
    from transformers import AutoConfig, AutoTokenizer

    from aha.models.tiny import TinyModelSpec, create_tiny_model

    spec = TinyModelSpec(
        hidden_size=size.hidden,
        num_layers=size.layers,
        num_heads=size.heads,
        intermediate_size=size.intermediate,
    )
    model_dir = create_tiny_model(out_dir, spec, seed=seed)
    config = AutoConfig.from_pretrained(model_dir)
    shape = LlamaShape.from_config(config)
    params = _parameter_count(shape)
    prompt_len = len(
        AutoTokenizer.from_pretrained(model_dir)(addition_prompts(1, seed)[0]["prompt"])["input_ids"]
    )
    return model_dir, params, shape, prompt_len


def _parameter_count(s: LlamaShape) -> int:
    """Parameters of a Llama with tied embeddings (the tiny model's): embeddings, layers, final norm."""
    kv_dim = s.hidden * s.kv_heads // s.heads
    per_layer = s.hidden * (2 * s.hidden + 2 * kv_dim) + 3 * s.hidden * s.intermediate + 2 * s.hidden
    return s.vocab * s.hidden + s.layers * per_layer + s.hidden


def summarize_size(
    records: dict[str, list[RunRecord]],
    warmup: int,
    flops: float,
    peak_gflops: float,
    tokens_per_step: int,
    attainable_s: float,
) -> dict:
    """Medians per tool over all its runs, the per-repeat step-time ratios, the fraction of the peak and
    the attainable step (`attainable_s`, the model work at the best measured rates) against TRL's step."""
    out: dict = {}
    for tool, runs in records.items():
        run_medians = [statistics.median(r.step_s[warmup:]) for r in runs]
        gen_medians = [statistics.median(r.generate_s[warmup:]) for r in runs if len(r.generate_s) > warmup]
        step = statistics.median(run_medians)
        out[tool] = {
            "step_s_median": step,
            "step_s_per_run": run_medians,
            "generate_s_median": statistics.median(gen_medians) if gen_medians else None,
            "peak_rss_gb": max(r.peak_rss_bytes for r in runs) / 1e9,
            "completion_tokens_per_s": tokens_per_step / step,
            "fraction_of_peak": flops / (step * peak_gflops * 1e9),
            "completion_lengths": sorted({round(x, 3) for r in runs for x in r.completion_length}),
            "other_cores_per_run": [r.other_cores for r in runs],
            "attempts_per_run": [r.attempts for r in runs],
            "step_s_all": [r.step_s for r in runs],  # every step of every run, warm-up included
            "settings_used": runs[0].settings_used,
        }
    for a, b in (("aha", "trl"), ("aha_mb", "trl"), ("floor", "trl"), ("aha", "floor")):
        if a in records and b in records:
            out[f"ratio_{a}_over_{b}"] = _per_repeat_ratios(
                out[a]["step_s_per_run"], out[b]["step_s_per_run"]
            )
    for a in ("aha", "aha_mb"):
        if a in records and "trl" in records:
            out[f"rss_ratio_{a}_over_trl"] = out[a]["peak_rss_gb"] / out["trl"]["peak_rss_gb"]
    if "trl" in records:
        out["attainable_over_trl"] = attainable_s / out["trl"]["step_s_median"]
    return out


def _child_run(tool: str, settings: GRPOBenchSettings, micro_batch: int) -> tuple[str, GRPOBenchSettings]:
    """The runner and settings behind a tool name: aha_mb is aha with `micro_batch` completions per pass."""
    if tool == "aha_mb":
        return "aha", replace(settings, aha_micro_batch_size=micro_batch)
    return tool, settings


def _per_repeat_ratios(numerators: list[float], denominators: list[float]) -> dict:
    """Step-time ratios within each repeat (the two runs were back to back), then their median and range."""
    ratios = [n / d for n, d in zip(numerators, denominators, strict=True)]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios), "per_repeat": ratios}


def run_benchmark(args: argparse.Namespace) -> dict:
    started = time.time()
    load_start = load_average()
    machine = machine_description()
    print(
        f"load average {load_start}; measuring the fp32 matmul peak with {args.threads} threads",
        file=sys.stderr,
    )
    if args.quiet_cores:
        wait_until_quiet(args.quiet_cores, args.quiet_timeout)
    peak_sizes = (256,) if args.quick else (1024, 2048)
    decode_repeats = 3 if args.quick else 15
    bf16_rollouts = args.aha_rollout_dtype == "bfloat16"  # aha samples with bf16 matmuls: bound those
    peaks = [measure_matmul_peak(args.threads, sizes=peak_sizes)]
    results: dict = {"sizes": {}}
    with tempfile.TemporaryDirectory(prefix="aha-bench-") as tmp:
        tmp_dir = Path(tmp)
        prepared = {}
        for key in args.sizes:
            size = SIZES[key]
            model_dir, params, shape, prompt_len = build_model(size, tmp_dir / f"model-{key}", args.seed)
            settings = GRPOBenchSettings(
                model_dir=str(model_dir),
                train_prompts=addition_prompts(64, args.seed),
                eval_prompts=addition_prompts(4, args.seed + 1),
                reward="_bench_rewards:digit_fraction",
                steps=args.warmup + args.steps,
                prompts_per_step=4,
                group_size=8,
                max_new_tokens=args.new_tokens,
                min_new_tokens=args.new_tokens,
                beta=0.04,
                loss_agg="token-mean",
                seed=args.seed,
                threads=args.threads,
                aha_rollout_dtype=args.aha_rollout_dtype,
            )
            sequences = settings.prompts_per_step * settings.group_size
            flops = grpo_step_flops(shape, sequences, prompt_len, args.new_tokens)
            decode_work = (decode_projection_shapes(shape), sequences)  # weights, rows
            prepared[key] = {
                "settings": settings,
                "flops": flops,
                "decode_work": decode_work,
                "decode_matmul_dtype": "bfloat16" if bf16_rollouts else "float32",
                "decode_matmul_gflops_measured": [
                    measure_decode_matmul_rate(
                        *decode_work, args.threads, repeats=decode_repeats, bf16=bf16_rollouts
                    )
                ],
                "model": {**asdict(size), "parameters": params, "prompt_tokens": prompt_len},
                "flops_per_step": flops.total,
                "flops_generation": flops.generation,
                "completion_tokens_per_step": sequences * args.new_tokens,
            }
        records: dict[str, dict[str, list[RunRecord]]] = {
            key: {t: [] for t in args.tools} for key in args.sizes
        }
        for repeat in range(args.repeats):
            order = args.tools if repeat % 2 == 0 else tuple(reversed(args.tools))
            for key in args.sizes:
                for tool in order:
                    print(f"repeat {repeat + 1}/{args.repeats}: {SIZES[key].name} {tool}", file=sys.stderr)
                    child, settings = _child_run(tool, prepared[key]["settings"], args.aha_micro_batch)
                    record = run_when_quiet(
                        child,
                        settings,
                        tmp_dir / f"{key}-{tool}-{repeat}",
                        args.quiet_cores,
                        args.quiet_timeout,
                        args.retries,
                    )
                    records[key][tool].append(record)
                    print(
                        f"  median step {statistics.median(record.step_s[args.warmup :]):.3f} s, "
                        f"peak RSS {record.peak_rss_bytes / 1e9:.2f} GB, "
                        f"other processes busy on {_cores(record.other_cores)} cores meanwhile",
                        file=sys.stderr,
                    )
        # The rates are maxima, and one burst of repeats can catch a slow moment of a shared machine (a
        # 2048^2 matmul measured 212-330 GFLOP/s within a minute here): measured again after the runs,
        # the best of both is the denominator.
        if args.quiet_cores:
            wait_until_quiet(args.quiet_cores, args.quiet_timeout)
        peaks.append(measure_matmul_peak(args.threads, sizes=peak_sizes))
        peak = max(peaks, key=lambda p: p.gflops)
        for key in args.sizes:
            info = {k: v for k, v in prepared[key].items() if k not in ("settings", "flops", "decode_work")}
            info["decode_matmul_gflops_measured"].append(
                measure_decode_matmul_rate(
                    *prepared[key]["decode_work"], args.threads, repeats=decode_repeats, bf16=bf16_rollouts
                )
            )
            flops, decode_gflops = prepared[key]["flops"], max(info["decode_matmul_gflops_measured"])
            info.update(
                {
                    "decode_matmul_gflops": decode_gflops,
                    # The step's model work at the best rates measured here: training at the matmul
                    # peak, generation at the rate of its own matmuls with the batch's rows.
                    "attainable_step_s": flops.training / (peak.gflops * 1e9)
                    + flops.generation / (decode_gflops * 1e9),
                }
            )
            summary = summarize_size(
                records[key],
                args.warmup,
                info["flops_per_step"],
                peak.gflops,
                info["completion_tokens_per_step"],
                info["attainable_step_s"],
            )
            results["sizes"][key] = {**info, **summary}
    results.update(
        {
            "benchmark": "grpo_vs_trl",
            "command": " ".join(["python bench/grpo_vs_trl.py", *sys.argv[1:]]),
            "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
            "duration_s": time.time() - started,
            "machine": machine,
            "load_average_start": load_start,
            "load_average_end": load_average(),
            "matmul_peak": {**peak.to_dict(), "measured_gflops": [p.gflops for p in peaks]},
            "settings": {
                "prompts_per_step": 4,
                "group_size": 8,
                "new_tokens": args.new_tokens,
                "beta": 0.04,
                "loss": "token-mean (TRL loss_type=dapo)",
                "passes_per_batch": 1,
                "aha_micro_batch_size": args.aha_micro_batch if "aha_mb" in args.tools else 0,
                "dtype": "float32",
                "aha_rollout_dtype": args.aha_rollout_dtype,
                "threads": args.threads,
                "warmup_steps": args.warmup,
                "measured_steps": args.steps,
                "repeats": args.repeats,
                "quiet_cores": args.quiet_cores,
                "retries": args.retries,
                "reward": "fraction of digit characters (the same function in both)",
            },
        }
    )
    return results


def _cores(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", nargs="+", default=["3m", "25m"], choices=sorted(SIZES))
    parser.add_argument("--tools", nargs="+", default=list(TOOLS), choices=TOOLS)
    parser.add_argument("--steps", type=int, default=6, help="measured steps per run (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=2, help="steps per run left out of the timings")
    parser.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="runs per tool and size, alternating the order (5: on a VM whose speed drifts by +-15%% "
        "a median of 3 moved by 0.04 between runs)",
    )
    parser.add_argument("--new-tokens", type=int, default=64, help="exact completion length")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--aha-micro-batch",
        type=int,
        default=16,
        help="train.micro_batch_size of the aha_mb runs (completions per forward/backward pass; 16: two "
        "groups, the batch in two halves)",
    )
    parser.add_argument(
        "--aha-rollout-dtype",
        default="auto",
        choices=("auto", "float32", "bfloat16"),
        help="aha's rollout.dtype (bfloat16: bf16 sampler weights, fp32 training, truncated importance "
        "sampling; issue 24)",
    )
    parser.add_argument("--seed", type=int, default=0)
    add_quiet_machine_options(parser, retries=2)
    parser.add_argument("--out", type=Path, default=None, help=f"results JSON (default {DEFAULT_OUT})")
    parser.add_argument("--no-report", action="store_true", help="do not regenerate docs/benchmarks.md")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one step of a toy model with 8 tokens; results go to --out (or a temp file) only",
    )
    args = parser.parse_args(argv)
    args.tools = tuple(args.tools)
    if args.quick:
        args.sizes, args.steps, args.warmup, args.repeats, args.new_tokens = ["toy"], 1, 0, 1, 8
        args.quiet_cores = 0.0
        args.no_report = True
    if args.steps < 1 or args.warmup < 0 or args.repeats < 1:
        parser.error("need --steps >= 1, --warmup >= 0 and --repeats >= 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    results = run_benchmark(args)
    out = args.out or (
        Path(tempfile.mkdtemp(prefix="aha-bench-")) / "grpo_vs_trl.json" if args.quick else DEFAULT_OUT
    )
    import report

    report.save_results(results, out, regenerate_page=not args.no_report)
    for res in results["sizes"].values():
        line = " | ".join(
            f"{t} {res[t]['step_s_median']:.3f} s/step {res[t]['peak_rss_gb']:.2f} GB" for t in args.tools
        )
        ratio = res.get("ratio_aha_over_trl", {}).get("median")
        print(f"{res['model']['name']}: {line}" + (f" | aha/TRL {ratio:.2f}" if ratio else ""))
    return results


if __name__ == "__main__":
    main()
