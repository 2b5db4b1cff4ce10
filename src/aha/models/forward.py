"""One teacher-forced forward pass over prompt + completion, returning per-token log-probs.

Shared by every trainer (policy, old policy, reference) so they all score tokens identically to the
rollout engines: positions come from the attention mask (prompts are left-padded) and only the
completion positions reach the LM head.

GRPO scores each prompt's whole group of completions, so most rows of a batch repeat a prompt. The
prompt is then run once per distinct prompt and its keys/values are shared by the group's rows
(`shared_prompt=True`, the default): the same numbers, gradients included (a shared prompt's
keys/values collect the gradient of every row that reads them, as the per-row graph would), for a
fraction of the prompt work. With an 8-sample group and prompts as long as completions that is
about 44% less forward and backward work. Under gradient checkpointing in training mode with gradients
recorded, HF drops the cache inside checkpointed layers, so those passes run one plain forward over
every row instead (the no-grad reference and old-policy passes still share).

For the models `chunked_head` accepts (the head is a bias-free `nn.Linear` applied to the backbone's
last hidden state and nothing else), when the completion logits would exceed one chunk, the backbone's
hidden states go to aha.algos.head_logprobs, which applies the head a chunk of tokens at a time: no
[B, C, V] logits exist, forward or backward. Otherwise scoring takes the full-logits path
(`token_logprobs` over the model's own logits).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel
from transformers.cache_utils import DynamicCache

from aha.algos.head_logprobs import chunk_tokens_for, head_logprobs
from aha.algos.logprobs import effective_temperature, token_entropy, token_entropy_with_grad, token_logprobs
from aha.dist.wrap import is_wrapped
from aha.models.checkpointing import is_checkpointing
from aha.models.positions import left_padded_position_ids

# Causal-LM classes whose forward is exactly `lm_head(backbone(...).last_hidden_state)`: no logit
# scaling or soft-capping between the two (Gemma 2's final_logit_softcapping, Cohere's logit_scale and
# Granite's logits_scaling all sit there, so those classes are not listed).
PLAIN_HEAD_MODELS = frozenset(
    {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "GPT2LMHeadModel"}
)


@dataclass
class CompletionScores:
    logprobs: torch.Tensor  # [B, C] float32, log pi(completion token | prefix) at the given temperature
    entropy: torch.Tensor | None = None  # [B, C] float32, detached, at that temperature; when asked for


def cache_argument(model: PreTrainedModel) -> str:
    """The name `model.forward` takes its KV cache under (transformers renamed `past_key_values`). A peft
    wrapper passes keyword arguments through to the model it wraps, so that model's name counts."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"


def chunked_head(model: PreTrainedModel) -> torch.nn.Linear | None:
    """The LM head, when the chunked path reproduces the model's logits (a listed class, a bias-free
    `nn.Linear` head, no soft-capping in the config); None sends scoring down the full-logits path."""
    if getattr(getattr(model, "active_peft_config", None), "is_prompt_learning", False):
        return None  # peft's prompt tuning adds virtual tokens in its own forward, which the backbone skips
    if is_wrapped(model):
        return None  # DDP's and FSDP2's hooks run on the model's forward, which the chunked path skips
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft wrapper
    if type(base).__name__ not in PLAIN_HEAD_MODELS:
        return None
    if getattr(base.config.get_text_config(), "final_logit_softcapping", None) is not None:
        return None
    head = base.get_output_embeddings()
    return head if type(head) is torch.nn.Linear and head.bias is None else None


def chunked_head_for(
    model: PreTrainedModel, tokens: int, chunk_tokens: int | None = None
) -> torch.nn.Linear | None:
    """The head to apply in chunks when scoring `tokens` positions, or None for the full-logits path.
    Chunks where `chunked_head` allows and the logits would exceed one chunk; below that the full logits
    take no more memory than a chunk, and the model's own head call is faster (demo model's GRPO update:
    2-3% CPU time, docs/ARCHITECTURE.md). A `chunk_tokens` given forces chunks of that many tokens."""
    head = chunked_head(model)
    if head is None or chunk_tokens is not None:
        return head
    return head if tokens > chunk_tokens_for(head.out_features) else None


def checkpointing_drops_cache(model: PreTrainedModel) -> bool:
    """Whether HF's checkpointed layers may discard a KV cache in this forward: in training mode with
    checkpointing on (transformers 5.25 keeps it when no gradients are recorded, earlier 5.x releases do
    not). The shared-prompt path needs the cache, so it steps aside then."""
    return model.training and is_checkpointing(model)


def score_completions(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_len: int,
    temperature: float = 1.0,
    shared_prompt: bool = True,
    with_entropy: bool = False,
    chunk_tokens: int | None = None,
    entropy_grad: bool = False,
) -> CompletionScores:
    """Log-probs of the last `completion_len` tokens of `input_ids` given everything before them, and
    with `with_entropy` each position's entropy (detached).

    With `shared_prompt`, rows repeating a prompt share one pass over it (module docstring); False runs
    one plain forward over every row, the reference the shared path is tested against. `chunk_tokens`
    forces the chunked head with that many tokens per chunk (`chunked_head_for`). `entropy_grad` keeps the
    entropy's graph (an entropy bonus) and takes the full-logits path for it."""
    temperature = effective_temperature(temperature)
    head = (
        None if entropy_grad else chunked_head_for(model, input_ids.shape[0] * completion_len, chunk_tokens)
    )
    run = _backbone_runner(model) if head is not None else _logits_runner(model)
    prompt_len = input_ids.shape[1] - completion_len
    outputs = None
    if shared_prompt and prompt_len > 0 and not checkpointing_drops_cache(model):
        first_rows, row_prompt = distinct_rows(
            torch.cat([input_ids[:, :prompt_len], attention_mask[:, :prompt_len]], dim=1)
        )
        if len(first_rows) < input_ids.shape[0]:
            first_rows, row_prompt = first_rows.to(input_ids.device), row_prompt.to(input_ids.device)
            outputs = _shared_prompt_outputs(
                model,
                run,
                input_ids[first_rows, :prompt_len],
                attention_mask[first_rows, :prompt_len],
                row_prompt,
                input_ids,
                attention_mask,
            )
    if outputs is None:
        outputs = run(
            completion_len + 1,
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=left_padded_position_ids(attention_mask),
            use_cache=False,
        )[:, :-1]  # t predicts t + 1
    tokens = input_ids[:, -completion_len:]
    if head is None:
        entropy = None
        if with_entropy or entropy_grad:
            entropy = (
                token_entropy_with_grad(outputs, temperature)
                if entropy_grad
                else token_entropy(outputs.detach(), temperature)
            )
        return CompletionScores(token_logprobs(outputs, tokens, temperature=temperature), entropy)
    logprobs, entropy = head_logprobs(
        outputs.reshape(-1, outputs.shape[-1]),
        head.weight,
        tokens.reshape(-1),
        temperature,
        chunk_tokens,
        with_entropy,
    )
    shape = tokens.shape
    return CompletionScores(logprobs.view(shape), None if entropy is None else entropy.view(shape))


def next_token_logprobs(
    model: PreTrainedModel, input_ids: torch.Tensor, loss_mask: torch.Tensor, chunk_tokens: int | None = None
) -> torch.Tensor:
    """Log-probs [N] of the tokens `input_ids[:, 1:]` where `loss_mask[:, 1:]` is set, each given the
    tokens before it, in row-major order (SFT's loss). The batch is right-padded: no attention mask.
    With the chunked head (`chunked_head_for`) only those N positions reach the LM head."""
    targets, where = input_ids[:, 1:], loss_mask[:, 1:].bool()
    head = chunked_head_for(model, int(where.sum()), chunk_tokens)
    if head is None:
        logits = model(input_ids=input_ids, use_cache=False).logits[:, :-1]  # t predicts t + 1
        return token_logprobs(logits, targets)[where]
    hidden = model.get_decoder()(input_ids=input_ids, use_cache=False).last_hidden_state[:, :-1]
    return head_logprobs(hidden[where], head.weight, targets[where], chunk_tokens=chunk_tokens)[0]


# A runner maps (positions to keep from the end, forward kwargs) to [rows, kept, X]: logits (X = V) or
# the backbone's last hidden states (X = H).
Runner = Callable[..., torch.Tensor]


def _logits_runner(model: PreTrainedModel) -> Runner:
    def run(keep: int, **kwargs) -> torch.Tensor:
        # `logits_to_keep` skips the LM head on prompt positions, which dominate memory for long prompts.
        return model(logits_to_keep=keep, **kwargs).logits

    return run


def _backbone_runner(model: PreTrainedModel) -> Runner:
    backbone = model.get_decoder()

    def run(keep: int, **kwargs) -> torch.Tensor:
        return backbone(**kwargs).last_hidden_state[:, -keep:]

    return run


def distinct_rows(block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the first row of each distinct row of `block`, in order of appearance; each row's index into
    them). A dict over the rows: `torch.unique(dim=0)` compares rows one pair at a time, 0.56 vs 0.05 ms
    for a 128 x 14 block."""
    first: dict[tuple[int, ...], int] = {}
    rows: list[int] = []
    inverse = []
    for i, row in enumerate(block.tolist()):
        index = first.setdefault(tuple(row), len(first))
        if index == len(rows):
            rows.append(i)
        inverse.append(index)
    return torch.tensor(rows), torch.tensor(inverse)


def _shared_prompt_outputs(
    model: PreTrainedModel,
    run: Runner,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    row_prompt: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
) -> torch.Tensor:
    """`run`'s outputs [B, C, X] at the positions predicting each row's completion tokens, with each
    distinct prompt (`prompt_ids` [U, P], left-padded) run once and `row_prompt[i]` naming row i's prompt."""
    prompt_len = prompt_ids.shape[1]
    cache = DynamicCache(config=model.config)
    arg = cache_argument(model)
    prefix = run(
        1,
        input_ids=prompt_ids,
        attention_mask=prompt_mask,
        position_ids=left_padded_position_ids(prompt_mask),
        use_cache=True,
        **{arg: cache},
    )
    # index_select, not indexing: the same values, and its backward (index_add) is 4x faster than
    # indexing's (index_put with accumulation) on the CPU. The gradient flows back to the shared prompt.
    first = prefix.index_select(0, row_prompt)  # [B, 1, X]: predicts completion token 0
    if input_ids.shape[1] == prompt_len + 1:
        return first
    for layer in cache.layers:
        layer.keys = layer.keys.index_select(0, row_prompt)
        layer.values = layer.values.index_select(0, row_prompt)
    # The last completion token predicts nothing we score, so it is not fed.
    positions = left_padded_position_ids(attention_mask)[:, prompt_len:-1]
    out = run(
        input_ids.shape[1] - prompt_len - 1,
        input_ids=input_ids[:, prompt_len:-1],
        attention_mask=attention_mask[:, :-1],
        position_ids=positions,
        use_cache=True,
        **{arg: cache},
    )
    return torch.cat([first, out], dim=1)
