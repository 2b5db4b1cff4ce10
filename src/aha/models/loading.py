"""Load any causal LM and its tokenizer through `from_pretrained` (a directory or a hub id), and save one
atomically."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from aha.models.weight_files import WeightFileError, check_model_dir
from aha.write_errors import write_failed

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
    check_model_dir(path)
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            path,
            dtype=DTYPES[dtype],
            trust_remote_code=trust_remote_code,
            use_safetensors=None,
            output_loading_info=True,
        )
    except RuntimeError as err:  # e.g. a weight whose shape is not the one config.json gives
        raise WeightFileError(f"{path}: cannot be loaded as a model: {err}") from err
    missing = sorted(info["missing_keys"]) + sorted(str(k) for k in info["mismatched_keys"])
    if missing:  # transformers would fill these in at random and only log it
        raise WeightFileError(
            f"{path}: weights missing or of the wrong shape: {missing[:5]} (a damaged file, or a "
            "config.json that belongs to another model)"
        )
    return model.to(device)


def save_model_atomically(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: Path,
    state_dict: dict | None = None,
) -> Path:
    """Write model + tokenizer to a temp dir beside `out_dir`, then rename: never a half-written model,
    and a failed write (a full disk) leaves the model that was there before. `state_dict`: the whole
    weights when the model's own tensors are shards (FSDP2, aha.dist.wrap.full_state_dict)."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".tmp-{out_dir.name}-{os.getpid()}")
    replaced = out_dir.with_name(f".replaced-{out_dir.name}-{os.getpid()}")
    for stale in [
        *out_dir.parent.glob(f".tmp-{out_dir.name}-*"),
        *out_dir.parent.glob(f".replaced-{out_dir.name}-*"),
    ]:
        shutil.rmtree(stale, ignore_errors=True)  # left by a killed save (this one's pid or another's)
    try:
        if state_dict is None:
            model.save_pretrained(tmp)
        else:
            model.save_pretrained(tmp, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        kept = f"{out_dir} is as it was" if out_dir.exists() else f"{out_dir} was not written"
        raise write_failed(out_dir, exc, kept) from exc
    if out_dir.exists():
        os.replace(out_dir, replaced)  # kept whole until the new one is in place
    os.replace(tmp, out_dir)
    shutil.rmtree(replaced, ignore_errors=True)
    return out_dir
