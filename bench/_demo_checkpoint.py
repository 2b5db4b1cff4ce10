"""The `aha demo` starting point for bench/time_to_accuracy: its task files, its SFT checkpoint, its GRPO knobs.

Everything comes from the demo's own code (aha.demo): the "carry" scenario's problems and teacher, its
tiny model, its SFT stage and budget, and the GRPO settings `aha demo` itself uses, so the benchmark starts
from exactly the checkpoint a user of `aha demo` gets.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

SCENARIO = "carry"
REWARD = "aha.demo.tasks:gold_answer"  # the demo's gold checker, given to both tools by import path
QUICK_SFT_STEPS = 2  # --quick: enough to produce a checkpoint, not to learn anything


@dataclass
class DemoCheckpoint:
    path: Path  # HF save_pretrained directory
    train_prompts: list[dict]  # {"prompt", "answer"}
    eval_prompts: list[dict]  # held-out problems, never trained on
    info: dict  # what to print about it


@dataclass(frozen=True)
class DemoGRPOSettings:
    prompts_per_step: int
    group_size: int
    lr: float
    beta: float
    warmup_steps: int
    temperature: float
    loss_agg: str
    max_new_tokens: int


def demo_grpo_settings(steps: int) -> DemoGRPOSettings:
    """The knobs `aha demo` trains GRPO with (its config defaults and the scenario's completion length)."""
    from aha.demo.pipeline import DemoConfig
    from aha.demo.scenarios import SCENARIOS
    from aha.train.grpo_config import AlgoConfig
    from aha.train.rl_config import RolloutConfig

    grpo = DemoConfig().grpo
    return DemoGRPOSettings(
        prompts_per_step=grpo.prompts_per_step,
        group_size=grpo.group_size,
        lr=grpo.lr,
        beta=grpo.beta,
        warmup_steps=min(5, steps),  # as aha.demo.pipeline._grpo_config
        temperature=RolloutConfig().temperature,
        loss_agg=AlgoConfig().loss_agg,
        max_new_tokens=SCENARIOS[SCENARIO].max_new_tokens,
    )


def demo_sft_checkpoint(
    workdir: Path, *, quick: bool, seed: int = 0, given: Path | None = None
) -> DemoCheckpoint:
    """Write the demo's task files and train its SFT stage (or take `given`, an SFT model directory)."""
    from aha.demo.pipeline import DemoConfig, _create_model, _sft_config
    from aha.demo.scenarios import SCENARIOS, write_task_files
    from aha.train.sft import run_sft

    scenario = SCENARIOS[SCENARIO]
    budget = scenario.full
    cfg = DemoConfig(scenario=SCENARIO, seed=seed, progress=False)
    if quick:
        cfg.sft.steps = QUICK_SFT_STEPS
    files = write_task_files(scenario, workdir / "data", budget.heldout_size, seed)
    info = {"scenario": SCENARIO, "teacher": repr(scenario.teacher)}
    if given is not None:
        path = Path(given)
        info["description"] = f"given with --checkpoint: {path}"
    else:
        init_dir = workdir / "tiny-model"
        _create_model(init_dir, cfg.model, scenario, seed)  # exactly the demo's initial model
        t0 = time.perf_counter()
        path = run_sft(_sft_config(cfg, budget, init_dir, files.sft, workdir / "sft")).final_dir
        steps = cfg.sft.steps or budget.sft_steps
        info.update({"sft_steps": steps, "sft_seconds": time.perf_counter() - t0})
        info["description"] = (
            f"`aha demo` scenario '{SCENARIO}': {_parameters(path) / 1e6:.2f}M-parameter tiny Llama, "
            f"{steps} SFT steps on the teacher's demonstrations"
        )
    return DemoCheckpoint(path, _read_jsonl(files.grpo_train), _read_jsonl(files.heldout), info)


def _parameters(model_dir: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        return sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
