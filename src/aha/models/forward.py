"""One teacher-forced forward pass over prompt + completion, returning per-token log-probs.

Shared by every trainer (policy, old policy, reference) so they all score tokens identically to the
rollout engines: positions come from the attention mask (prompts are left-padded) and only the
completion positions' logits are computed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from aha.algos.logprobs import token_logprobs
from aha.rollout.completions import left_padded_position_ids


@dataclass
class CompletionScores:
    logprobs: torch.Tensor  # [B, C] float32, log pi(completion token | prefix) at the given temperature
    logits: torch.Tensor  # [B, C, V] the logits that produced them (for entropy), not temperature-scaled


def score_completions(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_len: int,
    temperature: float = 1.0,
) -> CompletionScores:
    """Log-probs of the last `completion_len` tokens of `input_ids` given everything before them.

    `logits_to_keep` skips the LM head on prompt positions, which dominate memory for long prompts.
    """
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=left_padded_position_ids(attention_mask),
        use_cache=False,
        logits_to_keep=completion_len + 1,
    )
    logits = out.logits[:, :-1]  # logits at position t predict token t+1
    tokens = input_ids[:, -completion_len:]
    return CompletionScores(token_logprobs(logits, tokens, temperature=temperature), logits)
