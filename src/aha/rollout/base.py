"""What every rollout engine takes and returns, so trainers never depend on a particular engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. temperature == 0 means greedy. top_k == 0 and top_p == 1 disable truncation."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop_strings: tuple[str, ...] = ()
    min_new_tokens: int = 0  # EOS is forbidden before this many tokens (benchmarks force exact lengths)
    seed: int | None = None


@dataclass
class RolloutBatch:
    """Prompts and their sampled completions, as padded tensors plus the decoded text.

    Prompts are left-padded and completions right-padded, so `torch.cat([prompt_ids, completion_ids], 1)`
    is a valid batch for one teacher-forced forward pass (with `attention_mask` below).

    `logprobs[i, t]` is log pi(completion_ids[i, t] | prefix) under the *temperature-scaled, untruncated*
    distribution (logits / T) of the model that sampled, i.e. exactly what a trainer recomputes with the
    same temperature; top-k/top-p only change which tokens could be drawn. For greedy decoding (T == 0)
    they are plain log-softmax log-probs.
    """

    prompt_ids: torch.Tensor  # [B, P] long, left-padded with pad_token_id
    prompt_mask: torch.Tensor  # [B, P] long/bool, 1 on real prompt tokens
    completion_ids: torch.Tensor  # [B, C] long, right-padded with pad_token_id after EOS / stop
    completion_mask: torch.Tensor  # [B, C] long/bool, 1 on generated tokens (EOS included)
    logprobs: torch.Tensor  # [B, C] float32, 0 where completion_mask == 0
    prompts: list[str]
    completions: list[str]  # decoded text, EOS / stop string handling documented by the engine
    truncated: torch.Tensor  # [B] bool: hit max_new_tokens without EOS or a stop string
    extras: dict = field(default_factory=dict)  # engine-specific timings etc.

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask, self.completion_mask], dim=1).long()


class RolloutEngine(Protocol):
    """Generates completions for a list of prompt strings. Engines hold a reference to the policy
    (or a copy they refresh in `sync_weights`), never an optimizer."""

    def generate(self, prompts: list[str], params: SamplingParams) -> RolloutBatch: ...

    def sync_weights(self) -> None:
        """Make the engine sample from the trainer's current weights (a no-op for in-process engines)."""
        ...
