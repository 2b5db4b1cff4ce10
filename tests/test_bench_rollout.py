"""bench/rollout.py runs end to end (--quick: a toy model, one repeat) and writes well-formed results.

Benchmarks are not tests: nothing here checks speed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_run_end_to_end(tmp_path):
    out = tmp_path / "rollout.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "rollout.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| model | params | batch |" in proc.stdout
    report = json.loads(out.read_text())
    assert [r["scenario"] for r in report["results"]] == ["forced", "grpo"]
    forced, grpo = report["results"]
    assert (forced["model"], forced["batch"], forced["max_new_tokens"]) == ("toy", 8, 8)
    assert forced["native_tokens"] == forced["generate_tokens"] == [8 * 8]  # exactly the forced work
    assert 8 <= grpo["native_tokens"][0] <= 8 * 16 and 8 <= grpo["generate_tokens"][0] <= 8 * 16
    for r in (forced, grpo):
        native_rate = r["native_tokens"][0] / r["native_s"][0]
        generate_rate = r["generate_tokens"][0] / r["generate_s"][0]
        assert abs(r["native_tokens_per_s"] - native_rate) < 1e-6 * native_rate
        assert abs(r["speedup"] - native_rate / generate_rate) < 1e-9 * r["speedup"]
    assert report["settings"]["threads"] == 2 and report["omp_wait_policy"]

    sys.path.insert(0, str(ROOT / "bench"))
    import report as page

    text = page.write_report(out.parent, tmp_path / "benchmarks.md").read_text()
    assert "python bench/rollout.py --quick --out" in text
    assert "| forced | toy |" in text and "| grpo | toy |" in text
