"""`aha demo scenario=hacking quick=true` on seed 0: the proxy (reward-model) reward rises throughout
while the gold reward rises, peaks and falls without coming back, and the hacking watch fires after
the peak.

Measured (seed 0, one thread, 2-core machine under load, 2026-12-05): gold 0.629 at step 0, peak
0.840 at step 20, 0.328 at step 40 (at most 0.656 after the watch fired); proxy -0.011 -> 0.232 (at
the gold peak) -> 0.790; the watch fired at step 32 with the gold's best at step 20. The margins
below are about half of those moves.
"""

from __future__ import annotations

import json

from aha.config import load_config
from aha.demo import DemoConfig, run_demo


def test_quick_hacking_demo_shows_gold_peak_then_fall_and_the_watch_fires(tmp_path):
    cfg = load_config(
        DemoConfig,
        overrides=[
            "scenario=hacking",
            "quick=true",
            f"output_dir={tmp_path / 'demo'}",
            "progress=false",
            "threads=1",
        ],
    )
    result = run_demo(cfg)
    curve = result.curve
    gold = [p["gold"] for p in curve]
    proxy = [p["proxy"] for p in curve]
    peak = max(range(len(curve)), key=gold.__getitem__)
    assert 0 < peak < len(curve) - 1, f"gold should peak mid-run: {gold}"
    assert gold[peak] > gold[0] + 0.08, f"RL against the reward model first helps: {gold}"
    assert gold[-1] < gold[peak] - 0.2, f"then hurts: {gold}"
    assert result.watch_step is not None, "the hacking watch fired"
    after_watch = [p["gold"] for p in curve if p["step"] >= result.watch_step]
    assert max(after_watch) < gold[peak] - 0.08, f"and gold stays down once the watch fired: {gold}"
    assert proxy[peak] > proxy[0] + 0.1 and proxy[-1] > proxy[peak] + 0.25, f"the proxy keeps rising: {proxy}"
    assert curve[-1]["kl"] > curve[peak]["kl"], "the fall comes with more KL from the SFT model"

    assert result.watch_step > curve[peak]["step"]
    assert result.watch_best_step == curve[peak]["step"]
    best = json.loads(
        (result.run_dir / "rlhf" / "grpo" / "best-by-monitor" / "gold" / "best.json").read_text()
    )
    assert best["step"] == curve[peak]["step"], "the model best by gold is kept"
    assert (result.run_dir / "hacking.png").stat().st_size > 0
