"""`aha demo scenario=cot` on several seeds, one after another, against issue 21's targets.

Each seed runs the real command (`python -m aha demo scenario=cot seed=S ...`) in a child process, timed
by wall clock, with the load average before and after (the machine is shared: a loaded machine is
slower). Its scores.json and GRPO metrics give one table row and one line per panel of the figure:
held-out greedy accuracy, mean response length and scratchpad share against the RL step.

    python bench/demo_cot_seeds.py                     # seeds 0-4, ~2 min each on a quiet 2-core machine
    python bench/demo_cot_seeds.py --quick             # the quick preset (what the test suite runs)

Targets per seed (issue 21): after SFT the sampled scratchpad share <= 40%; after GRPO share >= 90%,
greedy length >= 1.8x SFT's, held-out greedy accuracy >= SFT's + 20 points; wall clock <= 300 s.
Writes results/demo_cot_seeds.json, docs/demo-cot-seeds.png, and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "demo_cot_seeds.json"
FIGURE = ROOT / "docs" / "demo-cot-seeds.png"
SHARE_KEY = "reward/gold_answer/scratchpad_share"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--workdir", type=Path, default=Path("runs/bench-demo-cot-seeds"))
    parser.add_argument("--quick", action="store_true", help="the quick preset")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--figure", type=Path, default=FIGURE)
    args = parser.parse_args(argv)

    rows, curves = [], {}
    for seed in args.seeds:
        row, history = _run_seed(seed, args)
        rows.append(row)
        curves[seed] = history
        print(json.dumps(row), flush=True)
    command = "aha demo scenario=cot seed=S" + (" quick=true" if args.quick else "")
    result = {"command": command, "quick": args.quick, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    plot_seeds(curves, args.figure, "aha demo scenario=cot" + (" quick=true" if args.quick else ""))
    print(markdown_table(rows))
    return result


def _command(seed: int, quick: bool, run_dir: Path) -> list[str]:
    cmd = [sys.executable, "-m", "aha", "demo", "scenario=cot", f"seed={seed}", f"output_dir={run_dir}"]
    return cmd + ["overwrite=true", "progress=false"] + (["quick=true"] if quick else [])


def _run_seed(seed: int, args) -> tuple[dict, list[dict]]:
    run_dir = args.workdir / f"seed{seed}"
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    subprocess.run(_command(seed, args.quick, run_dir), check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    scores = json.loads((run_dir / "scores.json").read_text())
    history = [json.loads(line) for line in (run_dir / "grpo" / "metrics.jsonl").read_text().splitlines()]
    sft, rl = scores["sft"], scores["rl"]
    row = {
        "seed": seed,
        "sft_share": sft["sampled"]["scratchpad_share"],
        "rl_share": rl["sampled"]["scratchpad_share"],
        "sft_greedy_length": sft["greedy"]["length_mean"],
        "rl_greedy_length": rl["greedy"]["length_mean"],
        "sft_greedy_accuracy": sft["greedy"]["accuracy"],
        "rl_greedy_accuracy": rl["greedy"]["accuracy"],
        "sft_scratchpad_accuracy": sft["sampled"]["scratchpad_accuracy"],
        "sft_direct_accuracy": sft["sampled"]["direct_accuracy"],
        "wall_seconds": wall,
        "demo_seconds": scores["seconds"],
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }
    row["targets_met"] = meets_targets(row)
    return row, history


def meets_targets(row: dict) -> bool:
    return (
        row["sft_share"] <= 0.40
        and row["rl_share"] >= 0.90
        and row["rl_greedy_length"] >= 1.8 * row["sft_greedy_length"]
        and row["rl_greedy_accuracy"] >= row["sft_greedy_accuracy"] + 0.20
        and row["wall_seconds"] <= 300
    )


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| seed | scratchpad share (sampled) SFT -> RL | greedy length SFT -> RL (tokens) "
        "| held-out greedy accuracy SFT -> RL | wall clock (load avg before/after) | targets |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['seed']} | {100 * r['sft_share']:.1f}% -> {100 * r['rl_share']:.1f}% "
            f"| {r['sft_greedy_length']:.1f} -> {r['rl_greedy_length']:.1f} "
            f"({r['rl_greedy_length'] / r['sft_greedy_length']:.1f}x) "
            f"| {100 * r['sft_greedy_accuracy']:.1f}% -> {100 * r['rl_greedy_accuracy']:.1f}% "
            f"| {r['wall_seconds']:.0f} s ({r['load_before']:.1f} / {r['load_after']:.1f}) "
            f"| {'met' if r['targets_met'] else 'MISSED'} |"
        )
    return "\n".join(lines)


def plot_seeds(curves: dict[int, list[dict]], out_png: Path, title: str) -> Path:
    """R1-Zero's two panels (accuracy, mean response length against the RL step) and the scratchpad share."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    panels = [
        ("reward/mean", "accuracy: training samples (solid), held-out greedy (dotted)"),
        ("completion/length_mean", "mean response length (tokens, training samples)"),
        (SHARE_KEY, "scratchpad share (training samples)"),
    ]
    for ax, (key, label) in zip(fig.subplots(1, 3), panels, strict=True):
        for seed, history in curves.items():
            line = _plot_key(ax, history, key, f"seed {seed}", "-")
            if key == "reward/mean":
                _plot_key(ax, history, "eval/accuracy", None, ":", line.get_color() if line else None)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("GRPO step")
        ax.grid(alpha=0.3)
        if key != "completion/length_mean":
            ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    return out_png


def _plot_key(ax, history: list[dict], key: str, label: str | None, style: str, color=None):
    points = [(r["step"], r[key]) for r in history if isinstance(r.get(key), (int, float))]
    if not points:
        return None
    steps, values = zip(*points, strict=True)
    return ax.plot(steps, values, style, label=label, color=color, marker="." if len(points) < 30 else None)[
        0
    ]


if __name__ == "__main__":
    main()
