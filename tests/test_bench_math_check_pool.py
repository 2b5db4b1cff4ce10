"""bench/math_check_pool.py runs end to end on a small batch and reports what it checked.

Benchmarks are not tests: nothing here checks the speed-up, only that the work measured is the work asked
for (every power tower ran into the limit; half the fractions are right) and that pool sizes agree.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_small_run_end_to_end(tmp_path):
    out = tmp_path / "pool.json"
    args = ["--groups", "1", "--group-size", "6", "--hard", "2", "--timeout", "0.5", "--repeats", "1"]
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "math_check_pool.py"),
            *args,
            "--workers",
            "1",
            "2",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = json.loads(out.read_text())["rows"]
    assert rows["parse-bound"]["checks"] == 6 and rows["parse-bound"]["correct"] == 3
    assert rows["timeout-bound"]["timeouts"] == 2
    assert set(rows["timeout-bound"]["seconds"]) == {"1", "2"}
