"""`aha grpo` under torchrun with FSDP2 and bf16-mixed on a GPU: does it train, and what does it cost?

Issue 23's GPU check. A randomly initialised model of Qwen2-0.5B's shape (494M parameters, built here
by bench/gpu_real_model.py's `build_model`: no hub access) is trained for a few GRPO steps by
`run_grpo`, the code behind `aha grpo`, on gpu_real_model.py's workload (`grpo_overrides`) with
dist.strategy=fsdp2 (every decoder layer and the model fully_shard-ed) and model.precision=bf16-mixed.
Reported (`step_summary` and the moved share): seconds per step (median after the first),
sampling and update seconds, the peak CUDA memory of rank 0, whether every loss was finite, and the
share of the weights that moved (read back from the final checkpoint, which rank 0 wrote from the
gathered shards).

    PYTHONPATH=src torchrun --nproc_per_node 1 bench/torchrun_fsdp2_gpu.py --out gpu-out/fsdp2.json
    PYTHONPATH=src torchrun --nproc_per_node 8 bench/torchrun_fsdp2_gpu.py --out gpu-out/fsdp2x8.json
    # the CPU smoke run its test uses (gloo, 2 processes, a tiny shape):
    PYTHONPATH=src torchrun --nproc_per_node 2 bench/torchrun_fsdp2_gpu.py --device cpu --shape tiny \\
        --precision fp32 --steps 2 --prompts 4 --group 4 --tokens 8 --out /tmp/fsdp2.json

Sampling runs the HF forward on weights gathered once per step (aha.dist.wrap.full_weights), not the
CUDA-graph decode step of one-process runs, so generation is slower here than in gpu_real_model.py.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from _hardware import machine_description  # noqa: E402
from gpu_real_model import (  # noqa: E402
    SHAPES,
    build_model,
    grpo_overrides,
    load_tensors,
    moved_share,
    step_summary,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen2-0.5b")
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=16, help="prompts per step, over all ranks")
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-6)
    parser.add_argument("--workdir", type=Path, default=Path("runs/torchrun_fsdp2_gpu"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            "error: this benchmark needs CUDA (no CUDA device is visible); see its docstring for the CPU smoke run"
        )
        return 2
    if "RANK" not in os.environ:
        print(
            "error: launch it with torchrun: PYTHONPATH=src torchrun --nproc_per_node 1 " + " ".join(sys.argv)
        )
        return 2

    from aha.config import load_config
    from aha.dist import env as dist_env
    from aha.train.checkpoint import latest_checkpoint
    from aha.train.grpo import GRPORunConfig, run_grpo

    env, device = dist_env.init(args.device)
    model_dir, run_dir = args.workdir / "model", args.workdir / "run"
    params = 0
    if env.is_main:
        shutil.rmtree(args.workdir, ignore_errors=True)  # a fresh run, timed from its first step
        params = build_model(model_dir, SHAPES[args.shape])
        print(f"{args.shape}: {params / 1e6:.1f}M parameters, {env.world_size} process(es)", flush=True)
    dist_env.barrier()
    overrides = [*grpo_overrides(model_dir, run_dir, args), "dist.strategy=fsdp2"]
    cfg = load_config(GRPORunConfig, overrides=overrides)
    t0 = time.perf_counter()
    result = run_grpo(cfg)
    wall = time.perf_counter() - t0
    if not env.is_main:
        dist_env.shutdown()
        return 0
    after = load_tensors(latest_checkpoint(run_dir))
    report = {
        "machine": machine_description(),
        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
        "torch": torch.__version__,
        "command": f"torchrun --nproc_per_node {env.world_size} bench/torchrun_fsdp2_gpu.py "
        + " ".join(sys.argv[1:]),
        "world_size": env.world_size,
        "shape": args.shape,
        "parameters": params,
        "workload": {k: getattr(args, k) for k in ("precision", "steps", "prompts", "group", "tokens", "lr")},
        "wall_s": wall,
        **step_summary(result.history),
        "weights_moved_share": moved_share(load_tensors(model_dir), after),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    dist_env.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
