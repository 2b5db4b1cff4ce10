"""Rollout engines: turn prompt strings into sampled completions with per-token log-probs.

`make_engine(name, model, tokenizer)` picks one by name: "native" (the fast default) or "hf" (the
`model.generate` reference).
"""

from __future__ import annotations

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from aha.rollout.base import RolloutBatch, RolloutEngine, SamplingParams
from aha.rollout.hf_generate import HFGenerateEngine
from aha.rollout.native import NativeSampler

ENGINES = ("native", "hf")


def make_engine(
    name: str,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    add_special_tokens: bool = True,
    decode: str = "kernel",
) -> RolloutEngine:
    """The engine called `name`, sampling from `model` (in-process engines hold a reference, not a copy).
    `add_special_tokens=False` for chat-rendered prompts, which already hold the template's BOS etc.
    `decode`: the native sampler's fastest allowed decoding step (NativeSampler; "hf" for the model's
    own forward)."""
    if name == "native":
        return NativeSampler(model, tokenizer, decode=decode, add_special_tokens=add_special_tokens)
    if name == "hf":
        return HFGenerateEngine(model, tokenizer, add_special_tokens=add_special_tokens)
    raise ValueError(f"rollout.engine={name!r} is not one of {list(ENGINES)}")


__all__ = [
    "ENGINES",
    "HFGenerateEngine",
    "NativeSampler",
    "RolloutBatch",
    "RolloutEngine",
    "SamplingParams",
    "make_engine",
]
