"""Models that map a text to one number: reward models and the PPO critic share this one builder.

`load_scalar_model` loads any checkpoint with AutoModelForSequenceClassification(num_labels=1): an
encoder (BERT, MiniLM) gets its pooler + a linear classifier, a decoder (Llama, Qwen2, GPT-2) gets a
linear `score` head on its hidden states (new, zero-mean init, when the checkpoint is a plain LM).

`sequence_scores` reads the score where it belongs whatever the padding: at the last real token of a
decoder (Hugging Face's own pooling finds it through pad_token_id, which silently reads a padding token
when pad_token_id is unset or equals EOS, and is wrong for left padding), and at [CLS] of an encoder
(which left padding would push off position 0). It moves every row's real tokens to the front first, so
a left- and a right-padded batch give the same scores.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForSequenceClassification, PreTrainedModel


def load_scalar_model(
    path: str, dtype: str = "float32", device: str | torch.device = "cpu", trust_remote_code: bool = False
) -> PreTrainedModel:
    """A one-output sequence classifier from a checkpoint directory (a fresh head if it has none)."""
    from aha.models.loading import DTYPES

    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not one of {sorted(DTYPES)}")
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=1, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code
    )
    return model.to(device)


def is_decoder_head(model: PreTrainedModel) -> bool:
    """Decoder classifiers (Llama, Qwen2, Mistral, GPT-2, ...) name their head `score`."""
    return isinstance(getattr(model, "score", None), torch.nn.Module)


def right_align(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each row's real tokens to the front (stable), padding to the end: left padding -> right."""
    order = torch.argsort((attention_mask == 0).to(torch.int8), dim=1, stable=True)
    return input_ids.gather(1, order), attention_mask.gather(1, order)


def sequence_scores(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """One float32 score per row ([B]) of a padded batch (left or right padding, any pad id)."""
    if bool((attention_mask.sum(1) == 0).any()):
        raise ValueError("a row of the batch has no real token (all-zero attention mask)")
    input_ids, attention_mask = right_align(input_ids, attention_mask)
    if not is_decoder_head(model):
        return model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0].float()
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    last = attention_mask.sum(1) - 1  # right-aligned: the last real token
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return model.score(hidden[rows, last]).squeeze(-1).float()
