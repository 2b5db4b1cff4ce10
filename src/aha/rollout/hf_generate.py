"""The reference engine: Hugging Face `model.generate`, with the same output layout as the native sampler.

It is the yardstick for the native sampler (correctness and speed) and the fallback for models the
native sampler cannot drive. Only the asked-for sampling settings are used: the model's own
generation config (which may carry a repetition penalty or a default top-k of 50) is ignored.
"""

from __future__ import annotations

import time

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from aha.rollout.base import RolloutBatch, SamplingParams
from aha.rollout.completions import (
    StopStringFinder,
    build_rollout_batch,
    check_sampling_params,
    eos_token_ids,
    tokenize_prompts,
)


class HFGenerateEngine:
    """`model.generate` behind the `RolloutEngine` interface; samples from the live model in-process.

    Log-probs come from the raw logits `generate` returns (`output_logits`, before any processor),
    scaled by the temperature: the untruncated distribution the trainer recomputes. A row ends at its
    first EOS or at the token where aha's `StopStringFinder` sees a stop string (`generate` stops on the
    same token through its `stop_strings`); `seed` seeds a forked global RNG, leaving the caller's intact.
    """

    def __init__(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, add_special_tokens: bool = True
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.add_special_tokens = add_special_tokens  # False for chat-rendered prompts
        self._eos_ids = eos_token_ids(model, tokenizer)

    def sync_weights(self) -> None:
        """Nothing to copy: `generate` runs on the model's current parameters."""

    def generate(self, prompts: list[str], params: SamplingParams) -> RolloutBatch:
        check_sampling_params(params)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=self._rng_devices()):
                if params.seed is not None:
                    torch.manual_seed(params.seed)
                return self._generate(prompts, params)
        finally:
            self.model.train(was_training)

    def _rng_devices(self) -> list:
        device = self.model.device
        return [device] if device.type == "cuda" else []

    def _generation_config(self, params: SamplingParams) -> GenerationConfig:
        sample = params.temperature > 0
        return GenerationConfig(
            max_new_tokens=params.max_new_tokens,
            min_new_tokens=params.min_new_tokens,
            do_sample=sample,
            temperature=params.temperature if sample else None,
            top_k=params.top_k if sample else None,
            top_p=params.top_p if sample else None,
            stop_strings=list(params.stop_strings) or None,
            eos_token_id=self._eos_ids,
            pad_token_id=self.tokenizer.pad_token_id,
            output_logits=True,
            return_dict_in_generate=True,
        )

    def _generate(self, prompts: list[str], params: SamplingParams) -> RolloutBatch:
        started = time.perf_counter()
        prompt_ids, prompt_mask = tokenize_prompts(
            self.tokenizer, prompts, self.model.device, self.add_special_tokens
        )
        # `generate` fills every setting we leave unset from the model's generation config; a blank one
        # in its place for the call means only the library's neutral defaults fill them.
        model_defaults, self.model.generation_config = self.model.generation_config, GenerationConfig()
        try:
            out = self.model.generate(
                input_ids=prompt_ids,
                attention_mask=prompt_mask,
                generation_config=self._generation_config(params),
                tokenizer=self.tokenizer,
            )
        finally:
            self.model.generation_config = model_defaults
        completion_ids = out.sequences[:, prompt_ids.shape[1] :]
        logits = torch.stack(out.logits, dim=1).float()
        if params.temperature > 0:
            logits = logits / params.temperature
        logprobs = torch.log_softmax(logits, dim=-1).gather(2, completion_ids[..., None]).squeeze(-1)
        stop_finder = StopStringFinder(self.tokenizer, params.stop_strings) if params.stop_strings else None
        lengths, truncated = self._completion_lengths(completion_ids, params, stop_finder)
        extras = {"total_s": time.perf_counter() - started, "decode_steps": completion_ids.shape[1]}
        return build_rollout_batch(
            self.tokenizer,
            prompts,
            prompt_ids,
            prompt_mask,
            completion_ids,
            lengths,
            logprobs,
            truncated,
            stop_finder,
            extras,
        )

    def _completion_lengths(
        self, completion_ids: torch.Tensor, params: SamplingParams, stop_finder: StopStringFinder | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's length up to and including its first EOS or stop-string token. A row with neither is
        truncated if it ran to `max_new_tokens`; otherwise `generate` stopped it (its own stop-string
        check) and it keeps everything `generate` returned."""
        width = completion_ids.shape[1]
        is_eos = torch.isin(completion_ids, torch.tensor(self._eos_ids, device=completion_ids.device))
        has_end = is_eos.any(dim=1)
        # argmax returns the first maximum; rows without EOS keep all `width` tokens for now.
        lengths = torch.where(has_end, is_eos.float().argmax(dim=1) + 1, width)
        if stop_finder is not None:
            for row, ids in enumerate(completion_ids.tolist()):
                stop = stop_finder.first_stop_length(ids[: int(lengths[row])])
                if stop is not None:
                    lengths[row], has_end[row] = stop, True
        return lengths, ~has_end & (width == params.max_new_tokens)
