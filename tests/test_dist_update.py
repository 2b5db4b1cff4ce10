"""Two CPU processes (gloo) give the one-process update: one GRPO policy update and one SFT step on a
global batch, split across 2 ranks by whole groups (rows) and wrapped by DDP or FSDP2, leave the same
weights and log the same loss and metrics as one process on the whole batch.

SGD, not AdamW: SGD's step is the gradient itself, so equal weights mean equal gradients (AdamW's first
step is about lr * sign(gradient) and would hide most of a gradient's error). The tolerance is the one
of `forward_atol` applied to the size of the step: splitting the rows across ranks only changes in which
order the same float32 terms are summed.
"""

from __future__ import annotations

import copy

import pytest
import torch
from helpers.dist_workers import spawn_workers, update_worker
from helpers.tolerances import forward_atol

from aha.models.loading import load_model
from aha.train.policy_update import PolicyLossSettings, UpdateBatch, completion_logprobs, policy_update
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


def _assert_same_weights(base, one, two) -> None:
    """`two` (2 ranks) equals `one` (one process), both a step from `base`, to float rounding."""
    step = max((one[k] - base[k]).abs().max().item() for k in one)
    assert step > 1e-3  # the update moved the weights: the comparison below is not vacuous
    atol = forward_atol(_CONFIG, step)
    assert one.keys() == two.keys()
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=0, atol=atol, msg=k)


_CONFIG = None
CASES = {  # loss aggregation -> micro-batch size (token-mean: accumulated over micro-batches too)
    loss_agg: (settings, GROUP if loss_agg == "token-mean" else 0) for loss_agg, settings in SETTINGS.items()
}


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
    for loss_agg, (settings, micro) in CASES.items():
        model = copy.deepcopy(base)
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
        )
        two = two_ranks[loss_agg]
        _assert_same_weights(base.state_dict(), model.state_dict(), two["weights"])
        assert one_metrics["clip_frac"] > 0 and one_metrics["kl"] > 0
        assert two["metrics"].keys() == one_metrics.keys()
        for k, v in one_metrics.items():  # global numbers, not rank 0's
            assert two["metrics"][k] == pytest.approx(v, rel=1e-5, abs=1e-7), (loss_agg, k)


def test_sft_step_on_two_ranks_equals_one_process(model_dir, two_ranks):
    base = load_model(str(model_dir))
    model = copy.deepcopy(base)
    optimizer = sgd(model)
    loss, value = rank_scaled_nll(model, sft_batch())
    loss.backward()
    optimizer.step()
    _assert_same_weights(base.state_dict(), model.state_dict(), two_ranks["sft"]["weights"])
    assert two_ranks["sft"]["loss"] == pytest.approx(value, rel=1e-6)
