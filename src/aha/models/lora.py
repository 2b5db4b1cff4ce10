"""LoRA through peft: wrap a model with trainable low-rank adapters, switch them off for the reference,
load an adapter directory merged into its base, and export the merged model.

Why peft rather than our own adapters: its adapter files are what the rest of the ecosystem loads, and
its `disable_adapter()` gives the base model back without a second copy of the weights (GRPO's
reference policy under LoRA). peft is an optional extra (`pip install 'aha[lora]'`), imported only here.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from aha.config import ConfigError, option
from aha.models.lora_config import PEFT_MISSING, LoRAConfig

ADAPTER_CONFIG = "adapter_config.json"


def require_peft() -> Any:
    """The peft module, or an ImportError that names the extra to install."""
    try:
        import peft
    except ImportError as e:
        raise ImportError(PEFT_MISSING) from e
    return peft


def is_lora_model(model: torch.nn.Module) -> bool:
    """Whether `model` is a peft-wrapped model (adapters that `disable_adapter()` can switch off)."""
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")


def apply_lora(model: PreTrainedModel, cfg: LoRAConfig, base_path: str) -> Any:
    """Wrap `model` with fresh LoRA adapters (B = 0, so the policy starts as the base model); only the
    adapters require grad. `base_path` is recorded in the adapter config (absolute for a local
    directory) so the adapter directories saved later can be merged without being told the base."""
    peft = require_peft()
    targets: str | list[str] = "all-linear" if cfg.target_modules == ["all-linear"] else cfg.target_modules
    if Path(base_path).is_dir():
        base_path = str(Path(base_path).resolve())
    config = peft.LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    try:
        wrapped = peft.get_peft_model(model, config)
    except ValueError as e:
        raise ConfigError(f"model.lora.target_modules={cfg.target_modules}: {e}") from None
    wrapped.peft_config["default"].base_model_name_or_path = base_path
    return wrapped


def adapters_disabled(model: torch.nn.Module) -> contextlib.AbstractContextManager:
    """Inside it a LoRA model computes its base model (GRPO's reference); any other model is unchanged."""
    return model.disable_adapter() if is_lora_model(model) else contextlib.nullcontext()


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def adapter_base(adapter_dir: str | Path) -> str:
    """The base model path recorded in an adapter directory."""
    base = require_peft().PeftConfig.from_pretrained(str(adapter_dir)).base_model_name_or_path
    if not base:
        raise ValueError(f"{adapter_dir}/{ADAPTER_CONFIG} names no base model; pass the base explicitly")
    return base


def load_merged(
    adapter_dir: str | Path,
    dtype: str = "float32",
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
    base: str | None = None,
) -> PreTrainedModel:
    """The base model (`base`, else the one the adapter config names; itself possibly an adapter
    directory) with the adapters of `adapter_dir` added into its weights: a plain model again."""
    from aha.models.loading import load_model

    peft = require_peft()
    model = load_model(base or adapter_base(adapter_dir), dtype, "cpu", trust_remote_code)
    merged = peft.PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    return merged.to(device)


def export_merged(
    adapter_dir: str | Path, out_dir: str | Path, base: str | None = None, dtype: str = "float32"
) -> Path:
    """Write the merged model (safetensors, in `dtype`) and the tokenizer to `out_dir`, atomically (temp
    dir, then rename). The tokenizer comes from `adapter_dir` when it holds one, else from the base."""
    from aha.models.loading import load_tokenizer, save_model_atomically

    model = load_merged(adapter_dir, dtype, base=base)
    has_tokenizer = (Path(adapter_dir) / "tokenizer_config.json").is_file()
    tokenizer = load_tokenizer(str(adapter_dir) if has_tokenizer else (base or adapter_base(adapter_dir)))
    return save_model_atomically(model, tokenizer, Path(out_dir))


def adapter_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights under the names peft saves them with (what `save_pretrained` writes)."""
    return require_peft().utils.get_peft_model_state_dict(model)


def load_adapter_state(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    require_peft().utils.set_peft_model_state_dict(model, tensors)


@dataclass
class MergeLoRACommand:
    """`aha merge-lora`: an adapter directory merged into its base, written as a plain HF model."""

    adapter_dir: str = option(help="A LoRA adapter directory: a LoRA run's final/ or checkpoints/step-*/.")
    output_dir: str = option(help="Where to write the merged model (safetensors) and tokenizer.")
    base: str | None = option(None, help="The base model (default: the one the adapter config names).")
    dtype: str = option(
        "float32",
        choices=("float32", "bfloat16", "float16"),
        help="dtype the base is loaded, merged and saved in.",
    )


def run_merge_lora(cfg: MergeLoRACommand) -> Path:
    if not is_adapter_dir(cfg.adapter_dir):
        raise ConfigError(
            f"adapter_dir={cfg.adapter_dir!r} has no {ADAPTER_CONFIG}: not a LoRA adapter directory"
        )
    path = export_merged(cfg.adapter_dir, cfg.output_dir, base=cfg.base, dtype=cfg.dtype)
    print(f"wrote {cfg.adapter_dir} merged into its base to {path}")
    return path
