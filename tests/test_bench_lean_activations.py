"""bench/lean_activations.py runs end to end (--quick: the toy model) and its ratios come from its rows.

Benchmarks are not tests: nothing here checks speed. The saving itself is tested in
test_models_lean_activations.py (a quarter less at least); here only that the script measured one.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_run_end_to_end(tmp_path):
    out = tmp_path / "lean.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "lean_activations.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    (row,) = json.loads(out.read_text())["rows"]
    assert row["model"] == "toy" and "| toy |" in proc.stdout
    saved, activations = row["saved_bytes"], row["activation_bytes"]
    for name in ("hf", "lean_torch_ops", "lean_compiled"):
        assert activations[name] == saved[name] - row["weight_bytes"] > 0
        assert len(row["seconds"][name]) == 2
        assert row["seconds_median"][name] == statistics.median(row["seconds"][name])
    assert activations["lean_torch_ops"] < activations["hf"]  # the lean modules save less
    assert row["activation_bytes_lean_over_hf"] == activations["lean_torch_ops"] / activations["hf"]
    medians = row["seconds_median"]
    assert row["time_lean_torch_ops_over_hf"] == medians["lean_torch_ops"] / medians["hf"]
    assert row["time_compiled_over_torch_ops"] == medians["lean_compiled"] / medians["lean_torch_ops"]
