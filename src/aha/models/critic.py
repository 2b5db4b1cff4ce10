"""PPO's critic: a value per completion token, from the one backbone + scalar-head model of
`aha.models.scalar_head` (the reward model's builder).

V_t is read where the policy reads the logits that predict completion token t (the hidden state of
the token before it), so it values the state the policy acted in: the prompt and the tokens so far.
Prompts are left-padded and completions right-padded, as the policy's scoring has them; positions
come from the attention mask, as there.
"""

from __future__ import annotations

from functools import partial

import torch
from transformers import PreTrainedModel

from aha.models.positions import left_padded_position_ids
from aha.models.scalar_head import is_decoder_head, load_scalar_model, through_hooks


def build_critic(
    path: str, device: str, *, policy: PreTrainedModel | None = None, trust_remote_code: bool = False
) -> PreTrainedModel:
    """The critic from a checkpoint directory: a causal LM (a fresh zero-mean head on its backbone) or a
    reward model (its trained head kept). With `policy`, the critic's backbone is replaced by the
    policy's own module (a value head on the policy's backbone, no second copy of its weights)."""
    critic = load_scalar_model(path, "float32", device, trust_remote_code=trust_remote_code)
    if not is_decoder_head(critic):
        raise ValueError(
            f"{path} loads as an encoder classifier ({type(critic).__name__}); the critic needs a decoder "
            "(one value per token), such as the policy's own architecture"
        )
    if policy is not None:
        prefix = critic.base_model_prefix
        if type(getattr(policy, prefix, None)) is not type(getattr(critic, prefix)):
            raise ValueError(
                f"the policy has no {prefix!r} backbone like the critic's; use a separate critic"
            )
        setattr(critic, prefix, getattr(policy, prefix))
    return critic


def token_values(
    critic: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_len: int,
    backbone_grad: bool = True,
) -> torch.Tensor:
    """Float32 values [B, completion_len] of the completion's states. `backbone_grad=False` runs the
    backbone without gradient (a head trained on fixed features, for a head on the policy's backbone).
    Under torchrun the readout runs as the wrapped critic's forward (`through_hooks`), so DDP / FSDP2
    gather and average what it reads."""
    read = partial(_token_values, completion_len=completion_len, backbone_grad=backbone_grad)
    return through_hooks(critic, read, input_ids, attention_mask)


def _token_values(
    critic: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    completion_len: int,
    backbone_grad: bool,
) -> torch.Tensor:
    with torch.set_grad_enabled(backbone_grad and torch.is_grad_enabled()):
        hidden = critic.base_model(
            input_ids=input_ids[:, :-1],  # the last token predicts nothing that is scored
            attention_mask=attention_mask[:, :-1],
            position_ids=left_padded_position_ids(attention_mask)[:, :-1],
            use_cache=False,
        ).last_hidden_state[:, -completion_len:]
    return critic.score(hidden).squeeze(-1).float()
