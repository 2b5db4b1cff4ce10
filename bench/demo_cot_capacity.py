"""Why `aha demo scenario=cot` works: the direct answer is out of the tiny model's reach, the working is not.

The demo's tiny model (its scenario's size, initialisation, SFT optimiser and batch) is fine-tuned from
scratch on demonstrations of ONE kind only:
- direct: every demonstration answers at once (`0110...=` -> `1`), at the demo's SFT budget and at 4x it;
- worked: every demonstration writes the running parity first (`0110...=` -> `[0100...]1`), at 1x.
Each model is scored greedily on the demo's held-out problems. If direct-only SFT stays near chance (50%)
at 4x the budget while worked-only SFT is near 100% at 1x, the direct path fails for capacity or
learnability, not for want of training, and the scratchpad is the only way to the right answer.

    python bench/demo_cot_capacity.py                  # seeds 0 1 2, ~15 min on a quiet 2-core machine
    python bench/demo_cot_capacity.py --quick          # a few steps each: the test suite's smoke run

Writes results/demo_cot_capacity.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "demo_cot_capacity.json"
QUICK_STEPS = 3


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--multiples", type=float, nargs="+", default=[1.0, 4.0], help="direct SFT budgets")
    parser.add_argument("--workdir", type=Path, default=Path("runs/bench-demo-cot-capacity"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_STEPS} steps per run (smoke test)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    rows = []
    for seed in args.seeds:
        runs = [("direct", 0.0, m) for m in args.multiples] + [("worked", 1.0, 1.0)]
        for kind, share, multiple in runs:
            rows.append(_one_run(kind, share, multiple, seed, args))
            print(json.dumps(rows[-1]), flush=True)
    result = {"scenario": "cot", "quick": args.quick, "threads": args.threads, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(markdown_table(rows))
    return result


def _one_run(kind: str, share: float, multiple: float, seed: int, args) -> dict:
    """SFT from scratch on demonstrations that all (share=1) or never (share=0) show the working."""
    from aha.data.prompts import load_prompt_file
    from aha.demo.pipeline import REWARD, DemoConfig, _create_model, _sft_config
    from aha.demo.report import score_model
    from aha.demo.scenarios import SCENARIOS, write_task_files
    from aha.rewards.base import make_reward_specs
    from aha.train.sft import run_sft

    base = SCENARIOS["cot"]
    scenario = replace(base, teacher=replace(base.teacher, scratchpad_prob=share))
    budget = scenario.full
    steps = QUICK_STEPS if args.quick else round(budget.sft_steps * multiple)
    cfg = DemoConfig(scenario="cot", seed=seed, progress=False)
    cfg.sft.steps = steps
    work = args.workdir / f"seed{seed}-{kind}-{multiple:g}x"
    files = write_task_files(scenario, work / "data", budget.heldout_size, seed)
    _create_model(work / "tiny-model", cfg.model, scenario, seed)
    t0 = time.perf_counter()
    sft = run_sft(_sft_config(cfg, budget, work / "tiny-model", files.sft, work / "sft"), resume=True)
    seconds = time.perf_counter() - t0
    heldout = load_prompt_file(files.heldout)
    score = score_model(
        kind, sft.final_dir, heldout, make_reward_specs([REWARD]), scenario.max_new_tokens, 1, seed
    )
    last_loss = json.loads((work / "sft" / "metrics.jsonl").read_text().splitlines()[-1]).get("loss")
    return {
        "seed": seed,
        "demonstrations": kind,
        "budget_multiple": multiple,
        "sft_steps": steps,
        "final_train_loss": last_loss,
        "heldout_greedy_accuracy": score.greedy.accuracy,
        "heldout_greedy_scratchpad_share": score.greedy.scratchpad_share,
        "heldout_size": len(heldout),
        "sft_seconds": seconds,
    }


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| seed | demonstrations | SFT steps | final training loss | held-out greedy accuracy |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['seed']} | {r['demonstrations']} only | {r['sft_steps']} ({r['budget_multiple']:g}x) "
            f"| {r['final_train_loss']:.3f} | {100 * r['heldout_greedy_accuracy']:.1f}% |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
