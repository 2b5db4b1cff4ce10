"""Models that map a text to one number: reward models and the PPO critic share this one builder.

`load_scalar_model` loads any checkpoint with AutoModelForSequenceClassification(num_labels=1): an
encoder (BERT, MiniLM) gets its pooler + a linear classifier, a decoder (Llama, Qwen2, GPT-2) gets a
linear `score` head on its hidden states (new, zero-mean init, when the checkpoint is a plain LM). Only
the head may be new: a backbone weight missing or of the wrong shape is a damaged checkpoint, refused
(transformers would initialise it at random and print a report).

`sequence_scores` reads the score where it belongs whatever the padding: at the last real token of a
decoder (Hugging Face's own pooling finds it through pad_token_id, which silently reads a padding token
when pad_token_id is unset or equals EOS, and is wrong for left padding), and at [CLS] of an encoder
(which left padding would push off position 0). It moves every row's real tokens to the front first, so
a left- and a right-padded batch give the same scores.

`set_pooling(model, "mean")` reads the score from the masked mean of the last hidden states instead,
through the same linear head: the readout sentence-embedding encoders (all-MiniLM, ...) were trained
for; their [CLS] pooler took no part in that training. The choice is stored in the model's config.json
(`aha_score_pooling`), so a saved reward model is scored the same way wherever it is loaded.
`freeze_lower_layers` stops gradients below the top blocks, which makes each step cheaper.

Under torchrun the model is wrapped (DDP or FSDP2, aha.dist.wrap), whose hooks run only when the model
itself is called: `through_hooks` runs a scoring function as the model's forward for that one call, so
the hooks gather (FSDP2) and register for gradient averaging (DDP) what the function reads.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from transformers import AutoModelForSequenceClassification, PreTrainedModel
from transformers.utils import logging as hf_logging

logger = logging.getLogger(__name__)


def load_scalar_model(
    path: str, dtype: str = "float32", device: str | torch.device = "cpu", trust_remote_code: bool = False
) -> PreTrainedModel:
    """A one-output sequence classifier from a checkpoint directory (a fresh head if it has none)."""
    from aha.models.loading import DTYPES
    from aha.models.weight_files import WeightFileError, check_model_dir

    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not one of {sorted(DTYPES)}")
    check_model_dir(path)
    report = hf_logging.get_logger("transformers.modeling_utils")
    level = report.level
    report.setLevel(logging.ERROR)  # its load report lists the new head, said below in one line
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            path,
            num_labels=1,
            dtype=DTYPES[dtype],
            trust_remote_code=trust_remote_code,
            output_loading_info=True,
        )
    except RuntimeError as err:  # e.g. a weight whose shape is not the one config.json gives
        raise WeightFileError(f"{path}: cannot be loaded as a scoring model: {err}") from err
    finally:
        report.setLevel(level)
    backbone = model.base_model_prefix + "."
    missing = sorted(info["missing_keys"])
    damaged = [k for k in missing if k.startswith(backbone)] + sorted(map(str, info["mismatched_keys"]))
    if damaged:
        raise WeightFileError(
            f"{path}: backbone weights missing or of the wrong shape: {damaged[:5]} (a damaged file, or a "
            "config.json that belongs to another model)"
        )
    if missing:
        logger.info("%s has no score head: a new one (%s) starts from its initialisation", path, missing)
    return model.to(device)


POOLINGS = ("auto", "mean")
POOLING_KEY = "aha_score_pooling"


def set_pooling(model: PreTrainedModel, pooling: str) -> None:
    """Choose where the score is read: "auto" (decoders: the last real token; encoders: the model's own
    head at [CLS]) or "mean" (masked mean of the last hidden states, then the linear head)."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling={pooling!r} is not one of {POOLINGS}")
    if pooling == "mean" and not isinstance(linear_head(model), torch.nn.Linear):
        raise ValueError(
            f"pooling='mean' needs a linear head (`score` or `classifier`); {type(model).__name__} has "
            f"{type(linear_head(model)).__name__}: use pooling='auto'"
        )
    setattr(model.config, POOLING_KEY, pooling)


def pooling_of(model: PreTrainedModel) -> str:
    return getattr(model.config, POOLING_KEY, "auto")


def linear_head(model: PreTrainedModel) -> torch.nn.Module | None:
    return model.score if is_decoder_head(model) else getattr(model, "classifier", None)


def transformer_blocks(model: PreTrainedModel) -> torch.nn.ModuleList:
    """The backbone's stack of num_hidden_layers blocks (BERT encoder.layer, Llama layers, GPT-2 h)."""
    n = model.config.num_hidden_layers
    for module in model.base_model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    raise ValueError(f"{type(model).__name__}: no stack of {n} transformer blocks found to freeze")


def freeze_lower_layers(model: PreTrainedModel, n: int) -> None:
    """Freeze the input embeddings and the lowest `n` blocks (0: nothing). n = every block (or -1) freezes
    the whole base model (final norm and an encoder's pooler too): only the head (`score`/`classifier`)
    trains."""
    if n == 0:
        return
    blocks = transformer_blocks(model)
    n = len(blocks) if n == -1 else n
    if not 0 < n <= len(blocks):
        raise ValueError(f"cannot freeze {n} of the model's {len(blocks)} blocks")
    model.get_input_embeddings().requires_grad_(False)
    base = model.base_model
    for name in ("embeddings", "wpe"):  # position / token-type embeddings beside the word embeddings
        if isinstance(getattr(base, name, None), torch.nn.Module):
            getattr(base, name).requires_grad_(False)
    for block in blocks[:n]:
        block.requires_grad_(False)
    if n == len(blocks):
        model.base_model.requires_grad_(False)


def is_decoder_head(model: PreTrainedModel) -> bool:
    """Decoder classifiers (Llama, Qwen2, Mistral, GPT-2, ...) name their head `score`."""
    return isinstance(getattr(model, "score", None), torch.nn.Module)


def right_align(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each row's real tokens to the front (stable), padding to the end: left padding -> right."""
    order = torch.argsort((attention_mask == 0).to(torch.int8), dim=1, stable=True)
    return input_ids.gather(1, order), attention_mask.gather(1, order)


def reads_hidden_state(model: PreTrainedModel) -> bool:
    """True when the score is a linear head on one pooled hidden vector per row (mean pooling, or a
    decoder's last token): the vector can then be computed once and cached while the backbone is frozen."""
    return pooling_of(model) == "mean" or is_decoder_head(model)


def pooled_hidden(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """The vector per row ([B, hidden]) that the linear head reads (only when reads_hidden_state)."""
    input_ids, attention_mask = right_align(input_ids, attention_mask)
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    if pooling_of(model) == "mean":
        weight = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weight).sum(1) / weight.sum(1)
    last = attention_mask.sum(1) - 1  # right-aligned: the last real token
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def sequence_scores(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """One float32 score per row ([B]) of a padded batch (left or right padding, any pad id)."""
    if bool((attention_mask.sum(1) == 0).any()):
        raise ValueError("a row of the batch has no real token (all-zero attention mask)")
    input_ids, attention_mask = right_align(input_ids, attention_mask)
    if not reads_hidden_state(model):  # an encoder's own head at [CLS]
        return model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0].float()
    return through_hooks(model, _pooled_score, input_ids, attention_mask)


def _pooled_score(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor):
    return linear_head(model)(pooled_hidden(model, input_ids, attention_mask)).squeeze(-1).float()


def through_hooks(model: PreTrainedModel, fn: Callable[..., torch.Tensor], *args: torch.Tensor):
    """fn(model, *args), run as `model`'s forward when the model is wrapped for several processes (its
    DDP / FSDP2 hooks fire around it); a plain call otherwise. A view that fn returns (scores read out
    of a larger tensor) is copied there: FSDP2 hooks its backward on the output, and an in-place op on a
    view would drop that hook."""
    from aha.dist.wrap import is_wrapped

    if not is_wrapped(model):
        return fn(model, *args)

    def forward(*a: torch.Tensor) -> torch.Tensor:
        out = fn(model, *a)
        return out.clone() if out._is_view() else out

    model.forward = forward  # an instance attribute: only this call, hooks unchanged
    try:
        return model(*args)
    finally:
        del model.forward
