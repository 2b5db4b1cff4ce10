"""Held-out accuracy against training wall time, aha's GRPO vs TRL's GRPOTrainer, from one SFT checkpoint.

The `aha demo` task (2-digit addition taught by a teacher that often forgets the carry): its SFT checkpoint
(HF format) is trained further by each tool with the same reward, group size, prompts per step, learning
rate, beta, temperature and loss aggregation. Both are evaluated by the same greedy evaluator (aha's, on
each tool's live model) on held-out problems every few steps; evaluation time is left out of the training
time. Target (issue 5): aha reaches TRL's best held-out accuracy in at most half of TRL's wall time.
Which evaluation first hits 100% depends on the samples drawn, so the comparison is repeated with
several GRPO seeds (`--rl-seeds`) from the one checkpoint and the verdict is the median over them.

    python bench/time_to_accuracy.py            # SFT, then both tools; writes bench/results/time_to_accuracy.json
                                                # and regenerates docs/benchmarks.md
    python bench/time_to_accuracy.py --quick    # a few steps end to end (the test); writes nothing in the repo
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from _grpo_runners import (  # noqa: E402
    AHA_TO_TRL_LOSS,
    GRPOBenchSettings,
    RunRecord,
    add_quiet_machine_options,
    run_when_quiet,
)
from _hardware import load_average, machine_description  # noqa: E402

DEFAULT_OUT = BENCH_DIR / "results" / "time_to_accuracy.json"
TOOLS = ("trl", "aha")
# Besides the target (TRL's best), times to these accuracies: less sensitive to one lucky evaluation.
THRESHOLDS = (0.8, 0.9, 0.95)


def verdict(runs: dict[str, RunRecord]) -> dict | None:
    """TRL's best held-out accuracy, when TRL first reached it, and when aha first reached it (None: never)."""
    if set(runs) != set(TOOLS):
        return None
    trl_best = max(e["accuracy"] for e in runs["trl"].evals)
    return {
        "trl_best_accuracy": trl_best,
        "trl_time_to_best_s": time_to(runs["trl"], trl_best),
        "aha_time_to_trl_best_s": time_to(runs["aha"], trl_best),
    }


def time_to(record: RunRecord, accuracy: float) -> float | None:
    """Training seconds until the first evaluation at or above `accuracy` (None: never reached)."""
    return next((e["train_time_s"] for e in record.evals if e["accuracy"] >= accuracy), None)


def trial_ratio(trial_verdict: dict | None) -> float | None:
    """aha's time to TRL's best over TRL's; inf when aha never got there, None when there is nothing to
    compare (one tool only, or TRL never beat the starting accuracy)."""
    if trial_verdict is None or not trial_verdict["trl_time_to_best_s"]:
        return None
    if trial_verdict["aha_time_to_trl_best_s"] is None:
        return math.inf
    return trial_verdict["aha_time_to_trl_best_s"] / trial_verdict["trl_time_to_best_s"]


def summarize_trials(trials: list[dict]) -> dict | None:
    """The median over trials of `trial_ratio` (JSON null for "never": inf), and the per-trial ratios."""
    ratios = [trial_ratio(t["verdict"]) for t in trials]
    if any(r is None for r in ratios):
        return None
    median = statistics.median(ratios)
    return {
        "ratios": [None if math.isinf(r) else r for r in ratios],
        "median_ratio": None if math.isinf(median) else median,
        "step_time_ratio": statistics.median(
            t["runs"]["aha"]["step_s_median"] / t["runs"]["trl"]["step_s_median"] for t in trials
        ),
    }


def summarize(record: RunRecord) -> dict:
    return {
        "steps": len(record.step_s),
        "step_s_median": statistics.median(record.step_s),
        "generate_s_median": statistics.median(record.generate_s) if record.generate_s else None,
        "train_time_s": sum(record.step_s),
        "peak_rss_gb": record.peak_rss_bytes / 1e9,
        "wall_s": record.wall_s,
        "other_cores": record.other_cores,
        "attempts": record.attempts,
        "evals": record.evals,
        "time_to_accuracy_s": {str(a): time_to(record, a) for a in THRESHOLDS},
        "step_s": record.step_s,
        "settings_used": record.settings_used,
    }


def run_benchmark(args: argparse.Namespace) -> dict:
    import torch
    from _demo_checkpoint import REWARD, demo_grpo_settings, demo_sft_checkpoint

    torch.set_num_threads(args.threads)  # the SFT stage runs in this process

    started = time.time()
    load_start = load_average()
    machine = machine_description()
    with tempfile.TemporaryDirectory(prefix="aha-tta-") as tmp:
        tmp_dir = Path(tmp)
        checkpoint = demo_sft_checkpoint(
            tmp_dir / "sft", quick=args.quick, seed=args.seed, given=args.checkpoint
        )
        grpo = demo_grpo_settings(args.steps)
        settings = GRPOBenchSettings(
            model_dir=str(checkpoint.path),
            train_prompts=checkpoint.train_prompts,
            eval_prompts=checkpoint.eval_prompts,
            reward=REWARD,
            steps=args.steps,
            prompts_per_step=grpo.prompts_per_step,
            group_size=grpo.group_size,
            max_new_tokens=grpo.max_new_tokens,
            temperature=grpo.temperature,
            lr=grpo.lr,
            warmup_steps=grpo.warmup_steps,
            beta=grpo.beta,
            loss_agg=grpo.loss_agg,
            seed=args.seed,
            threads=args.threads,
            eval_every=args.eval_every,
            eval_prompts_used=min(args.eval_prompts, len(checkpoint.eval_prompts)),
        )
        trials = []
        for rl_seed in args.rl_seeds:
            runs = {}
            for tool in args.tools:
                print(
                    f"GRPO seed {rl_seed}, {tool}: {args.steps} steps from the SFT checkpoint",
                    file=sys.stderr,
                )
                runs[tool] = run_when_quiet(
                    tool,
                    replace(settings, seed=rl_seed),
                    tmp_dir / f"seed-{rl_seed}" / tool,
                    args.quiet_cores,
                    args.quiet_timeout,
                    args.retries,
                )
                print(f"  accuracy {[round(e['accuracy'], 3) for e in runs[tool].evals]}", file=sys.stderr)
            trials.append(
                {
                    "rl_seed": rl_seed,
                    "runs": {tool: summarize(record) for tool, record in runs.items()},
                    "verdict": verdict(runs),
                }
            )
    return {
        "benchmark": "time_to_accuracy",
        "command": " ".join(["python bench/time_to_accuracy.py", *sys.argv[1:]]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "duration_s": time.time() - started,
        "machine": machine,
        "load_average_start": load_start,
        "load_average_end": load_average(),
        "checkpoint": checkpoint.info,
        "settings": {
            "reward": "the demo's gold checker (exact final answer), the same function in both",
            "group_size": settings.group_size,
            "prompts_per_step": settings.prompts_per_step,
            "lr": settings.lr,
            "warmup_steps": settings.warmup_steps,
            "beta": settings.beta,
            "temperature": settings.temperature,
            "loss": f"{settings.loss_agg} (TRL loss_type={AHA_TO_TRL_LOSS[settings.loss_agg]})",
            "max_new_tokens": settings.max_new_tokens,
            "eval_every": settings.eval_every,
            "eval_prompts": settings.eval_prompts_used,
            "threads": args.threads,
        },
        "trials": trials,
        "summary": summarize_trials(trials),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=100, help="GRPO steps for each tool")
    parser.add_argument("--eval-every", type=int, default=5, help="held-out evaluation every N steps")
    parser.add_argument("--eval-prompts", type=int, default=200, help="held-out problems per evaluation")
    parser.add_argument(
        "--checkpoint", type=Path, default=None, help="an SFT checkpoint to start from instead"
    )
    parser.add_argument("--tools", nargs="+", default=list(TOOLS), choices=TOOLS, help="in this order")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="seed of the demo's problems and SFT stage")
    parser.add_argument(
        "--rl-seeds",
        type=int,
        nargs="+",
        default=[0, 1, 2],
        help="GRPO seeds (sampling, prompt order): one trial per seed from the same SFT checkpoint",
    )
    add_quiet_machine_options(parser, retries=1)
    parser.add_argument("--out", type=Path, default=None, help=f"results JSON (default {DEFAULT_OUT})")
    parser.add_argument("--no-report", action="store_true", help="do not regenerate docs/benchmarks.md")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a tiny SFT and one GRPO step; results go to --out (or a temp file)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.eval_every, args.eval_prompts, args.no_report, args.quiet_cores = 1, 1, 8, True, 0.0
        args.rl_seeds = args.rl_seeds[:1]
    if args.steps < 1 or args.eval_every < 1:
        parser.error("need --steps >= 1 and --eval-every >= 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    results = run_benchmark(args)
    out = args.out or (
        Path(tempfile.mkdtemp(prefix="aha-tta-")) / "time_to_accuracy.json" if args.quick else DEFAULT_OUT
    )
    import report

    report.save_results(results, out, regenerate_page=not args.no_report)
    if (summary := results["summary"]) is not None:
        print(
            f"aha's time to TRL's best / TRL's: {summary['ratios']} (median {summary['median_ratio']}); "
            f"step time ratio {summary['step_time_ratio']:.2f}"
        )
    return results


if __name__ == "__main__":
    main()
