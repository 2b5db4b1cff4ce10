"""Load any causal LM and its tokenizer through `from_pretrained` (a directory or a hub id), and save one
atomically."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_tokenizer(path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """Tokenizer with left padding (prompts are left-padded for batched generation) and a pad token."""
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    path: str, dtype: str = "float32", device: str | torch.device = "cpu", trust_remote_code: bool = False
) -> PreTrainedModel:
    """Load weights with safetensors where the checkpoint has them; remote code only if asked for.

    A LoRA adapter directory (a run's final/ or checkpoint of a LoRA stage) loads as its base model with
    the adapters merged in, so it can be the next stage's `model.path` (needs peft)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not one of {sorted(DTYPES)}")
    if (Path(path) / "adapter_config.json").is_file():
        from aha.models.lora import load_merged

        return load_merged(path, dtype, device, trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code, use_safetensors=None
    )
    return model.to(device)


def save_model_atomically(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: Path) -> Path:
    """Write model + tokenizer to a temp dir beside `out_dir`, then rename: never a half-written model."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".tmp-{out_dir.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir
