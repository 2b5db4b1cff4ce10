"""bench/decode_attention_cpu.py runs end to end (--quick) and its ratios come from its rows.

Benchmarks are not tests: nothing here checks speed. That the written-out attention computes what the
bf16 kernel computes is tested in test_rollout_llama_decode.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_run_end_to_end(tmp_path):
    out = tmp_path / "attention.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "decode_attention_cpu.py"),
            "--quick",
            "--threads",
            "1",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text())
    (row,) = result["rows"]
    assert row["threads"] == 1 and result["calls"] == 10
    per_call = row["seconds_per_call"]
    for name in ("sdpa_bf16", "sdpa_fp32", "aha_bf16"):
        assert len(row["seconds"][name]) == result["repeats"] == 2
        assert per_call[name] > 0
    assert row["sdpa_bf16_over_aha_bf16"] == per_call["sdpa_bf16"] / per_call["aha_bf16"]
    assert row["sdpa_bf16_over_sdpa_fp32"] == per_call["sdpa_bf16"] / per_call["sdpa_fp32"]
