"""Two CPU processes (gloo) give the one-process update: one GRPO policy update and one SFT step on a
global batch, split across 2 ranks by whole groups (rows) and wrapped by DDP or FSDP2, leave the same
weights and log the same loss and metrics as one process on the whole batch.

Sampling from the wrapped model (FSDP2: on weights gathered once) gives the one-process completions.
Also under LoRA (only the adapters train), gradient checkpointing (layers recomputed in backward, through
the wrappers' hooks) and bf16-mixed (FSDP2 gathers bf16 weights; one process autocasts float32 ones).

SGD, not AdamW: SGD's step is the gradient itself, so equal weights mean equal gradients (AdamW's first
step is about lr * sign(gradient) and would hide most of a gradient's error). The tolerance is the one
of `forward_atol` applied to the size of the step: splitting the rows across ranks only changes in which
order the same float32 terms are summed.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from helpers.dist_workers import spawn_workers, update_worker
from helpers.tolerances import BF16_UNIT_ROUNDOFF, forward_atol

from aha.models.checkpointing import enable_gradient_checkpointing
from aha.models.loading import load_model, load_tokenizer
from aha.models.lora import apply_lora
from aha.models.lora_config import LoRAConfig
from aha.rollout import make_engine
from aha.rollout.base import SamplingParams
from aha.train.policy_update import PolicyLossSettings, UpdateBatch, completion_logprobs, policy_update
from aha.train.precision import Precision
from aha.train.sft import TokenBatch, rank_scaled_nll

GROUP, GROUPS, PROMPT, COMPLETION = 2, 4, 4, 6
LR = 0.5
SETTINGS = {
    loss_agg: PolicyLossSettings(
        clip_low=0.2,
        clip_high=0.28,
        beta=0.1,
        kl_estimator="k3",
        loss_agg=loss_agg,
        temperature=1.0,
        norm_constant=GROUPS * GROUP * COMPLETION,
    )
    for loss_agg in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")
}


def build(model_dir, variant: str = ""):
    """The tiny model as a case runs it: plain, with LoRA adapters, or with gradient checkpointing."""
    model = load_model(str(model_dir))
    if variant == "lora":
        torch.manual_seed(0)  # the adapters' A matrices: the same draw in every process
        model = apply_lora(model, LoRAConfig(r=4, alpha=8.0), str(model_dir))
    if variant == "checkpointing":
        enable_gradient_checkpointing(model)
    return model


def make_batch(model) -> UpdateBatch:
    """Completions of different lengths (the ranks hold different numbers of tokens, so the weighting
    matters), old and reference log-probs away from the current ones (ratios clip, KL is not 0)."""
    g = torch.Generator().manual_seed(1)
    prompts = torch.randint(3, 40, (GROUPS, PROMPT), generator=g).repeat_interleave(GROUP, 0)
    completions = torch.randint(3, 40, (GROUPS * GROUP, COMPLETION), generator=g)
    lengths = torch.tensor([1, 2, 1, 3, 6, 6, 5, 4])  # rank 0: 7 tokens, rank 1: 21
    completion_mask = (torch.arange(COMPLETION)[None] < lengths[:, None]).long()
    batch = UpdateBatch(
        input_ids=torch.cat([prompts, completions.masked_fill(completion_mask == 0, 0)], 1),
        attention_mask=torch.cat([torch.ones_like(prompts), completion_mask], 1),
        completion_mask=completion_mask,
        advantages=torch.randn(GROUPS * GROUP, generator=g),
    )
    current = completion_logprobs(model, batch, temperature=1.0)
    batch.old_logprobs = current + 0.3 * torch.randn(current.shape, generator=g)
    batch.ref_logprobs = current + 0.5 * torch.randn(current.shape, generator=g)
    return batch


def sft_batch() -> TokenBatch:
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(3, 40, (4, 10), generator=g)
    loss_mask = torch.zeros_like(ids)
    for row, (start, end) in enumerate([(3, 5), (2, 10), (4, 9), (6, 10)]):  # 2+8+5+4 tokens
        loss_mask[row, start:end] = 1
    return TokenBatch(ids, loss_mask)


def sgd(model) -> torch.optim.SGD:
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR)


def _assert_same_weights(base, one, two, precision: str = "fp32", what: str = "") -> None:
    """`two` (2 ranks) equals `one` (one process), both a step from `base`, to float rounding: float32's
    (`forward_atol`), or under bf16-mixed one bf16 rounding (2^-8) of each of the 2 * layers + 1 passes
    over the residual stream, twice (forward and backward), of the step."""
    step = max((one[k] - base[k]).abs().max().item() for k in one)
    assert step > 1e-3  # the update moved the weights: the comparison below is not vacuous
    atol = forward_atol(_CONFIG, step)
    if precision == "bf16-mixed":
        atol = 2 * (2 * _CONFIG.num_hidden_layers + 1) * BF16_UNIT_ROUNDOFF * step
    assert one.keys() == two.keys()
    for k in one:
        err = (two[k] - one[k]).abs().max().item()
        assert err <= atol, (what, k, err, atol, step)


_CONFIG = None
# name -> (settings, micro-batch size, model variant, precision); token-mean also accumulates over
# micro-batches
CASES = {
    loss_agg: (settings, GROUP if loss_agg == "token-mean" else 0, "", "fp32")
    for loss_agg, settings in SETTINGS.items()
}
CASES["lora"] = (SETTINGS["token-mean"], 0, "lora", "fp32")
CASES["checkpointing"] = (SETTINGS["token-mean"], GROUP, "checkpointing", "fp32")
# bf16 rounds log-probs by ~1e-2: a token near a clip boundary could land on either side in the two
# computations and swing its whole gradient, so this case clips nowhere (the surrogate stays smooth)
CASES["bf16-mixed"] = (
    dataclasses.replace(SETTINGS["token-mean"], clip_low=10.0, clip_high=10.0),
    0,
    "",
    "bf16-mixed",
)


GENERATION = [  # per rank: prompts and greedy sampling settings (different lengths on purpose)
    (["12+7=", "3+3=", "40+2="], SamplingParams(max_new_tokens=3, temperature=0.0)),
    (["9+9=", "100+1="], SamplingParams(max_new_tokens=9, temperature=0.0)),
]


@pytest.fixture(scope="module")
def model_dir(tiny_varied_model_dir):
    global _CONFIG
    _CONFIG = load_model(str(tiny_varied_model_dir)).config
    return tiny_varied_model_dir


@pytest.fixture(scope="module", params=["ddp", "fsdp2"])
def two_ranks(request, model_dir, tmp_path_factory):
    """What 2 gloo processes wrapped by the strategy leave: every case's weights and metrics."""
    out = tmp_path_factory.mktemp(request.param) / "results.pt"
    spawn_workers(update_worker, 2, str(model_dir), request.param, CASES, str(out))
    return torch.load(out, weights_only=True)


def test_grpo_update_on_two_ranks_equals_one_process(model_dir, two_ranks):
    base = load_model(str(model_dir))
    batch = make_batch(base)
    for name, (settings, micro, variant, precision) in CASES.items():
        model = build(model_dir, variant)
        start = {k: v.clone() for k, v in model.state_dict().items()}
        one_metrics = policy_update(
            model,
            sgd(model),
            batch,
            settings,
            passes=1,
            minibatches=1,
            group_size=GROUP,
            grad_clip=1e9,
            generator=torch.Generator().manual_seed(0),
            micro_batch_size=micro,
            precision=Precision(precision),
        )
        two = two_ranks[name]
        _assert_same_weights(start, model.state_dict(), two["weights"], precision, name)
        assert one_metrics["kl"] > 0 and (one_metrics["clip_frac"] > 0 or name == "bf16-mixed")
        assert two["metrics"].keys() == one_metrics.keys()
        rel = 1e-5 if precision == "fp32" else 2 * (2 * _CONFIG.num_hidden_layers + 1) * BF16_UNIT_ROUNDOFF
        for k, v in one_metrics.items():  # global numbers, not rank 0's
            assert two["metrics"][k] == pytest.approx(v, rel=rel, abs=1e-7), (name, k)


def test_sampling_from_sharded_weights_equals_one_process(model_dir, two_ranks):
    """Each rank samples its own prompts for its own length from the wrapped model (under FSDP2 the
    weights gathered once, then no communication): the completions are one process's, token for token
    (the same HF forward over the same rows and the same weights, so the same argmax)."""
    engine = make_engine("native", load_model(str(model_dir)), load_tokenizer(str(model_dir)), decode="hf")
    one = [engine.generate(prompts, params).completions for prompts, params in GENERATION]
    assert two_ranks["generation"] == one
    assert len(set(sum(one, []))) > 1  # varied text: the comparison is not vacuous


def test_sft_step_on_two_ranks_equals_one_process(model_dir, two_ranks):
    base = load_model(str(model_dir))
    model = copy.deepcopy(base)
    optimizer = sgd(model)
    loss, value = rank_scaled_nll(model, sft_batch())
    loss.backward()
    optimizer.step()
    _assert_same_weights(base.state_dict(), model.state_dict(), two_ranks["sft"]["weights"])
    assert two_ranks["sft"]["loss"] == pytest.approx(value, rel=1e-6)
