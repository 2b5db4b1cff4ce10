"""What every training stage sets up the same way: run directory, seeds, model, optimizer, writers.

A stage's recipe (grpo.py, sft.py, ...) keeps only its own loop; everything here is shared so a new
stage does not copy it.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from aha.config import save_config
from aha.data.arithmetic import split_train_eval
from aha.data.prompts import PromptExample, PromptSampler, load_prompt_file
from aha.models.checkpointing import enable_gradient_checkpointing
from aha.models.lean_activations import use_lean_activations
from aha.models.loading import load_model, load_tokenizer
from aha.models.lora import apply_lora
from aha.rewards.base import RewardSpec, make_reward_specs
from aha.track.jsonl import to_json_value
from aha.track.metrics import MetricsWriter, read_metrics
from aha.track.progress import Progress
from aha.track.samples import SampleWriter
from aha.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from aha.train.common_config import resolve_device
from aha.train.optim import build_optimizer, build_scheduler
from aha.train.precision import Precision, lean_activations_blocker


class RunDirectoryError(RuntimeError):
    """The output directory holds another run and --resume was not given."""


@dataclass
class TrainingSession:
    cfg: Any
    run_dir: Path
    device: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    metrics: MetricsWriter
    samples: SampleWriter
    progress: Progress
    total_steps: int
    precision: Precision
    history: list[dict] = field(default_factory=list)
    # Set by whoever wants the run to end (the hacking watch, ...); the loop saves a checkpoint and ends.
    stop_reason: str | None = None

    @classmethod
    def start(
        cls, cfg: Any, *, resume: bool, total_steps: int, load: Callable[..., PreTrainedModel] = load_model
    ) -> TrainingSession:
        """Prepare the run directory and everything a stage trains with. `cfg` has model/optim/run sections.
        `load(path, dtype, device, trust_remote_code=...)` builds the model: a causal LM by default, a
        scalar-head model (aha.models.scalar_head.load_scalar_model) for reward models."""
        run_dir = Path(cfg.run.output_dir)
        if (run_dir / "metrics.jsonl").exists() and not resume:
            raise RunDirectoryError(
                f"{run_dir} already holds a run; pass --resume to continue it, or set run.output_dir elsewhere"
            )
        run_dir.mkdir(parents=True, exist_ok=True)
        seed_everything(cfg.run.seed)
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        device = resolve_device(cfg.model.device)
        tokenizer = load_tokenizer(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
        precision = Precision(cfg.model.precision, device)
        # float32 master weights whatever the precision: autocast computes in bf16/fp16 (precision.py)
        model = load(cfg.model.path, "float32", device, trust_remote_code=cfg.model.trust_remote_code)
        if cfg.model.lora.r:
            model = apply_lora(model, cfg.model.lora, cfg.model.path)
        if cfg.model.lean_activations:
            blocker = lean_activations_blocker(device, precision.name, lora_enabled=cfg.model.lora.r > 0)
            if blocker is None:
                use_lean_activations(model)
            else:
                print(f"model.lean_activations: off for this run: {blocker}", file=sys.stderr)
        if getattr(cfg.train, "gradient_checkpointing", False):  # composes with lean activations (tested)
            enable_gradient_checkpointing(model)
        optimizer = build_optimizer(model, cfg.optim.lr, cfg.optim.weight_decay)
        scheduler = build_scheduler(optimizer, cfg.optim.warmup_steps, total_steps, kind=cfg.optim.schedule)
        save_config(cfg, run_dir / "config.yaml")
        return cls(
            cfg=cfg,
            run_dir=run_dir,
            device=device,
            model=model,
            tokenizer=tokenizer,
            optimizer=optimizer,
            scheduler=scheduler,
            metrics=MetricsWriter(run_dir),
            samples=SampleWriter(run_dir),
            progress=Progress(total_steps, desc=run_dir.name, enabled=cfg.run.progress),
            total_steps=total_steps,
            precision=precision,
        )

    def progress_from(self, step: int) -> None:
        """After a resume: keep only metrics up to the checkpoint's step (later rows are redone)."""
        path = self.run_dir / "metrics.jsonl"
        self.history = [row for row in read_metrics(path) if row["step"] <= step] if path.exists() else []
        self.metrics.close()
        tmp = path.with_suffix(".tmp")
        tmp.write_text(
            "".join(json.dumps(to_json_value(row), allow_nan=False) + "\n" for row in self.history)
        )
        tmp.replace(path)
        self.metrics = MetricsWriter(self.run_dir)
        self.progress.close()
        self.progress = Progress(
            self.total_steps, desc=self.run_dir.name, initial=step, enabled=self.cfg.run.progress
        )

    def restore_latest(self, sampler: PromptSampler) -> tuple[int, dict]:
        """Continue from the run directory's latest checkpoint: model, optimizer, scheduler, `sampler` and
        precision state restored (the counterpart of `save_if_due`), metrics cut back to its step.
        Returns (its step, its extra state for what the stage keeps itself); (0, {}) without one."""
        ckpt = latest_checkpoint(self.run_dir)
        if ckpt is None:
            return 0, {}
        state = load_checkpoint(ckpt, self.model, self.optimizer, self.scheduler)
        sampler.load_state_dict(state["extra"]["sampler"])
        self.precision.load_state_dict(state["extra"])
        self.progress_from(state["step"])
        return state["step"], state["extra"]

    def prompt_sampler(self, examples: list[PromptExample], batch_size: int) -> PromptSampler:
        return PromptSampler(examples, batch_size, seed=self.cfg.run.seed)

    def reward_specs(self, rewards_cfg: Any) -> list[RewardSpec]:
        weights = rewards_cfg.weights or [1.0] * len(rewards_cfg.functions)
        options = rewards_cfg.options or {}
        entries = zip(rewards_cfg.functions, weights, strict=True)
        return make_reward_specs([{"fn": f, "weight": w, "options": options.get(f)} for f, w in entries])

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.history.append({"step": step, **metrics})
        self.metrics.log(step, metrics)

    def save_if_due(self, step: int, stage: str, extra_state: Callable[[], dict]) -> None:
        """Checkpoint every `run.save_every` steps, always at the last step, and at a step that set
        `stop_reason`. `extra_state` is called only when a checkpoint is written: gathering it (e.g.
        hashing the prompts) is not free."""
        every = self.cfg.run.save_every
        due = (every and step % every == 0) or step == self.total_steps or self.stop_reason is not None
        if not due:
            return
        save_checkpoint(
            self.run_dir,
            step,
            self.model,
            self.tokenizer,
            self.optimizer,
            self.scheduler,
            trainer_state={"stage": stage},
            extra_state={**extra_state(), **self.precision.state_dict()},
            keep_last=self.cfg.run.keep_checkpoints,
        )

    def finish(self) -> None:
        self.progress.close()
        self.metrics.close()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def load_prompt_sets(data_cfg: Any, seed: int) -> tuple[list[PromptExample], list[PromptExample]]:
    """Training and held-out prompts: from JSONL files, or the built-in arithmetic task (disjoint sets)."""
    if data_cfg.train_file is None:
        train, held_out = split_train_eval(
            data_cfg.arithmetic_train_size,
            data_cfg.arithmetic_eval_size,
            digits=data_cfg.arithmetic_digits,
            seed=seed,
        )
    else:
        train = load_prompt_file(data_cfg.train_file, prompt_field=data_cfg.prompt_field)
        held_out = []
    if data_cfg.eval_file is not None:
        held_out = load_prompt_file(data_cfg.eval_file, prompt_field=data_cfg.prompt_field)
    if not held_out:
        raise ValueError(
            "no held-out prompts: set data.eval_file (held-out JSONL) when data.train_file is set"
        )
    return train, held_out
