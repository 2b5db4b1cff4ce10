"""The `model.lora` config section: light (no torch, no peft), so configs load and `--help` runs without
them; models/lora.py applies it."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from aha.config import ConfigError, option

# The attention and MLP projections of Llama-family models (Llama, Qwen2, Mistral, ...).
LLAMA_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PEFT_MISSING = "LoRA needs the peft package: pip install 'aha[lora]'"


@dataclass
class LoRAConfig:
    r: int = option(0, help="LoRA rank (0 = off: train every weight). With r > 0 only the adapters train.")
    alpha: float = option(16.0, help="LoRA scale numerator: the adapters' update is (alpha / r) * B @ A.")
    dropout: float = option(0.0, help="Dropout on the adapters' input during training.")
    target_modules: list[str] = option(
        LLAMA_PROJECTIONS,
        help="Names of the Linear modules that get adapters (the attention and MLP projections of "
        "Llama-family models), or [all-linear] for every Linear except the output layer.",
    )
    save_merged: bool = option(
        False,
        help="At the end also write the adapters merged into the base weights as a plain HF model "
        "(run_dir/merged); `aha merge-lora` does the same for any adapter directory.",
    )

    def validate(self) -> None:
        if self.r < 0:
            raise ConfigError("r must be >= 0 (0 turns LoRA off)")
        if self.r == 0:
            return
        if self.alpha <= 0 or not 0 <= self.dropout < 1:
            raise ConfigError("need alpha > 0 and 0 <= dropout < 1")
        if not self.target_modules:
            raise ConfigError("target_modules must name at least one module (or be [all-linear])")
        if importlib.util.find_spec("peft") is None:
            raise ConfigError(PEFT_MISSING)
