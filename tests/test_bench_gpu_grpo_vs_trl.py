"""bench/gpu_grpo_vs_trl.py runs end to end on the CPU (--smoke: toy model, one step, aha and TRL each in
its own process) and refuses to run its real workload without CUDA. Nothing here checks speed."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_grpo_vs_trl.py"
HAS_TRL = importlib.util.find_spec("trl") is not None and importlib.util.find_spec("datasets") is not None


def test_the_cpu_smoke_run_measures_aha_and_trl(tmp_path):
    out = tmp_path / "gpu.json"
    runs = ["aha", "trl"] if HAS_TRL else ["aha"]
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--runs", *runs, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    data = json.loads(out.read_text())
    assert data["errors"] == {} and set(data["runs"]) == set(runs)
    for run in data["runs"].values():
        assert run["completion_lengths"] == [8.0]  # min_new_tokens forced the exact length in both tools
        assert run["step_s_median"] > 0 and run["generate_s_median"] > 0
    if HAS_TRL:
        assert data["runs"]["aha"]["step_over_trl"] > 0
    assert "| run | s/step |" in proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_it_refuses_to_run_without_cuda(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path / "x.json")], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "needs CUDA" in proc.stdout
    assert not (tmp_path / "x.json").exists()
