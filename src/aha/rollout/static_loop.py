"""The sampling loop around the static decode step: every token decided on the device, the host consulted
only every `STOP_CHECK_EVERY` tokens.

Why: on a GPU, any read of a device value by Python (`int(live.sum())`, `.tolist()`, `if tensor`) waits
for all queued work, so a loop that reads one per token can never run ahead of the GPU, and a graph
replay's saving is lost to the wait. Here the per-token work is tensor ops only: sampling (aha's
`choose_tokens`, no host reads), EOS bookkeeping with `torch.where` on live-row masks, and the next
step's inputs written into the static buffers. Rows that ended keep being computed (with the batch's
shape fixed the graph stays valid; their tokens are masked out). Every `STOP_CHECK_EVERY` tokens one
host read checks stop strings for the block just sampled (one batched decode of the rows still live,
then a search for the exact token only in rows that hit) and whether any row is still live.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch

from aha.models.positions import left_padded_position_ids
from aha.rollout.base import RolloutBatch, SamplingParams
from aha.rollout.completions import StopStringFinder, build_rollout_batch
from aha.rollout.sampling import choose_tokens
from aha.rollout.static_decode import GraphedStep, StaticDecodeStep, StaticWeights

if TYPE_CHECKING:
    from aha.rollout.native import NativeSampler

# Tokens between host checks (stop strings, all rows ended): an early-ending batch runs at most this
# many tokens too far; a check costs one device sync and one batched decode.
STOP_CHECK_EVERY = 16
# Cache capacities are rounded up to this many positions, so batches whose prompts differ a little in
# length reuse one captured graph.
CAPACITY_MULTIPLE = 64
KEEP_STEPS = 2  # batch sizes whose step (KV buffers, graph) is kept: training's and evaluation's


def static_step_for(sampler: NativeSampler, batch: int, needed: int) -> GraphedStep:
    """The sampler's static step for `batch` rows and at least `needed` positions, at the autocast dtype
    in force (if any), with the weights refreshed from the model. Steps are kept between calls (their
    buffers and CUDA graphs), the `KEEP_STEPS` most recently used batch sizes, so training's batch and
    evaluation's each capture once; all share one `StaticWeights`."""
    device = sampler.model.device
    dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None
    weights = sampler.static_weights
    if weights is None or weights.dtype != (dtype or weights.embed.dtype) or weights.device != device:
        sampler.static_steps.clear()  # they read the old buffers
        sampler.static_weights = None  # freed before the new ones are allocated
        weights = sampler.static_weights = StaticWeights(sampler.model, dtype)
    else:
        weights.refresh()
    steps = sampler.static_steps
    kept = steps.pop(batch, None)
    if kept is None or kept.step.capacity < needed:
        kept = None  # freed before a larger one is allocated
        capacity = -(-needed // CAPACITY_MULTIPLE) * CAPACITY_MULTIPLE
        kept = GraphedStep(StaticDecodeStep(weights, batch, capacity), sampler.cuda_graphs)
    steps[batch] = kept  # most recently used last
    while len(steps) > KEEP_STEPS:
        steps.pop(next(iter(steps)))
    return kept


def generate_static(sampler: NativeSampler, prompts: list[str], params: SamplingParams) -> RolloutBatch:
    """`NativeSampler.generate`'s work (same inputs, outputs and semantics) on the static step."""
    device = sampler.model.device
    started = time.perf_counter()
    max_new = params.max_new_tokens
    cache, prompt_ids, prompt_mask, logits, _ = sampler.prefill(prompts, 0, decode="hf")
    batch, prompt_len = prompt_ids.shape
    runner = static_step_for(sampler, batch, prompt_len + max_new)
    runner.step.load_prefill(cache, prompt_mask, left_padded_position_ids(prompt_mask)[:, -1])
    del cache
    prefill_s = time.perf_counter() - started

    generator = None
    if params.seed is not None:
        generator = torch.Generator(device=device).manual_seed(params.seed)
    eos = torch.tensor(sampler.eos_ids, device=device)
    pad = sampler.tokenizer.pad_token_id
    finder = StopStringFinder(sampler.tokenizer, params.stop_strings) if params.stop_strings else None
    completion_ids = torch.full((batch, max_new), pad, dtype=torch.long, device=device)
    logprobs = torch.zeros(batch, max_new, dtype=torch.float32, device=device)
    lengths = torch.full((batch,), max_new, dtype=torch.long, device=device)
    truncated = torch.ones(batch, dtype=torch.bool, device=device)
    live = torch.ones(batch, dtype=torch.bool, device=device)
    checking, checked = list(range(batch)), 0  # rows live at the last check; tokens checked before it

    steps = 0
    for step in range(max_new):
        steps = step + 1
        banned = eos if step < params.min_new_tokens else None
        tokens, token_logprobs = choose_tokens(logits, params, generator, banned)
        tokens = torch.where(live, tokens, pad)
        completion_ids[:, step] = tokens
        logprobs[:, step] = torch.where(live, token_logprobs, 0.0)
        ended = live & torch.isin(tokens, eos)
        lengths.masked_fill_(ended, step + 1)
        truncated &= ~ended
        live &= ~ended
        last = step == max_new - 1
        if steps % STOP_CHECK_EVERY == 0 or last:
            if finder is not None:
                _end_at_stop_strings(
                    finder, completion_ids, lengths, truncated, live, checking, checked, steps
                )
            checking, checked = live.nonzero().flatten().tolist(), steps
            if not checking:
                break
        if last:
            break
        runner.step.set_inputs(tokens, prompt_len + step)
        logits = runner()

    extras = {
        "prefill_s": prefill_s,
        "total_s": time.perf_counter() - started,
        "decode_steps": steps,
        "batch_compactions": 0,
        "decode": "static, CUDA graph" if runner.use_graph else "static",
        **({"graph_capture_error": runner.capture_error} if runner.capture_error else {}),
    }
    return build_rollout_batch(
        sampler.tokenizer,
        prompts,
        prompt_ids,
        prompt_mask,
        completion_ids,
        lengths,
        logprobs,
        truncated,
        finder,
        extras,
    )


def _end_at_stop_strings(
    finder: StopStringFinder,
    completion_ids: torch.Tensor,
    lengths: torch.Tensor,
    truncated: torch.Tensor,
    live: torch.Tensor,
    rows: list[int],
    checked: int,
    upto: int,
) -> None:
    """End each of `rows` (live after its first `checked` tokens, which hold no stop string) at the first
    token among its first `upto` whose text completes a stop string, EOS or not after it."""
    if not rows:
        return
    ids = completion_ids[rows, :upto].tolist()
    ends = lengths[rows].tolist()
    ids = [row_ids[: min(end, upto)] for row_ids, end in zip(ids, ends, strict=True)]
    hits = [
        (row, finder.first_stop_length(row_ids, clear=checked))
        for row, row_ids, hit in zip(rows, ids, finder.rows_with_stop(ids), strict=True)
        if hit
    ]
    if hits:
        index = torch.tensor([row for row, _ in hits], device=lengths.device)
        lengths[index] = torch.tensor([n for _, n in hits], device=lengths.device)
        truncated[index] = False
        live[index] = False
