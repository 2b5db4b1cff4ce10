"""bench/gpu_real_model.py runs end to end on the CPU with a tiny shape (its GPU numbers are in
docs/real-models.md): every setting trains what it should and reports what it measured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_real_model.py"


def test_the_cpu_smoke_run_trains_full_and_lora_settings(tmp_path):
    out = tmp_path / "gpu.json"
    args = ["--device", "cpu", "--shape", "tiny", "--precision", "fp32", "--steps", "2", "--prompts", "4"]
    args += ["--group", "4", "--tokens", "12", "--settings", "0", "3", "--out", str(out)]
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(out.read_text())
    full, lora = report["rows"]
    assert (full["lora"], full["checkpointing"]) == (False, False)
    assert (lora["lora"], lora["checkpointing"]) == (True, True)
    for row in (full, lora):
        assert row["losses_finite"] and row["loss_rows"] == 2
        assert row["step_s_median"] > 0
        # The digit-share reward varies within groups, so every trainable tensor gets a gradient; AdamW
        # then moves every element it touches (a few embedding rows may see no gradient: not all of them).
        assert row["trainable_moved_share"] > 0.9
    assert lora["adapter_tensors"] == 7 * 2  # one B per projection: 7 projections x 2 layers
    assert "| LoRA r=16 + checkpointing |" in proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_it_refuses_to_run_on_cuda_without_a_gpu(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path / "x.json")], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "needs CUDA" in proc.stdout
    assert not (tmp_path / "x.json").exists()
