"""The default rollout engine: batched sampling from the live model with a preallocated KV cache.

Why not `model.generate`: on small models its time goes to bookkeeping rather than the model. Its
growing cache concatenates every layer's keys and values at every token (copying the whole cache
each step), it runs a stack of logits processors, and it computes nothing we can reuse. Here one
forward per token writes into a buffer sized for prompt + `max_new_tokens`, sampling is a few
tensor ops, finished rows are dropped from the batch once enough of them are done, and the loop
stops when every row has ended. The model is any HF causal LM whose forward accepts a `Cache`.
"""

from __future__ import annotations

import time

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import Cache, DynamicLayer

from aha.models.forward import cache_argument
from aha.models.positions import left_padded_position_ids
from aha.rollout.base import RolloutBatch, SamplingParams
from aha.rollout.completions import (
    StopStringFinder,
    build_rollout_batch,
    check_sampling_params,
    eos_token_ids,
    tokenize_prompts,
)
from aha.rollout.decode_kernel import KernelDecodeStep
from aha.rollout.llama_decode import LlamaDecodeStep, decode_step_for, hand_written_step_applies
from aha.rollout.sampling import choose_tokens
from aha.rollout.static_decode import GraphedStep, StaticWeights
from aha.rollout.static_loop import generate_static

DecodeStep = LlamaDecodeStep | KernelDecodeStep

# Rows that have ended keep being computed until at most this fraction of the batch is still live;
# then the batch is compacted (one copy of the cache), which pays once enough rows are dead.
COMPACT_WHEN_LIVE_FRACTION = 0.75
DECODE_STEPS = ("kernel", "static", "torch", "hf")


class PreallocatedLayer(DynamicLayer):
    """One layer's KV cache in a buffer sized up front: each step writes its keys/values in place and
    attention reads a view of the filled prefix (DynamicLayer instead re-concatenates the whole cache)."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        batch, heads, _, key_dim = key_states.shape
        self.device = key_states.device
        self.key_buffer = key_states.new_empty(batch, heads, self.capacity, key_dim)
        self.value_buffer = value_states.new_empty(batch, heads, self.capacity, value_states.shape[-1])
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start, end = self.length, self.length + key_states.shape[-2]
        if end > self.capacity:
            raise RuntimeError(f"KV cache overflow: {end} positions written, capacity {self.capacity}")
        self.key_buffer[:, :, start:end] = key_states
        self.value_buffer[:, :, start:end] = value_states
        self.mark_filled(end)
        return self.keys, self.values

    def mark_filled(self, length: int) -> None:
        """The first `length` positions of the buffers hold keys/values (written in place by a decode step)."""
        self.length = length
        self.keys = self.key_buffer[:, :, :length]
        self.values = self.value_buffer[:, :, :length]

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep only the rows in `indices`, copying just the filled part of the buffers."""
        for name in ("key_buffer", "value_buffer"):
            old = getattr(self, name)
            new = old.new_empty(len(indices), *old.shape[1:])
            new[:, :, : self.length] = old[indices, :, : self.length]
            setattr(self, name, new)
        self.keys = self.key_buffer[:, :, : self.length]
        self.values = self.value_buffer[:, :, : self.length]

    def hold_rounded_in_float32(self, dtype: torch.dtype) -> None:
        """Re-store both buffers as float32 holding values rounded to `dtype`: what the torch decode step's
        CPU attention under autocast reads (aha.rollout.llama_decode.low_precision_attention_cpu), once
        here rather than converted at every token."""
        self.key_buffer = self.key_buffer.to(dtype).float()
        self.value_buffer = self.value_buffer.to(dtype).float()
        self.mark_filled(self.length)


class NativeSampler:
    """Samples from the live `model` in-process, so `sync_weights` has nothing to do.

    Prompts are tokenised with the tokenizer's defaults (`tokenizer(prompts)`: BOS etc. added as the
    tokenizer decides; none added for chat-rendered prompts) and left-padded. Positions count from each row's first real token
    (`left_padded_position_ids`), as `generate` does. A row ends at EOS (any id in the tokenizer's or
    the generation config's EOS) or at the first token whose text completes a stop string; that token
    stays in the completion and mask. The text is cut right after the stop string.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        decode: str = "kernel",
        add_special_tokens: bool = True,
        cuda_graphs: bool | None = None,
    ):
        """`decode` is the fastest decoding step allowed: "kernel" (on the CPU the compiled fp32 step,
        else the torch one; on a GPU the static step), "static" (static KV cache, device-side loop,
        aha.rollout.static_loop; a CUDA graph on GPUs), "torch" (the hand-written Llama step in torch
        ops) or "hf" (the model's own forward). Each falls back to the next where it does not apply
        (`hand_written_step_applies`, `decode_step_for`). `cuda_graphs` (default: on CUDA) captures
        and replays the static step. `add_special_tokens`: False for chat-rendered prompts (see
        `tokenize_prompts`)."""
        if decode not in DECODE_STEPS:
            raise ValueError(f"decode={decode!r} is not one of {list(DECODE_STEPS)}")
        self.model = model
        self.tokenizer = tokenizer
        self.decode = decode
        self.add_special_tokens = add_special_tokens
        self._cache_arg = cache_argument(model)
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.cuda_graphs = cuda_graphs
        # The static path's state, kept between calls (aha.rollout.static_loop.static_step_for).
        self.static_weights: StaticWeights | None = None
        self.static_steps: dict[int, GraphedStep] = {}  # batch size -> step, most recently used last

    def sync_weights(self) -> None:
        """Nothing to copy: sampling reads the model's current parameters."""

    def generate(self, prompts: list[str], params: SamplingParams) -> RolloutBatch:
        check_sampling_params(params)
        was_training = self.model.training
        self.model.eval()
        try:
            # no_grad rather than inference_mode: the outputs go on to autograd in the trainer.
            with torch.no_grad():
                if self._static_applies():
                    return generate_static(self, prompts, params)
                return self._generate(prompts, params)
        finally:
            self.model.train(was_training)

    def _static_applies(self) -> bool:
        wanted = self.decode == "static" or (self.decode == "kernel" and self.model.device.type == "cuda")
        return wanted and hand_written_step_applies(self.model)

    def _forward(self, input_ids, attention_mask, position_ids, cache) -> torch.Tensor:
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_arg: cache},
        )
        return out.logits[:, -1]

    @staticmethod
    def _fast_step(decode_step, tokens, positions, cache, length, attention) -> torch.Tensor:
        layers = cache.layers
        keys, values = [layer.key_buffer for layer in layers], [layer.value_buffer for layer in layers]
        logits = decode_step(tokens, positions, keys, values, length, attention)
        for layer in layers:
            layer.length = length + 1
        return logits

    def prefill(
        self, prompts: list[str], max_new: int, decode: str | None = None
    ) -> tuple[Cache, torch.Tensor, torch.Tensor, torch.Tensor, DecodeStep | None]:
        """Run the prompts through the model once, filling a cache with room for `max_new` more tokens.

        Repeated prompts (GRPO samples a group of completions per prompt) are computed once and their
        cache rows copied. Returns the cache, the left-padded prompt ids and mask, the logits for each
        row's first new token, and the decoding step to go on with (None: the HF forward). The
        compiled step runs the prefill too; otherwise the HF forward does. `decode` overrides the
        sampler's choice of step ("hf": none is built).
        """
        device = self.model.device
        unique = list(dict.fromkeys(prompts))
        ids, mask = tokenize_prompts(self.tokenizer, unique, device, self.add_special_tokens)
        capacity = ids.shape[1] + max_new
        decode_step, decode = None, decode or self.decode
        if decode != "hf":
            decode_step = decode_step_for(self.model, capacity, kernel=decode == "kernel")
        num_layers = self.model.config.get_text_config().num_hidden_layers
        cache = Cache(layers=[PreallocatedLayer(capacity) for _ in range(num_layers)])
        if isinstance(decode_step, KernelDecodeStep):
            logits = self._kernel_prefill(decode_step, ids, mask, cache)
        else:
            logits = self._forward(ids, mask, left_padded_position_ids(mask), cache)
        if isinstance(decode_step, LlamaDecodeStep) and decode_step.attend_in_float32:
            for layer in cache.layers:
                layer.hold_rounded_in_float32(decode_step.matmul_dtype)
        if len(unique) < len(prompts):
            index = {prompt: i for i, prompt in enumerate(unique)}
            rows = torch.tensor([index[p] for p in prompts], device=device)
            cache.batch_select_indices(rows)
            ids, mask, logits = ids[rows], mask[rows], logits[rows]
        return cache, ids, mask, logits, decode_step

    @staticmethod
    def _kernel_prefill(
        step: KernelDecodeStep, ids: torch.Tensor, mask: torch.Tensor, cache: Cache
    ) -> torch.Tensor:
        """The prefill in one kernel call, writing straight into the cache's preallocated buffers (the HF
        prefill of a few short prompts costs tens of milliseconds for little work)."""
        batch, length = ids.shape
        empty = torch.empty(batch, step.kv_heads, 0, step.head_dim)
        for layer in cache.layers:
            layer.lazy_initialization(empty, empty)
        logits = step.forward_tokens(
            ids,
            left_padded_position_ids(mask),
            [layer.key_buffer for layer in cache.layers],
            [layer.value_buffer for layer in cache.layers],
            0,
            mask,
        )
        for layer in cache.layers:
            layer.mark_filled(length)
        return logits

    def _generate(self, prompts: list[str], params: SamplingParams) -> RolloutBatch:
        device = self.model.device
        started = time.perf_counter()
        max_new = params.max_new_tokens
        cache, prompt_ids, prompt_mask, logits, decode_step = self.prefill(prompts, max_new)
        batch, prompt_len = prompt_ids.shape
        padded = not bool(prompt_mask.all())
        prefill_s = time.perf_counter() - started

        generator = None
        if params.seed is not None:
            generator = torch.Generator(device=device).manual_seed(params.seed)
        eos = torch.tensor(self.eos_ids, device=device)
        stop_finder = StopStringFinder(self.tokenizer, params.stop_strings) if params.stop_strings else None
        completion_ids = torch.full(
            (batch, max_new), self.tokenizer.pad_token_id, dtype=torch.long, device=device
        )
        logprobs = torch.zeros(batch, max_new, dtype=torch.float32, device=device)
        lengths = torch.full((batch,), max_new, dtype=torch.long, device=device)
        truncated = torch.ones(batch, dtype=torch.bool, device=device)
        # The current batch: `rows[j]` is the prompt index of batch row j; `live[j]` whether it is unfinished.
        rows = torch.arange(batch, device=device)
        live = torch.ones(batch, dtype=torch.bool, device=device)
        attention = torch.zeros(batch, prompt_len + max_new, dtype=torch.long, device=device)
        attention[:, :prompt_len] = prompt_mask
        next_position = left_padded_position_ids(prompt_mask)[:, -1:] + 1

        steps = compactions = 0
        for step in range(max_new):
            steps = step + 1
            banned = eos if step < params.min_new_tokens else None
            tokens, token_logprobs = choose_tokens(logits, params, generator, banned)
            completion_ids[rows, step] = tokens
            logprobs[rows, step] = token_logprobs
            ended = live & torch.isin(tokens, eos)
            if stop_finder is not None:
                live_idx = live.nonzero().flatten()
                hits = stop_finder.rows_ending_here(completion_ids, rows[live_idx].tolist(), step)
                ended[live_idx[torch.tensor(hits, dtype=torch.bool, device=device)]] = True
            lengths[rows[ended]] = step + 1
            truncated[rows[ended]] = False
            live &= ~ended
            num_live = int(live.sum())
            if num_live == 0 or step == max_new - 1:
                break
            if num_live <= COMPACT_WHEN_LIVE_FRACTION * len(rows):
                keep = live.nonzero().flatten()
                compactions += 1
                cache.batch_select_indices(keep)
                rows, live, tokens = rows[keep], live[keep], tokens[keep]
                attention, next_position = attention[keep], next_position[keep]
            attention[:, prompt_len + step] = 1
            length = prompt_len + step  # cache entries before this token
            if decode_step is None:
                logits = self._forward(tokens[:, None], attention[:, : length + 1], next_position, cache)
            else:
                logits = self._fast_step(
                    decode_step, tokens, next_position[:, 0], cache, length, attention if padded else None
                )
            next_position = next_position + 1

        extras = {
            "prefill_s": prefill_s,
            "total_s": time.perf_counter() - started,
            "decode_steps": steps,
            "batch_compactions": compactions,
        }
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
