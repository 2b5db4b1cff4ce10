"""Supervised fine-tuning on demonstrations: the stage that gives RL a policy worth amplifying.

Each example is a prompt and a completion (JSONL). The loss is the mean negative log-likelihood of the
completion tokens only: the prompt is context, not something the model should learn to write. EOS is
appended to every completion so the model learns to stop, which the rollout engines rely on. Prompts are
rendered (chat template, `data.chat_template`) and tokenised exactly as the GRPO trainer and the rollout
engines do, so the model sees the same prefix at SFT and at RL time.

Under torchrun each rank takes its contiguous share of every batch; its loss is weighted by its share of
the batch's completion tokens (`rank_weight`), so the averaged gradient is the one-process gradient.

The run directory holds config.yaml, metrics.jsonl, checkpoints/ (atomic, for --resume), plots.png and
final/: the trained model and tokenizer in `save_pretrained` layout, ready for `model.path` of GRPO.
Under LoRA final/ holds the adapters (peft's layout; `load_model` merges them into the base they name)
and, with model.lora.save_merged, merged/ the plain merged model.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from aha.config import ConfigError, option
from aha.data.chat import CHAT_TEMPLATE_HELP, CHAT_TEMPLATE_MODES, SYSTEM_PROMPT_HELP, chat_format
from aha.data.prompts import DataError, PromptExample, load_prompt_file
from aha.dist.env import shard
from aha.dist.reduce import rank_weight, reduce_metrics
from aha.dist.wrap import full_state_dict, full_weights, is_sharded
from aha.models.forward import next_token_logprobs
from aha.models.loading import save_model_atomically
from aha.models.lora import export_merged
from aha.track.memory import peak_memory_metrics, reset_peak_memory
from aha.track.plots import plot_metrics
from aha.train.common_config import DistConfig, ModelConfig, OptimConfig, RunConfig, TrackingConfig
from aha.train.nonfinite import ON_NONFINITE, ON_NONFINITE_HELP, NonFiniteGuard
from aha.train.policy_update import FP32
from aha.train.precision import Precision
from aha.train.session import TrainingSession

FINAL_DIR = "final"
MERGED_DIR = "merged"  # under LoRA with model.lora.save_merged: final/'s adapters merged into the base


@dataclass
class SFTDataConfig:
    train_file: str = option(help="JSONL demonstrations: one object per line with a prompt and a completion.")
    eval_file: str | None = option(None, help="Held-out demonstrations (same format): their loss is logged.")
    prompt_field: str = option(
        "prompt", help="Name of the prompt column: a string, or a list of {role, content} messages."
    )
    chat_template: str = option("auto", choices=CHAT_TEMPLATE_MODES, help=CHAT_TEMPLATE_HELP)
    system_prompt: str | None = option(None, help=SYSTEM_PROMPT_HELP)
    completion_field: str = option("completion", help="Name of the completion column (the loss is on it).")
    max_length: int = option(
        1024, help="Longest prompt + completion + EOS in tokens; a longer example is an error, not truncated."
    )


@dataclass
class SFTTrainConfig:
    steps: int = option(0, help="Optimizer steps (0 = run `epochs` passes over the training file).")
    epochs: float = option(1.0, help="Passes over the training file when steps = 0 (fractions allowed).")
    batch_size: int = option(32, help="Demonstrations per optimizer step.")
    gradient_checkpointing: bool = option(
        False,
        help="Keep only each decoder layer's input for backward and recompute the layer there: far less "
        "activation memory for about one more forward pass.",
    )
    on_nonfinite: str = option("stop", choices=ON_NONFINITE, help=ON_NONFINITE_HELP)

    def validate(self) -> None:
        if self.steps < 0 or self.batch_size < 1:
            raise ConfigError("need steps >= 0 and batch_size >= 1")
        if self.steps == 0 and self.epochs <= 0:
            raise ConfigError("set steps > 0 or epochs > 0")


@dataclass
class SFTEvalConfig:
    every: int = option(0, help="Held-out loss every N steps (0 = only at the end). Needs data.eval_file.")
    batch_size: int = option(256, help="Demonstrations per forward pass when evaluating.")


@dataclass
class SFTRunConfig:
    model: ModelConfig = option(
        default_factory=lambda: ModelConfig(path="runs/tiny-model"), help="The model to train."
    )
    data: SFTDataConfig = option(
        default_factory=lambda: SFTDataConfig(train_file="data/sft.jsonl"), help="Demonstrations."
    )
    train: SFTTrainConfig = option(default_factory=SFTTrainConfig, help="Steps and batch size.")
    optim: OptimConfig = option(
        default_factory=lambda: OptimConfig(lr=1e-4, warmup_steps=10, schedule="cosine"),
        help="AdamW and the learning-rate schedule.",
    )
    eval: SFTEvalConfig = option(default_factory=SFTEvalConfig, help="Held-out loss.")
    track: TrackingConfig = option(
        default_factory=TrackingConfig, help="TensorBoard and W&B next to metrics.jsonl."
    )
    run: RunConfig = option(
        default_factory=lambda: RunConfig(output_dir="runs/sft"), help="Run directory, seed, checkpoints."
    )
    dist: DistConfig = option(default_factory=DistConfig, help="Several processes under torchrun.")


@dataclass
class SFTResult:
    run_dir: Path
    final_dir: Path  # the trained model + tokenizer (save_pretrained layout)
    history: list[dict]  # every metrics row written, in order
    final_eval_loss: float | None  # held-out loss at the end (None without data.eval_file)


@dataclass
class TokenBatch:
    input_ids: torch.Tensor  # [B, T] right-padded (a causal model needs no attention mask for that)
    loss_mask: torch.Tensor  # [B, T] 1 on completion tokens (EOS included): the tokens the loss is on


def load_demonstrations(
    path: str, prompt_field: str = "prompt", completion_field: str = "completion"
) -> list[PromptExample]:
    """Prompt + completion records; the completion stays in `fields[completion_field]`."""
    examples = load_prompt_file(path, prompt_field=prompt_field, required_fields=(completion_field,))
    for number, ex in enumerate(examples, start=1):
        if not isinstance(ex.fields[completion_field], str):
            raise DataError(
                f'{path}: record {number}: field "{completion_field}" must be a string, '
                f"got {type(ex.fields[completion_field]).__name__}"
            )
    return examples


@dataclass(frozen=True)
class EncodedDemonstration:
    input_ids: list[int]  # prompt + completion + EOS
    prompt_len: int  # the loss is on the tokens after these


def encode_demonstrations(
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    completions: list[str],
    max_length: int,
    source: str = "demonstrations",
    add_special_tokens: bool = True,
) -> list[EncodedDemonstration]:
    """Token ids of prompt + completion + EOS. Done once per dataset: tokenising every batch again costs
    about 5 ms a step, 8% of the demo model's SFT step. An example over `max_length` is an
    error naming `source` and its record number (1-based), never silently truncated.
    `add_special_tokens=False` for chat-rendered prompts (they hold the template's BOS already)."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token: SFT appends EOS so the model learns to stop")
    # As the rollout engines tokenise prompts (aha.rollout.completions.tokenize_prompts).
    prompt_ids = tokenizer(prompts, add_special_tokens=add_special_tokens)["input_ids"]
    completion_ids = tokenizer(completions, add_special_tokens=False)["input_ids"]
    encoded = []
    for number, (p, c) in enumerate(zip(prompt_ids, completion_ids, strict=True), start=1):
        ids = p + c + [tokenizer.eos_token_id]
        if len(ids) > max_length:
            raise ValueError(
                f"{source}: record {number} ({prompts[number - 1][:60]!r}) is {len(ids)} tokens, "
                f"over data.max_length={max_length}"
            )
        encoded.append(EncodedDemonstration(ids, len(p)))
    return encoded


def pad_demonstrations(
    rows: list[EncodedDemonstration], pad_id: int, device: str | torch.device = "cpu"
) -> TokenBatch:
    """Right-pad a batch, with a loss mask on the completion and EOS only."""
    width = max(len(r.input_ids) for r in rows)
    input_ids, loss = [], []
    for r in rows:
        fill = width - len(r.input_ids)
        input_ids.append(r.input_ids + [pad_id] * fill)
        loss.append([0] * r.prompt_len + [1] * (len(r.input_ids) - r.prompt_len) + [0] * fill)
    return TokenBatch(
        input_ids=torch.tensor(input_ids, device=device),
        loss_mask=torch.tensor(loss, device=device),
    )


def _pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def completion_nll(model: PreTrainedModel, batch: TokenBatch) -> torch.Tensor:
    """Mean negative log-likelihood over all completion tokens of the batch (each token weighs the same).

    The batch is right-padded, so a causal model needs no attention mask: padding only follows the real
    tokens and never enters their attention. Without a mask the attention takes its fused causal path
    (about 10% of the demo model's SFT step, measured)."""
    logprobs = next_token_logprobs(model, batch.input_ids, batch.loss_mask)
    return -logprobs.sum() / max(logprobs.numel(), 1)


def rank_scaled_nll(
    model: PreTrainedModel, batch: TokenBatch, precision: Precision = FP32
) -> tuple[torch.Tensor, float]:
    """(the loss to backpropagate, the whole batch's NLL) for this rank's share of a batch: its NLL
    weighted by its share of the batch's completion tokens times the number of ranks (`rank_weight`),
    so the gradient averaged over ranks is the one-process gradient of the whole batch. In a single
    process: (completion_nll, its value)."""
    with precision.autocast():
        loss = completion_nll(model, batch)
    loss = loss * rank_weight(float(batch.loss_mask[:, 1:].sum()))
    return loss, reduce_metrics({"loss": loss.item()})["loss"]


@torch.no_grad()
def heldout_loss(
    model: PreTrainedModel, rows: list[EncodedDemonstration], pad_id: int, batch_size: int, device: str
) -> float:
    """Completion NLL over `rows`, token-weighted across batches."""
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    for start in range(0, len(rows), batch_size):
        batch = pad_demonstrations(rows[start : start + batch_size], pad_id, device)
        n = int(batch.loss_mask[:, 1:].sum())
        total += float(completion_nll(model, batch)) * n
        tokens += n
    model.train(was_training)
    return total / tokens


def run_sft(cfg: SFTRunConfig, resume: bool = False) -> SFTResult:
    """Fine-tune on the demonstrations; with `resume`, continue from the run directory's last checkpoint."""
    d = cfg.data
    train_set = load_demonstrations(d.train_file, d.prompt_field, d.completion_field)
    eval_set = load_demonstrations(d.eval_file, d.prompt_field, d.completion_field) if d.eval_file else []
    if cfg.eval.every and not eval_set:
        raise ConfigError("eval.every > 0 needs data.eval_file (held-out demonstrations)")
    total_steps = cfg.train.steps or math.ceil(cfg.train.epochs * len(train_set) / cfg.train.batch_size)
    if cfg.optim.warmup_steps > total_steps:
        raise ConfigError(
            f"optim.warmup_steps={cfg.optim.warmup_steps} exceeds the {total_steps} training steps"
        )
    session = TrainingSession.start(cfg, resume=resume, total_steps=total_steps)
    model, tokenizer, device, precision = session.model, session.tokenizer, session.device, session.precision
    chat = chat_format(d.chat_template, d.system_prompt, tokenizer, train_set + eval_set)
    train_set, eval_set = chat.apply(train_set, tokenizer), chat.apply(eval_set, tokenizer)
    sampler = session.prompt_sampler(train_set, cfg.train.batch_size)
    pad_id = _pad_id(tokenizer)

    def encode(examples: list[PromptExample], source: str) -> list[EncodedDemonstration]:
        completions = [ex.fields[d.completion_field] for ex in examples]
        prompts = [ex.prompt for ex in examples]
        return encode_demonstrations(
            tokenizer, prompts, completions, d.max_length, source, chat.add_special_tokens
        )

    encoded_train = encode(train_set, d.train_file)
    encoded_eval = encode(eval_set, d.eval_file) if eval_set else []

    def eval_loss(step: int) -> float:  # every rank the whole held-out set, on gathered weights (fsdp2)
        with precision.autocast(), full_weights(model):
            loss = heldout_loss(model, encoded_eval, pad_id, cfg.eval.batch_size, device)
        NonFiniteGuard(cfg.train.on_nonfinite, step).ok_evaluated("loss", loss)
        return loss

    start_step = session.restore_latest(sampler)[0] if resume else 0
    session.distribute()  # under torchrun: wrap the model for dist.strategy (after a resume)
    if start_step == 0 and eval_set:
        session.log(0, {"eval/loss": eval_loss(0)})

    model.train()
    final_eval = None
    for step in range(start_step + 1, total_steps + 1):
        t0 = time.perf_counter()
        reset_peak_memory(device)
        rows = shard(sampler.next_indices(), session.dist, "train.batch_size")
        batch = pad_demonstrations([encoded_train[i] for i in rows], pad_id, device)
        loss, batch_loss = rank_scaled_nll(model, batch, precision)
        session.optimizer.zero_grad(set_to_none=True)
        guard = NonFiniteGuard(cfg.train.on_nonfinite, step)
        result = precision.guarded_step(session.optimizer, loss, batch_loss, cfg.optim.grad_clip, guard)
        session.scheduler.step()
        metrics = {
            "lr": session.scheduler.get_last_lr()[0],
            "tokens/completion": float(batch.loss_mask.sum()),  # this rank's (summed below)
            "update/nonfinite_skipped": float(result is None or result.nonfinite),
            "time/step_s": time.perf_counter() - t0,
            **precision.metrics(),
        }
        if result is not None and not result.nonfinite:  # a skipped step's loss / norm are not logged
            metrics.update({"loss": batch_loss, "grad_norm": result.grad_norm})
            if precision.scaler is not None:
                metrics["amp/step_skipped"] = float(result.skipped)
        if eval_set and ((cfg.eval.every and step % cfg.eval.every == 0) or step == total_steps):
            metrics["eval/loss"] = final_eval = eval_loss(step)
        metrics.update(peak_memory_metrics(device))
        metrics = reduce_metrics(metrics)  # the mean over ranks (the same numbers in one process)
        metrics["tokens/completion"] *= session.dist.world_size
        session.log(step, metrics)
        session.progress.update(step, loss=metrics.get("loss", math.nan))
        session.save_if_due(step, "sft", lambda: {"sampler": sampler.state_dict()})
        session.end_if_signalled(step)

    if eval_set and final_eval is None:  # resumed a finished run
        final_eval = eval_loss(total_steps)
    session.finish()
    weights = full_state_dict(model) if is_sharded(model) else None  # gathered on every rank
    final_dir = session.run_dir / FINAL_DIR
    if not session.dist.is_main:
        return SFTResult(session.run_dir, final_dir, session.history, final_eval)
    final_dir = save_model_atomically(model, tokenizer, final_dir, state_dict=weights)
    if cfg.model.lora.r and cfg.model.lora.save_merged:
        export_merged(final_dir, session.run_dir / MERGED_DIR, dtype="float32")
    if session.history:
        plot_metrics(session.history, [("loss", "eval/loss")], session.run_dir / "plots.png", title="SFT")
    return SFTResult(session.run_dir, final_dir, session.history, final_eval)
