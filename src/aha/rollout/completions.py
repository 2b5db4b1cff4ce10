"""What every engine does around the model: tokenising prompts, spotting where a completion ends
(EOS or a stop string) and turning sampled token rows into a `RolloutBatch`.

Kept apart from the engines so the native sampler and the `generate` reference produce exactly the
same layout, masks and text from the same tokens.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from aha.rollout.base import RolloutBatch, SamplingParams


def check_sampling_params(params: SamplingParams) -> None:
    """Reject settings that would silently sample something other than what was asked for."""
    if params.max_new_tokens < 1:
        raise ValueError(f"SamplingParams.max_new_tokens must be >= 1, got {params.max_new_tokens}")
    if not 0 <= params.min_new_tokens <= params.max_new_tokens:
        raise ValueError(
            f"SamplingParams.min_new_tokens must be in [0, max_new_tokens={params.max_new_tokens}], "
            f"got {params.min_new_tokens}"
        )
    if params.temperature < 0:
        raise ValueError(f"SamplingParams.temperature must be >= 0 (0 = greedy), got {params.temperature}")
    if not 0 < params.top_p <= 1:
        raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {params.top_p}")
    if params.top_k < 0:
        raise ValueError(f"SamplingParams.top_k must be >= 0 (0 = off), got {params.top_k}")
    if any(not s for s in params.stop_strings):
        raise ValueError(
            f"SamplingParams.stop_strings must not contain empty strings: {params.stop_strings!r}"
        )


def tokenize_prompts(
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    device: torch.device,
    add_special_tokens: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and mask. By default tokenised with the tokenizer's defaults (`tokenizer(prompts)`,
    so special tokens such as BOS are added exactly as a trainer calling the tokenizer the same way would
    get); `add_special_tokens=False` for chat-rendered text, which already holds the template's."""
    if not prompts:
        raise ValueError("generate() needs at least one prompt")
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token; load it with aha.models.loading.load_tokenizer")
    enc = tokenizer(
        prompts,
        padding=True,
        padding_side="left",
        return_tensors="pt",
        add_special_tokens=add_special_tokens,
    )
    mask = enc["attention_mask"]
    empty = (mask.sum(1) == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"prompts at indices {empty} are empty after tokenisation; nothing to condition on")
    return enc["input_ids"].to(device), mask.to(device)


def eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Every id that ends a completion: the tokenizer's EOS and those in the model's generation config
    (chat models often list several, e.g. an end-of-turn token and end-of-text)."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if config_eos is not None:
        ids.update([config_eos] if isinstance(config_eos, int) else config_eos)
    if not ids:
        raise ValueError("neither the tokenizer nor the model's generation config defines an EOS token")
    return sorted(ids)


class StopStringFinder:
    """Finds the first token at which a completion's decoded text contains a stop string.

    Only the last `window` tokens are decoded per check: a stop string of n characters is spread over
    at most n tokens, and the margin covers tokens that decode to nothing alone (byte pieces, specials).
    Text is decoded with `skip_special_tokens=True`, the same way the final completion text is.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop_strings: tuple[str, ...]):
        self.tokenizer = tokenizer
        self.stop_strings = stop_strings
        self.window = 4 * max((len(s) for s in stop_strings), default=0) + 4

    def rows_ending_here(self, completion_ids: torch.Tensor, rows: list[int], step: int) -> list[bool]:
        """For each row, whether the text of `completion_ids[row, : step + 1]` has a stop string that the
        text up to `step` did not have (the caller stops rows the first time this is true)."""
        start = max(0, step + 1 - self.window)
        tails = completion_ids[rows, start : step + 1].tolist()
        texts = self.tokenizer.batch_decode(tails, skip_special_tokens=True)
        return [any(s in text for s in self.stop_strings) for text in texts]

    def first_stop_length(self, ids: list[int], clear: int = 0) -> int | None:
        """How many of `ids` it takes for their text to contain a stop string (None: it never does).
        `clear`: the caller knows the first `clear` tokens' text holds none (the search starts after them).

        For a finished sequence: a binary search over prefix lengths, as containing a stop string
        only becomes true as tokens are added."""
        if not self._has_stop(ids):
            return None
        low, high = clear + 1, len(ids)
        while low < high:
            middle = (low + high) // 2
            if self._has_stop(ids[:middle]):
                high = middle
            else:
                low = middle + 1
        return low

    def rows_with_stop(self, rows_ids: list[list[int]]) -> list[bool]:
        """For each token row, whether its whole text contains a stop string (one batched decode)."""
        texts = self.tokenizer.batch_decode(rows_ids, skip_special_tokens=True)
        return [any(s in text for s in self.stop_strings) for text in texts]

    def _has_stop(self, ids: list[int]) -> bool:
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return any(s in text for s in self.stop_strings)

    def cut_text(self, text: str) -> str:
        """The text up to and including the earliest-ending stop string (the last token may go past it)."""
        ends = [text.find(s) + len(s) for s in self.stop_strings if s in text]
        return text[: min(ends)] if ends else text


def build_rollout_batch(
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    lengths: torch.Tensor,
    logprobs: torch.Tensor,
    truncated: torch.Tensor,
    stop_finder: StopStringFinder | None,
    extras: dict | None = None,
) -> RolloutBatch:
    """Pad and mask everything after each row's `lengths[i]` tokens and decode the kept tokens.

    Completion text: the kept tokens (EOS and the stop string's tokens included) decoded with
    `skip_special_tokens=True`, so EOS text never appears, then cut right after the stop string.
    """
    width = int(lengths.max().item()) if lengths.numel() else 0
    completion_ids = completion_ids[:, :width]
    positions = torch.arange(width, device=completion_ids.device)
    completion_mask = (positions[None, :] < lengths[:, None].to(completion_ids.device)).long()
    completion_ids = completion_ids.masked_fill(completion_mask == 0, tokenizer.pad_token_id)
    logprobs = logprobs[:, :width].float().masked_fill(completion_mask == 0, 0.0)
    kept = [row[:n] for row, n in zip(completion_ids.tolist(), lengths.tolist(), strict=True)]
    texts = tokenizer.batch_decode(kept, skip_special_tokens=True)
    if stop_finder is not None:
        texts = [stop_finder.cut_text(text) for text in texts]
    return RolloutBatch(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        completion_ids=completion_ids,
        completion_mask=completion_mask,
        logprobs=logprobs,
        prompts=list(prompts),
        completions=texts,
        truncated=truncated.bool(),
        extras=extras or {},
    )
