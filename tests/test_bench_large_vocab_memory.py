"""bench/large_vocab_memory.py runs end to end (--quick: a small CPU model) and writes its result rows.

Benchmarks are not tests: the memory numbers come from the CUDA run; this only checks the script works."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_run_end_to_end(tmp_path):
    out = tmp_path / "vocab.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "large_vocab_memory.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert [r["checkpointing"] for r in result["rows"]] == [False, True]
    for row in result["rows"]:
        assert row["chunked"]["seconds"] > 0 and row["full-logits"]["seconds"] > 0
        assert row["logprobs_max_abs_diff"] < 1e-4  # float32 model: the two paths agree to rounding
    assert result["no_grad_passes"]["rows_per_pass_chunked"] >= 1
