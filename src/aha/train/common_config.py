"""Config sections shared by every training stage (SFT, GRPO, later PPO and reward models)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from aha.config import ConfigError, option
from aha.models.lora_config import LoRAConfig
from aha.track.trackers import REPORT_TO, report_to_problem


@dataclass
class ModelConfig:
    path: str = option(help="Hugging Face model directory or hub id (loaded with from_pretrained).")
    precision: str = option(
        "auto",
        choices=("auto", "fp32", "bf16-mixed", "fp16-mixed"),
        help="How the model computes; weights and AdamW state are always float32. bf16-mixed / fp16-mixed "
        "run every forward (training, reference, rollouts, evaluation) under autocast; fp16-mixed also "
        "scales the loss (skipping steps whose gradients overflow). auto: bf16-mixed on a CUDA device "
        "with bf16 support, fp32 elsewhere (the CPU included).",
    )
    device: str = option("auto", help="'auto' (CUDA if available, else CPU), 'cpu' or 'cuda[:N]'.")
    trust_remote_code: bool = option(
        False, help="Run modelling code shipped with the checkpoint. Only for checkpoints you trust."
    )
    lean_activations: bool = option(
        True,
        help="Train Llama-family models with MLP, RMSNorm and attention forwards that keep fewer "
        "activations for backward (the same outputs to float32 rounding, 44% fewer saved activation bytes "
        "at 25M parameters, bench/lean_activations.py; compiled single passes for float32 on the CPU, the "
        "attention's rotary embedding included). Applied to fp32 runs on the CPU without LoRA only; elsewhere it steps aside and "
        "says why.",
    )
    lora: LoRAConfig = option(default_factory=LoRAConfig, help="Low-rank adapters (peft).")

    # Options that no longer exist: name -> (the option that replaces it, why). aha.config reports them.
    removed_options: ClassVar[dict[str, tuple[str, str]]] = {
        "dtype": (
            "precision",
            "weights now stay float32 and bf16/fp16 is used under autocast (fp32, bf16-mixed, "
            "fp16-mixed or auto); pure bf16 weights lost every update below bf16's resolution",
        )
    }


@dataclass
class OptimConfig:
    lr: float = option(1e-5, help="Peak learning rate of AdamW.")
    weight_decay: float = option(0.0, help="AdamW weight decay (not applied to biases and norms).")
    warmup_steps: int = option(0, help="Linear warm-up steps from 0 to lr.")
    schedule: str = option(
        "constant", choices=("constant", "linear", "cosine"), help="LR schedule after warm-up."
    )
    grad_clip: float = option(1.0, help="Clip the global gradient norm to this value (0 = no clipping).")

    def validate(self) -> None:
        if self.lr <= 0:
            raise ConfigError("lr must be > 0")
        if self.warmup_steps < 0:
            raise ConfigError("warmup_steps must be >= 0")


@dataclass
class RunConfig:
    output_dir: str = option("runs/run", help="Run directory: config, metrics.jsonl, samples, checkpoints.")
    seed: int = option(0, help="Seed for data order, sampling and initialisation.")
    save_every: int = option(0, help="Checkpoint every N steps (0 = only at the end).")
    keep_checkpoints: int = option(2, help="How many checkpoints to keep in output_dir/checkpoints.")
    progress: bool = option(True, help="Show a live progress bar.")
    threads: int = option(0, help="torch CPU threads (0 = torch's default).")


@dataclass
class DistConfig:
    strategy: str = option(
        "ddp",
        choices=("ddp", "fsdp2"),
        help="How the policy is spread over processes under torchrun (ignored without torchrun). ddp: every "
        "rank holds the whole model, gradients are all-reduced (fastest while the model, its gradients "
        "and AdamW state fit on one device). fsdp2: torch's fully_shard on each decoder layer, so each "
        "rank holds 1/N of the weights, gradients and optimizer state (for models that do not fit). "
        "docs/scaling.md.",
    )


@dataclass
class TrackingConfig:
    report_to: list[str] = option(
        ["jsonl"],
        choices=REPORT_TO,
        help="Where scalars, the config and sample completions go. metrics.jsonl and samples.jsonl are "
        "always written; tensorboard adds run_dir/tensorboard (pip install 'aha[tensorboard]'; view with "
        "`tensorboard --logdir RUN_DIR`); wandb logs to Weights & Biases (pip install 'aha[wandb]'; "
        "WANDB_MODE=offline keeps it in run_dir/wandb without an account). Example: "
        "track.report_to=[jsonl,tensorboard].",
    )
    wandb_project: str = option("aha", help="W&B project the run is logged to (with wandb in report_to).")

    def validate(self) -> None:
        problem = report_to_problem(self.report_to)
        if problem is not None:
            raise ConfigError(f"report_to: {problem}")


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name
