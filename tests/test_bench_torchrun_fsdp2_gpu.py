"""bench/torchrun_fsdp2_gpu.py runs end to end under torchrun on the CPU (2 gloo processes, a tiny
shape) and reports what it measured; without CUDA its default (GPU) run refuses and says why."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "torchrun_fsdp2_gpu.py"


def test_the_cpu_smoke_run_trains_with_fsdp2_on_two_processes(tmp_path):
    out = tmp_path / "fsdp2.json"
    args = ["--device", "cpu", "--shape", "tiny", "--precision", "fp32", "--steps", "2", "--prompts", "4"]
    args += ["--group", "4", "--tokens", "8", "--workdir", str(tmp_path / "work"), "--out", str(out)]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [*torchrun, str(SCRIPT), *args], capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["world_size"] == 2 and report["parameters"] > 0
    assert report["losses_finite"] and report["loss_rows"] == 2
    assert report["step_s_median"] > 0
    assert report["weights_moved_share"] > 0.9  # the checkpoint gathered from the shards holds the update


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_it_refuses_to_run_on_cuda_without_a_gpu(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path / "x.json")], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "needs CUDA" in proc.stdout
    assert not (tmp_path / "x.json").exists()
