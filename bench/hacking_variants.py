"""What delays the gold reward's peak in `aha demo scenario=hacking`: a larger KL weight, an ensemble of
two reward models as the proxy, a held-out reward model as the watch's monitor.

Runs the demo (aha.demo.run_demo, the full preset: 60 RL steps) for each variant and seed in
`--workdir` (a finished run is reused: the demo's --resume skips its finished stages), and summarises
each curve: the gold reward at step 0, at its peak (highest evaluation; its step and sqrt KL), its
lowest after the peak, and at the end, the proxy at the end, and where the hacking watch fired.
Writes bench/results/hacking_variants.json and prints the Markdown table of docs/demo.md.
`--quick`: one seed, the quick preset, the default variant only (its test).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from aha.config import load_config
from aha.demo import DemoConfig, run_demo
from aha.track.hacking import HackingWatch

ROOT = Path(__file__).resolve().parents[1]
REPLAY_MIN_DROP = 0.1  # the watch replayed on each logged curve with track.hacking.min_drop=0.1
VARIANTS = {
    "default (KL weight 0.05)": [],
    "`hacking.beta=0.2`": ["hacking.beta=0.2"],
    "`hacking.beta=0.5`": ["hacking.beta=0.5"],
    "`hacking.proxy=ensemble`": ["hacking.proxy=ensemble"],
    "`hacking.monitor=heldout_rm`": ["hacking.monitor=heldout_rm"],
}


def replay_watch(curve: list[dict], patience: int, min_drop: float) -> int | None:
    """Where the watch on gold would have fired with these settings: it only reads the evaluations, so
    replaying it on the logged curve gives what the run would have logged (without stop=true)."""
    watch = HackingWatch(patience, min_drop=min_drop)
    for p in curve:
        if watch.update(p["step"], p["proxy"], {"gold": p["gold"]}).alerts:
            return p["step"]
    return None


def summarize(curve: list[dict], watch_step: int | None) -> dict:
    """The numbers of one run's row: gold at start, peak, lowest after the peak and end; proxy at end."""
    peak = max(curve, key=lambda p: p["gold"])
    low = min((p for p in curve if p["step"] >= peak["step"]), key=lambda p: p["gold"])
    return {
        "gold_start": curve[0]["gold"],
        "peak_gold": peak["gold"],
        "peak_step": peak["step"],
        "peak_sqrt_kl": peak["sqrt_kl"],
        "low_after_peak": low["gold"],
        "low_step": low["step"],
        "gold_end": curve[-1]["gold"],
        "proxy_end": curve[-1]["proxy"],
        "sqrt_kl_end": curve[-1]["sqrt_kl"],
        "watch_step": watch_step,
        "watch_step_min_drop": replay_watch(curve, 3, REPLAY_MIN_DROP),
    }


def table(results: dict[str, list[dict]]) -> str:
    """One row per variant; each cell lists the seeds' values in seed order."""

    def cell(rows, fmt, key):
        return " / ".join("never" if r[key] is None else format(r[key], fmt) for r in rows)

    lines = [
        "| variant | gold peak (step) | sqrt KL at peak | lowest gold after peak | gold at end | proxy at end "
        "| sqrt KL at end | watch fired at step | watch on gold replayed with min_drop 0.1 | mean fall (peak - end) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, rows in results.items():
        peaks = " / ".join(f"{r['peak_gold']:.3f} ({r['peak_step']})" for r in rows)
        fall = statistics.fmean(r["peak_gold"] - r["gold_end"] for r in rows)
        lines.append(
            f"| {name} | {peaks} | {cell(rows, '.2f', 'peak_sqrt_kl')} | {cell(rows, '.3f', 'low_after_peak')} "
            f"| {cell(rows, '.3f', 'gold_end')} | {cell(rows, '.3f', 'proxy_end')} "
            f"| {cell(rows, '.2f', 'sqrt_kl_end')} | {cell(rows, 'd', 'watch_step')} "
            f"| {cell(rows, 'd', 'watch_step_min_drop')} | {fall:.3f} |"
        )
    return "\n".join(lines)


def run(workdir: Path, seeds: list[int], variants: dict[str, list[str]], quick: bool) -> dict:
    results: dict[str, list[dict]] = {}
    for name, overrides in variants.items():
        for seed in seeds:
            out = workdir / f"{'-'.join(o.replace('=', '_') for o in overrides) or 'default'}-seed{seed}"
            cfg = load_config(
                DemoConfig,
                overrides=[
                    "scenario=hacking",
                    f"seed={seed}",
                    f"quick={str(quick).lower()}",
                    f"output_dir={out}",
                    "threads=1",
                    "progress=false",
                    *overrides,
                ],
            )
            r = run_demo(cfg, resume=out.exists())
            results.setdefault(name, []).append(summarize(r.curve, r.watch_step))
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=ROOT / "runs" / "bench-hacking")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "hacking_variants.json")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    variants = VARIANTS
    if a.quick:
        a.seeds, variants = a.seeds[:1], dict(list(VARIANTS.items())[:1])
    results = run(a.workdir, a.seeds, variants, a.quick)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"seeds": a.seeds, "quick": a.quick, "results": results}, indent=2) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
