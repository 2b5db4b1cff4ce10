"""`aha convert-gguf`: turn a GGUF checkpoint into a plain Hugging Face directory that aha can train.

transformers reads GGUF files (with the `gguf` package) and de-quantizes every tensor on load, but the
loaded model keeps a "quantized with gguf" marker that makes `save_pretrained` refuse, so a run on it
cannot write checkpoints. Here the marker is dropped after loading (the weights are already dense), and
the model and its tokenizer, chat template included, are written as safetensors to a fresh directory.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from aha.config import ConfigError, option
from aha.models.weight_files import WeightFileError, check_gguf

GGUF_DTYPES = ("float32", "bfloat16")


@dataclass
class ConvertGGUFCommand:
    """`aha convert-gguf gguf_file=MODEL.gguf output_dir=DIR [dtype=float32]`."""

    gguf_file: str = option(help="The .gguf file to convert (any quantization transformers can read).")
    output_dir: str = option(help="Directory to write the model and tokenizer to; must not exist yet.")
    dtype: str = option(
        "float32",
        choices=GGUF_DTYPES,
        help="dtype of the written weights (quantized GGUF tensors are de-quantized to it).",
    )

    def validate(self) -> None:
        if not Path(self.gguf_file).is_file():
            raise ConfigError(f"gguf_file={self.gguf_file!r} is not a file")
        if Path(self.output_dir).exists():
            raise ConfigError(f"output_dir={self.output_dir!r} already exists; choose a new directory")


def convert_gguf(gguf_file: str | Path, out_dir: str | Path, dtype: str = "float32") -> Path:
    """Load `gguf_file` with transformers, drop the GGUF quantization marker, and save model + tokenizer
    to `out_dir` (written beside it under a temporary name, then renamed: never half-written)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if dtype not in GGUF_DTYPES:
        raise ValueError(f"dtype={dtype!r} is not one of {list(GGUF_DTYPES)}")
    try:
        import gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError:
        raise ImportError(
            "reading GGUF files needs the gguf package: pip install 'aha[gguf]' (or pip install gguf)"
        ) from None
    gguf_file, out_dir = Path(gguf_file), Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists; choose a new directory")
    elements = check_gguf(gguf_file)
    source = dict(pretrained_model_name_or_path=str(gguf_file.parent), gguf_file=gguf_file.name)
    try:
        _check_model_size(gguf_file, AutoConfig.from_pretrained(**source), elements)
        tokenizer = AutoTokenizer.from_pretrained(**source)
        model, info = AutoModelForCausalLM.from_pretrained(
            **source, dtype=getattr(torch, dtype), output_loading_info=True
        )
    except (ImportError, WeightFileError):
        raise
    except Exception as err:  # a well-formed file whose contents transformers cannot make a model of
        raise WeightFileError(
            f"{gguf_file}: transformers cannot load it: {type(err).__name__}: {err}"
        ) from err
    unloaded = sorted(info["missing_keys"]) + sorted(str(k) for k in info["mismatched_keys"])
    if unloaded:  # transformers fills these in at random and only logs it: a model that is not the file's
        raise WeightFileError(f"{gguf_file}: weights missing or of the wrong shape: {unloaded[:5]}")
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)  # the tensors were de-quantized on load
    tmp = out_dir.with_name(f".tmp-{out_dir.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _check_model_size(gguf_file: Path, config, elements: int) -> None:
    """The model the metadata describes, built on the meta device (no memory), may not have more
    parameters than the file holds tensor elements: damaged metadata (a hidden size of 2**31) would
    otherwise have the model allocated, gigabytes, before its weights fail to fit."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    parameters = sum(p.numel() for p in skeleton.parameters())
    if parameters > elements:
        raise WeightFileError(
            f"{gguf_file}: its metadata describes a model of {parameters} parameters, but the file holds "
            f"{elements} tensor elements (damaged metadata?)"
        )


def run_convert_gguf(cfg: ConvertGGUFCommand) -> Path:
    path = convert_gguf(cfg.gguf_file, cfg.output_dir, cfg.dtype)
    print(f"wrote {cfg.gguf_file} as a Hugging Face model directory ({cfg.dtype}) to {path}")
    return path
