"""bench/bf16_rollout_gap.py runs end to end (toy model and a 2-step SFT demo model) and reports a real gap.

Benchmarks are not tests: nothing here checks the size of the gap, only that it was measured.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_run_end_to_end(tmp_path):
    out = tmp_path / "gap.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bf16_rollout_gap.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["model"] for r in rows] == ["toy", "demo SFT"]
    for r in rows:
        assert r["tokens"] > 0
        # The bf16 copy really is rounded: some log-prob moves (a copy left in fp32 would give exactly 0).
        assert 0 < r["log_ratio_abs_mean"] <= r["log_ratio_abs_p99"] <= r["log_ratio_abs_max"]
        assert 0 <= r["outside_clip_share"] <= 1 and 0 <= r["argmax_differs_share"] <= 1
        assert r["kl_mean"] > -1e-9  # a KL divergence, up to float rounding
    assert "| demo SFT |" in proc.stdout
