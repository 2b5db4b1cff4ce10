"""bench/grpo_vs_trl.py runs end to end (one step of a toy model with each tool), and its FLOPs count is right.

Benchmarks are not tests: nothing here checks speed. TRL is the optional `bench` extra; without it the end
to end test runs aha's side only.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from _flops import LlamaShape, decode_projection_shapes, forward_flops, grpo_step_flops  # noqa: E402
from _grpo_runners import RunRecord  # noqa: E402
from _hardware import _bf16_gemm_step, memory_allocator  # noqa: E402
from grpo_vs_trl import summarize_size  # noqa: E402


def test_forward_flops_by_hand():
    # h=4, 1 layer, 2 heads (kv 2 -> kv_dim 4), I=8, V=10; 3 positions, logits at 2 of them.
    # per token: projections 2*4*(2*4 + 2*4) = 128, MLP 2*3*4*8 = 192 -> 320; x 3 positions = 960
    # attention 4*4 * (1+2+3) = 96; LM head 2*4*10*2 = 160; total 960 + 96 + 160 = 1216
    shape = LlamaShape(hidden=4, layers=1, heads=2, kv_heads=2, intermediate=8, vocab=10)
    assert forward_flops(shape, positions=3, logit_positions=2) == 1216


def test_grpo_step_is_generation_plus_four_teacher_forced_forwards():
    shape = LlamaShape(hidden=4, layers=1, heads=2, kv_heads=2, intermediate=8, vocab=10)
    # P=2, C=2: generation = forward over 3 positions, logits at 2 (1216, above); teacher-forced over 4:
    # 320*4 + 4*4*(1+2+3+4) + 160 = 1280 + 160 + 160 = 1600; per sequence 1216 + 4*1600 = 7616; x 3 sequences
    flops = grpo_step_flops(shape, sequences=3, prompt_len=2, completion_len=2)
    assert (flops.generation, flops.training, flops.total) == (3 * 1216, 3 * 4 * 1600, 3 * 7616)


def test_decode_projection_shapes_by_hand():
    # h=8, 4 heads of 2 with 2 KV heads -> kv_dim 4; q/k/v fused: 8 + 2*4 = 16 rows; gate/up fused: 2*6.
    shape = LlamaShape(hidden=8, layers=2, heads=4, kv_heads=2, intermediate=6, vocab=11)
    layer = [(16, 8), (8, 8), (12, 8), (8, 6)]
    assert decode_projection_shapes(shape) == layer * 2 + [(11, 8)]


def test_the_bf16_decode_rate_times_the_product_the_kernel_computes():
    """The bf16 decode matmul rate (issue 24's attainable step with bf16 rollouts) times MKL's
    gemm_bf16bf16f32 called as the kernel calls it: its output is x @ W.T. Products of bf16 values are
    exact in float32, so only the order of the float32 sums differs: k terms, each sum within k * 2^-24
    of the sum of magnitudes."""
    import torch
    from helpers.kernels import require_bf16_decode_kernel

    require_bf16_decode_kernel()
    torch.manual_seed(0)
    rows, k = 5, 64
    weights = [torch.randn(16, k).bfloat16(), torch.randn(24, k).bfloat16()]
    x = torch.randn(rows, k).bfloat16()
    step = _bf16_gemm_step(weights, {k: x}, rows)
    step()
    got = step.keep[: rows * 24].view(24, rows).t()  # column-major [rows, features]: the last product
    expected = x.double() @ weights[1].double().t()
    bound = k * 2.0**-24 * (x.double().abs() @ weights[1].double().abs().t())
    assert ((got.double() - expected).abs() <= bound).all()


def test_the_allocator_is_named_with_its_tuning(monkeypatch):
    # Peak RSS depends on the malloc as much as on the tool, so the report names it.
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.delenv("MALLOC_CONF", raising=False)
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=1048576")
    assert memory_allocator().endswith("malloc GLIBC_TUNABLES=glibc.malloc.mmap_threshold=1048576")
    monkeypatch.delenv("GLIBC_TUNABLES")
    monkeypatch.setenv("LD_PRELOAD", "/opt/lib/libfoo.so /usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
    monkeypatch.setenv("MALLOC_CONF", "dirty_decay_ms:-1")
    assert memory_allocator() == "libjemalloc.so.2 MALLOC_CONF=dirty_decay_ms:-1"


def _planted(tool: str, step_s: list[float], rss_gb: float) -> RunRecord:
    return RunRecord(
        tool, step_s, [s / 2 for s in step_s], [8.0] * len(step_s), peak_rss_bytes=int(rss_gb * 1e9)
    )


def test_ratios_come_from_the_measured_rows():
    """Planted rows with known step times (the first of each run is warm-up) give known ratios: per repeat
    (run i of one tool against run i of the other), then their median and range."""
    records = {
        "aha": [_planted("aha", [9.0, 1.0, 3.0, 2.0], 1.0), _planted("aha", [9.0, 4.0, 4.0, 4.0], 1.5)],
        "aha_mb": [
            _planted("aha_mb", [9.0, 3.0, 3.0, 3.0], 0.5),
            _planted("aha_mb", [9.0, 6.0, 6.0, 6.0], 0.6),
        ],
        "trl": [_planted("trl", [9.0, 4.0, 4.0, 4.0], 2.0), _planted("trl", [9.0, 5.0, 5.0, 5.0], 3.0)],
        "floor": [_planted("floor", [9.0, 1.0, 1.0, 1.0], 0.1), _planted("floor", [9.0, 2.0, 2.0, 2.0], 0.1)],
    }
    out = summarize_size(records, warmup=1, flops=4e9, peak_gflops=10.0, tokens_per_step=64, attainable_s=1.5)
    # aha's run medians: median(1, 3, 2) = 2 and 4; TRL's: 4 and 5; the floor's: 1 and 2; aha_mb's: 3, 6.
    assert out["aha"]["step_s_per_run"] == [2.0, 4.0] and out["aha"]["step_s_median"] == 3.0
    assert out["ratio_aha_over_trl"] == {"median": 0.65, "min": 0.5, "max": 0.8, "per_repeat": [0.5, 0.8]}
    assert out["ratio_aha_over_floor"]["per_repeat"] == [2.0, 2.0]
    assert out["ratio_floor_over_trl"]["per_repeat"] == [0.25, 0.4]
    assert out["ratio_aha_mb_over_trl"]["per_repeat"] == [0.75, 1.2]
    # peaks: aha 1.5 GB, aha_mb 0.6 GB, TRL 3 GB
    assert out["rss_ratio_aha_over_trl"] == 0.5 and out["rss_ratio_aha_mb_over_trl"] == pytest.approx(0.2)
    assert out["attainable_over_trl"] == 1.5 / 4.5  # TRL's median step: median(4, 5)
    assert out["aha"]["fraction_of_peak"] == 4e9 / (3.0 * 10.0 * 1e9)
    assert out["aha"]["completion_tokens_per_s"] == 64 / 3.0
    assert out["aha"]["generate_s_median"] == 1.5  # halves of the steps: run medians 1 and 2


def test_quick_run_end_to_end(tmp_path):
    # TRL is the optional bench extra (CI installs only dev): without it only aha's side runs.
    tools = (
        ["aha", "aha_mb", "trl", "floor"] if importlib.util.find_spec("trl") else ["aha", "aha_mb", "floor"]
    )
    out = tmp_path / "grpo_vs_trl.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "grpo_vs_trl.py"),
            "--quick",
            "--out",
            str(out),
            "--tools",
            *tools,
            "--aha-micro-batch",
            "8",  # the toy batch is 4 groups of 8: one group per pass
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    data = json.loads(out.read_text())
    result = data["sizes"]["toy"]
    # Rates measured before and after the runs; the better of the two is the denominator.
    assert len(data["matmul_peak"]["measured_gflops"]) == 2
    assert data["matmul_peak"]["gflops"] == max(data["matmul_peak"]["measured_gflops"])
    assert result["decode_matmul_gflops"] == max(result["decode_matmul_gflops_measured"])
    for tool in tools:
        assert result[tool]["completion_lengths"] == [8.0], f"{tool} did not generate exactly 8 tokens"
        assert result[tool]["step_s_median"] > 0 and result[tool]["peak_rss_gb"] > 0.05
        assert 0 < result[tool]["fraction_of_peak"] < 1
    # The summary's numbers are computed from the rows the runs recorded (warm-up steps left out).
    warmup = data["settings"]["warmup_steps"]
    for tool in tools:
        runs = result[tool]["step_s_all"]
        assert result[tool]["step_s_per_run"] == [statistics.median(steps[warmup:]) for steps in runs]
    pairs = [("aha", "floor")] + (
        [("aha", "trl"), ("aha_mb", "trl"), ("floor", "trl")] if "trl" in tools else []
    )
    for a, b in pairs:
        expected = [
            x / y for x, y in zip(result[a]["step_s_per_run"], result[b]["step_s_per_run"], strict=True)
        ]
        assert result[f"ratio_{a}_over_{b}"]["per_repeat"] == expected
    assert (
        result["decode_matmul_gflops"] > 0
        and 0 < result["attainable_step_s"] < result["aha"]["step_s_median"]
    )
    if "trl" in tools:
        assert (
            result["rss_ratio_aha_mb_over_trl"]
            == result["aha_mb"]["peak_rss_gb"] / result["trl"]["peak_rss_gb"]
        )
        assert result["attainable_over_trl"] == result["attainable_step_s"] / result["trl"]["step_s_median"]

    import report

    text = report.write_report(out.parent, tmp_path / "benchmarks.md").read_text()
    assert "python bench/grpo_vs_trl.py --quick" in text
    assert f"- Memory allocator (both tools): {data['machine']['allocator']}" in text
    for tool in tools:
        assert f"| toy | 0.02M | {report.TOOL_NAMES[tool]} |" in text
