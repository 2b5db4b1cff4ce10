"""Math answer checks in parallel: one math-verify child vs a pool of them, on GSM8K-style completions.

The batch: `--groups` GSM8K test problems x `--group-size` completions each, every completion ending
in an answer that needs math-verify (plain numbers are compared in-process and would measure nothing):
the gold N written as a distinct fraction (36/2 for 18, 54/3, ...) or a wrong one, so no two answers
of a group are the same check. Two workloads:

- parse-bound: those answers, `--timeout` 2 s each (none comes near it);
- timeout-bound: `--hard` answers per batch that no checker finishes (a power tower), each costing
  the full time limit: the case where one child made a group wait (checks x limit).

Each pool size is timed `--repeats` times, interleaved, after a warm-up that starts its children
(their start-up, ~1-2 s each for sympy, is paid once per process and not in the timings). The speed-up
of parse-bound work is capped by the CPU cores; waiting out time limits is not. Writes
bench/results/math_check_pool.json.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from _common_timing import median, time_interleaved  # noqa: E402
from _hardware import machine_description  # noqa: E402

from aha.rewards.math_answer import MathAnswerReward  # noqa: E402

GSM8K = ROOT / "tests" / "data" / "gsm8k" / "test.jsonl.gz"
DEFAULT_OUT = ROOT / "bench" / "results" / "math_check_pool.json"
POWER_TOWER = "10^{{10^{{10^{{{}}}}}}}"  # math-verify cannot finish comparing these: the time limit ends them


def gsm8k_batch(groups: int, group_size: int, hard: int) -> tuple[list[str], list[str]]:
    """(completions, gold answers): each group's answers distinct fractions, half of them equal to N."""
    with gzip.open(GSM8K, "rt") as f:
        rows = [json.loads(line) for _, line in zip(range(groups), f, strict=False)]
    completions, golds = [], []
    for row in rows:
        gold = row["answer"].rpartition("####")[2].strip().replace(",", "")
        n = int(float(gold))
        for k in range(2, group_size + 2):
            numerator = n * k if k % 2 == 0 else n * k + 1  # even k: right, odd k: wrong
            completions.append(f"Working it out step by step.\n#### \\frac{{{numerator}}}{{{k}}}")
            golds.append(gold)
    for i in range(hard):
        completions[i * len(completions) // max(hard, 1)] = (
            f"So the answer is\n#### {POWER_TOWER.format(10 + i)}"
        )
    return completions, golds


def measure(
    workers: list[int], groups: int, group_size: int, hard: int, timeout_s: float, repeats: int
) -> dict:
    completions, golds = gsm8k_batch(groups, group_size, hard)
    prompts = [""] * len(completions)
    rewards = {w: MathAnswerReward(gold_marker="####", timeout_s=timeout_s, check_workers=w) for w in workers}
    warm = gsm8k_batch(1, 2, 0)

    def run(w: int):
        return lambda: rewards[w](prompts, completions, answer=golds)

    seconds = time_interleaved(
        {str(w): run(w) for w in workers},
        repeats,
        warmups={str(w): (lambda w=w: rewards[w](["", ""], warm[0], answer=warm[1])) for w in workers},
    )
    results = [rewards[w](prompts, completions, answer=golds) for w in workers]
    if any(list(r) != list(results[0]) for r in results):
        raise AssertionError("pool sizes disagree on the scores: the pool must change timing only")
    first = results[0]
    return {
        "checks": len(completions),
        "hard": hard,
        "timeout_s": timeout_s,
        "correct": sum(s == 1.0 for s in first),
        "timeouts": first.metrics["timeouts"],
        "seconds": {w: median(seconds[str(w)]) for w in workers},
        "speedup_vs_1": {w: median(seconds[str(workers[0])]) / median(seconds[str(w)]) for w in workers},
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1, 2, 4], help="pool sizes; the first is the baseline"
    )
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument(
        "--hard", type=int, default=8, help="answers that run into the time limit (second workload)"
    )
    parser.add_argument("--timeout", type=float, default=2.0, help="per-check time limit, seconds")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    rows = {
        "parse-bound": measure(args.workers, args.groups, args.group_size, 0, args.timeout, args.repeats),
        "timeout-bound": measure(args.workers, 1, args.hard, args.hard, args.timeout, args.repeats),
    }
    lines = [
        "| workload | checks | " + " | ".join(f"{w} worker(s) s" for w in args.workers) + " | speed-up |"
    ]
    lines.append("|---" * (len(args.workers) + 3) + "|")
    for name, row in rows.items():
        times = " | ".join(f"{row['seconds'][w]:.2f}" for w in args.workers)
        best = max(args.workers, key=lambda w: row["speedup_vs_1"][w])
        lines.append(f"| {name} | {row['checks']} | {times} | {row['speedup_vs_1'][best]:.2f}x ({best}) |")
    table = "\n".join(lines)
    print(table)
    result = {
        "command": " ".join(["python bench/math_check_pool.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine_description(),
        "load_average": os.getloadavg(),
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
