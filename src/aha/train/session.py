"""What every training stage sets up the same way: run directory, seeds, model, optimizer, writers
(metrics.jsonl, samples.jsonl and the `track.report_to` trackers behind them).

A stage's recipe (grpo.py, sft.py, ...) keeps only its own loop; everything here is shared so a new
stage does not copy it.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from aha.config import config_to_dict, config_to_yaml, save_config
from aha.data.arithmetic import split_train_eval
from aha.data.prompts import PromptExample, PromptSampler, load_prompt_file
from aha.dist import env as dist_env
from aha.dist.reduce import sum_across_ranks
from aha.dist.wrap import (
    full_optimizer_state,
    full_state_dict,
    is_sharded,
    load_full_optimizer_state,
    wrap_model,
)
from aha.durable import fsync_path
from aha.models.checkpointing import enable_gradient_checkpointing
from aha.models.lean_activations import use_lean_activations
from aha.models.loading import load_model, load_tokenizer
from aha.models.lora import apply_lora
from aha.track.jsonl import JsonlAppender, read_jsonl, to_json_value
from aha.track.memory import record_resources
from aha.track.metrics import METRICS_FILE, MetricsWriter, read_metrics
from aha.track.progress import Progress
from aha.track.samples import SAMPLES_FILE, SampleWriter
from aha.track.trackers import Trackers, open_trackers
from aha.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from aha.train.common_config import TrackingConfig, resolve_device
from aha.train.interrupt import RunInterrupted, StopSignals
from aha.train.optim import build_optimizer, build_scheduler
from aha.train.precision import Precision, lean_activations_blocker


class RunDirectoryError(RuntimeError):
    """The output directory holds another run and --resume was not given."""


@dataclass
class NamedModel:
    """A model of the run besides the policy (critic, a moving reference, ...) with what trains it:
    checkpoints save it under its name and resume restores it (optimizer and scheduler too). A model
    with `rebuild` (module -> its optimizer and scheduler, built as they were) trains: under torchrun
    `distribute` wraps it as it wraps the policy and rebuilds them over the wrapped parameters."""

    module: torch.nn.Module
    optimizer: torch.optim.Optimizer | None = None
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    rebuild: (
        Callable[[torch.nn.Module], tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]] | None
    ) = None


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
    trackers: Trackers = field(default_factory=lambda: Trackers([]))  # track.report_to beyond jsonl
    started: float = field(default_factory=time.perf_counter)  # for resources.jsonl's wall_s
    signals: StopSignals = field(default_factory=StopSignals)  # SIGTERM / Ctrl-C: stop at a step boundary
    # Further models checkpointed with the policy (`add_model`); the policy is model/optimizer/scheduler.
    models: dict[str, NamedModel] = field(default_factory=dict)
    jsonl_files: list[JsonlAppender] = field(default_factory=list)  # a stage's own, from open_jsonl
    # Set by whoever wants the run to end early (a hacking watch, SIGTERM, ...): the loop checks it after
    # each step's logging, saves a checkpoint and returns.
    stop_reason: str | None = None
    # This process's place under torchrun (rank 0 of 1 otherwise); only rank 0 writes run files.
    dist: dist_env.DistEnv = field(default_factory=dist_env.DistEnv)

    @classmethod
    def start(
        cls, cfg: Any, *, resume: bool, total_steps: int, load: Callable[..., PreTrainedModel] = load_model
    ) -> TrainingSession:
        """Prepare the run directory and everything a stage trains with. `cfg` has model/optim/run sections.
        `load(path, dtype, device, trust_remote_code=...)` builds the model: a causal LM by default, a
        scalar-head model (aha.models.scalar_head.load_scalar_model) for reward models."""
        started = time.perf_counter()
        run_dir = Path(cfg.run.output_dir)
        env, device = dist_env.init(resolve_device(cfg.model.device))
        if (run_dir / "metrics.jsonl").exists() and not resume:
            raise RunDirectoryError(
                f"{run_dir} already holds a run; pass --resume to continue it, or set run.output_dir elsewhere"
            )
        dist_env.barrier()  # every rank has looked before rank 0 creates the run's files
        if env.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
        seed_everything(cfg.run.seed)  # the same initialisation on every rank (LoRA adapters included)
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        tokenizer = load_tokenizer(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
        precision = Precision(cfg.model.precision, device)
        # float32 master weights whatever the precision: autocast computes in bf16/fp16 (precision.py)
        model = load(cfg.model.path, "float32", device, trust_remote_code=cfg.model.trust_remote_code)
        if cfg.model.lora.r:
            model = apply_lora(model, cfg.model.lora, cfg.model.path)
        if cfg.model.lean_activations:
            blocker = lean_activations_blocker(device, precision.name, lora_enabled=cfg.model.lora.r > 0)
            if blocker is None and dist_env.in_process_group() and _strategy(cfg) == "fsdp2":
                blocker = "it does not apply to FSDP2-sharded models"
            if blocker is None:
                use_lean_activations(model)
            else:
                print(f"model.lean_activations: off for this run: {blocker}", file=sys.stderr)
        if getattr(cfg.train, "gradient_checkpointing", False):  # composes with lean activations (tested)
            enable_gradient_checkpointing(model)
        optimizer = build_optimizer(model, cfg.optim.lr, cfg.optim.weight_decay)
        scheduler = build_scheduler(optimizer, cfg.optim.warmup_steps, total_steps, kind=cfg.optim.schedule)
        track = getattr(cfg, "track", None) or TrackingConfig()
        trackers = Trackers([])
        if env.is_main:
            save_config(cfg, run_dir / "config.yaml")
            trackers = open_trackers(
                track.report_to, run_dir, config_to_dict(cfg), config_to_yaml(cfg), track.wandb_project
            )
        dist_env.barrier()  # the run directory exists for every rank
        session = cls(
            cfg=cfg,
            run_dir=run_dir,
            device=device,
            model=model,
            tokenizer=tokenizer,
            optimizer=optimizer,
            scheduler=scheduler,
            metrics=MetricsWriter(run_dir) if env.is_main else _Discard(),
            samples=SampleWriter(run_dir, sinks=[trackers]) if env.is_main else _Discard(),
            progress=Progress(total_steps, desc=run_dir.name, enabled=cfg.run.progress and env.is_main),
            total_steps=total_steps,
            precision=precision,
            trackers=trackers,
            started=started,
            dist=env,
        )
        session.signals.install()
        return session

    def progress_from(self, step: int) -> None:
        """After a resume: keep only the metrics and samples of steps up to the checkpoint's (later rows
        are redone; -1 keeps none: a run killed before its first checkpoint starts over)."""
        self.metrics.close()
        self.samples.close()
        if self.dist.is_main:
            self.history = cut_jsonl(self.run_dir / METRICS_FILE, step, read_metrics)
            cut_jsonl(self.run_dir / SAMPLES_FILE, step, lambda path: read_jsonl(path, torn_tail_ok=True))
            self.metrics = MetricsWriter(self.run_dir)
            self.samples = SampleWriter(self.run_dir, sinks=[self.trackers])
        dist_env.barrier()  # the other ranks read the history rank 0 kept
        if not self.dist.is_main:
            self.history = [row for row in read_metrics(self.run_dir / METRICS_FILE) if row["step"] <= step]
        self.progress.close()
        self.progress = Progress(
            self.total_steps,
            desc=self.run_dir.name,
            initial=step,
            enabled=self.cfg.run.progress and self.dist.is_main,
        )
        for row in self.history:
            self.progress.observe(row)
        self.trackers.restart_at(step)

    def open_jsonl(self, name: str) -> JsonlAppender:
        """Append to run_dir/`name`, a stage's own JSON-lines file (rank 0): fsynced before each
        checkpoint like metrics.jsonl, closed by `finish`."""
        appender = JsonlAppender(self.run_dir / name)
        self.jsonl_files.append(appender)
        return appender

    def add_model(self, name: str, model: NamedModel) -> None:
        """Register a further model: saved in every checkpoint's <name>/ and restored on resume."""
        if name in self.models or name == "policy":
            raise ValueError(f"the session already has a model named {name!r}")
        self.models[name] = model

    def restore_latest(self, sampler: PromptSampler) -> tuple[int, dict]:
        """Continue from the run directory's latest checkpoint: model, optimizer, scheduler, the named
        models, `sampler` and precision state restored (the counterpart of `save_if_due`), metrics cut
        back to its step. Returns (its step, its extra state for what the stage keeps itself); (0, {})
        without one."""
        ckpt = latest_checkpoint(self.run_dir)
        if ckpt is None:
            self.progress_from(-1)
            return 0, {}
        state = load_checkpoint(ckpt, self.model, self.optimizer, self.scheduler, models=self._model_states())
        sampler.load_state_dict(state["extra"]["sampler"])
        self.precision.load_state_dict(state["extra"])
        self.progress_from(state["step"])
        return state["step"], state["extra"]

    def distribute(self) -> None:
        """Under torchrun, wrap the policy for `dist.strategy` (ddp or fsdp2) and rebuild its optimizer and
        scheduler over the wrapped parameters, carrying over their state (a resumed run's); the same for
        each named model that trains (`NamedModel.rebuild`: PPO's critic). Call once, after
        `restore_latest` and after any copy of the policy is taken (the reference): those then see a
        plain model. A no-op without torchrun."""
        if not dist_env.in_process_group():
            return
        optim = self.cfg.optim

        def policy_trainer(model: torch.nn.Module) -> tuple:
            optimizer = build_optimizer(model, optim.lr, optim.weight_decay)
            return optimizer, build_scheduler(
                optimizer, optim.warmup_steps, self.total_steps, kind=optim.schedule
            )

        self.optimizer, self.scheduler = self._wrap(
            self.model, self.optimizer, self.scheduler, policy_trainer
        )
        for named in self.models.values():
            if named.rebuild is not None:
                named.optimizer, named.scheduler = self._wrap(
                    named.module, named.optimizer, named.scheduler, named.rebuild
                )

    def _wrap(self, model: torch.nn.Module, optimizer: Any, scheduler: Any, rebuild: Callable) -> tuple:
        """Wrap `model` in place; its new optimizer and scheduler, holding the old ones' state."""
        optimizer_state, scheduler_state = optimizer.state_dict(), scheduler.state_dict()
        wrap_model(model, _strategy(self.cfg), self.precision.name)
        # The scheduler is built before the optimizer state loads: building it sets each group's lr to
        # the schedule's first value, which would override a resumed run's current lr for its first step.
        optimizer, scheduler = rebuild(model)
        load_full_optimizer_state(model, optimizer, optimizer_state)
        scheduler.load_state_dict(scheduler_state)
        return optimizer, scheduler

    def prompt_sampler(self, examples: list[PromptExample], batch_size: int) -> PromptSampler:
        return PromptSampler(examples, batch_size, seed=self.cfg.run.seed)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Record a step's metrics (the same on every rank: they are reduced before)."""
        self.history.append({"step": step, **metrics})
        self.metrics.log(step, metrics)
        self.trackers.log_scalars(step, metrics)
        self.progress.observe(metrics)

    def save_if_due(
        self, step: int, stage: str, extra_state: Callable[[], dict], force: bool = False
    ) -> None:
        """Checkpoint every `run.save_every` steps, always at the last step, and when `force` (a run
        stopping early). `extra_state` is called only when a checkpoint is written: gathering it (e.g.
        hashing the prompts) is not free."""
        every = self.cfg.run.save_every
        self._agree_on_signals()
        if not (
            force
            or (every and step % every == 0)
            or step == self.total_steps
            or self.signals.received
            or self.stop_reason is not None
        ):
            return
        trainer_state = {"stage": stage}
        if self.stop_reason is not None:
            trainer_state["stop_reason"] = self.stop_reason
        # Under fsdp2 the whole weights and optimizer state are gathered from every rank (a collective);
        # rank 0 alone writes them, then every rank waits for the checkpoint to be complete.
        sharded = is_sharded(self.model)
        weights = full_state_dict(self.model) if sharded else None
        optimizer_state = full_optimizer_state(self.model, self.optimizer) if sharded else None
        gathered_models = {
            name: (full_state_dict(m.module), full_optimizer_state(m.module, m.optimizer))
            for name, m in self.models.items()
            if is_sharded(m.module)
        }
        extra = {**extra_state(), **self.precision.state_dict()}
        if self.dist.is_main:
            for rows in (self.metrics, self.samples, *self.jsonl_files):
                rows.sync()  # durable before the checkpoint that counts them is committed
            save_checkpoint(
                self.run_dir,
                step,
                self.model,
                self.tokenizer,
                self.optimizer,
                self.scheduler,
                trainer_state=trainer_state,
                extra_state=extra,
                keep_last=self.cfg.run.keep_checkpoints,
                models=self._model_states(),
                policy_state=None if weights is None else (weights, optimizer_state),
                gathered_models=gathered_models,
            )
        dist_env.barrier()

    def _agree_on_signals(self) -> None:
        """A SIGTERM reaches the ranks at slightly different times: all stop at the step any saw it."""
        if self.dist.distributed:
            received = sum_across_ranks(float(self.signals.received or 0), op="max")
            self.signals.received = int(received) or None

    def end_if_signalled(self, step: int) -> None:
        """Call after a step's `save_if_due`: on SIGTERM / Ctrl-C, close the writers and raise
        RunInterrupted (the step's checkpoint is written)."""
        if self.signals.received is not None:
            self.finish()
            raise RunInterrupted(self.signals.received, step, self.run_dir)

    def _model_states(self) -> dict[str, tuple]:
        return {name: (m.module, m.optimizer, m.scheduler) for name, m in self.models.items()}

    def finish(self) -> None:
        self.signals.uninstall()
        self.progress.close()
        self.metrics.close()
        for appender in self.jsonl_files:
            appender.close()
        self.trackers.close()
        last_step = self.history[-1]["step"] if self.history else None
        if self.dist.is_main:
            record_resources(self.run_dir, last_step, time.perf_counter() - self.started)


class _Discard:
    """The metrics and samples writers of ranks other than 0: rank 0 writes the run's files."""

    def log(self, *args: Any) -> None:
        pass

    def sync(self) -> None:
        pass

    def close(self) -> None:
        pass


def _strategy(cfg: Any) -> str:
    """`dist.strategy` of a config (ddp for stages whose config has no dist section)."""
    section = getattr(cfg, "dist", None)
    return "ddp" if section is None else section.strategy


def cut_jsonl(path: Path, step: int, read: Callable[[Path], list[dict]]) -> list[dict]:
    """Rewrite a JSON-lines run file (atomically) keeping only the rows of steps <= `step`; returns them
    as `read` gives them."""
    rows = [row for row in read(path) if row["step"] <= step] if path.exists() else []
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write("".join(json.dumps(to_json_value(row), allow_nan=False) + "\n" for row in rows))
        f.flush()
        os.fsync(f.fileno())  # the rows the checkpoint counts, on disk before they replace the file
    tmp.replace(path)
    fsync_path(path.parent)  # and the rename itself
    return rows


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
