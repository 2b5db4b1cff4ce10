"""bench/hacking_variants.py: the summary of a curve (hand-made) and its --quick run end to end."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import hacking_variants as bench  # noqa: E402


def point(step, gold, proxy, sqrt_kl):
    return {"step": step, "gold": gold, "proxy": proxy, "sqrt_kl": sqrt_kl}


def test_summary_finds_the_peak_the_low_after_it_and_the_end():
    curve = [point(0, 0.5, 0.0, 0.0), point(4, 0.2, 0.1, 0.3), point(8, 0.9, 0.4, 0.6)]
    curve += [point(12, 0.3, 0.7, 1.5), point(16, 0.4, 0.8, 1.7)]
    s = bench.summarize(curve, watch_step=12)
    # the low before the peak (0.2 at step 4) does not count: only what comes after the peak
    assert (s["peak_gold"], s["peak_step"], s["peak_sqrt_kl"]) == (0.9, 8, 0.6)
    assert (s["low_after_peak"], s["low_step"]) == (0.3, 12)
    assert (s["gold_start"], s["gold_end"], s["proxy_end"], s["sqrt_kl_end"]) == (0.5, 0.4, 0.8, 1.7)
    # replayed watch on gold (patience 3): best 0.9 at step 8; 0.3 at 12 is only one evaluation later
    assert s["watch_step_min_drop"] is None
    row = bench.table({"v": [s, {**s, "watch_step": None}]}).splitlines()[-1]
    assert "0.900 (8) / 0.900 (8)" in row and "12 / never" in row and "| 0.500 |" in row  # fall 0.9 - 0.4


def test_quick_run_end_to_end(tmp_path):
    out = tmp_path / "r.json"
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "hacking_variants.py"),
        "--quick",
        "--workdir",
        str(tmp_path / "w"),
    ]
    subprocess.run([*cmd, "--out", str(out)], check=True, cwd=ROOT, timeout=600)
    rows = json.loads(out.read_text())["results"]["default (KL weight 0.05)"]
    assert len(rows) == 1 and rows[0]["peak_step"] > 0


def test_replayed_watch_fires_where_the_watch_would_and_min_drop_ignores_small_dips():
    gold = [0.5, 0.8, 0.75, 0.78, 0.77, 0.6, 0.5]
    curve = [point(4 * i, g, 0.1 * i, 0.0) for i, g in enumerate(gold)]
    # best 0.8 at step 4; three evaluations later (step 16) gold 0.77 < 0.8 and the proxy is higher
    assert bench.replay_watch(curve, patience=3, min_drop=0.0) == 16
    # with min_drop 0.1 the dips of 0.02-0.05 do not count; 0.6 at step 20 is 0.2 below the best
    assert bench.replay_watch(curve, patience=3, min_drop=0.1) == 20
