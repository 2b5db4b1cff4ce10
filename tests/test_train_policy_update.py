"""policy_update: running a minibatch in micro-batches (gradient accumulation) gives the same update
and the same metrics as running it whole, for every loss aggregation, and holds no gradients after it."""

from __future__ import annotations

import copy

import pytest
import torch

from aha.algos.policy_loss import LOSS_AGG_MODES
from aha.models.loading import load_model
from aha.train.policy_update import (
    PolicyLossSettings,
    UpdateBatch,
    completion_logprobs,
    minibatch_loss,
    policy_update,
)

GROUP, GROUPS, PROMPT, COMPLETION = 4, 3, 4, 5


def _batch(model) -> UpdateBatch:
    g = torch.Generator().manual_seed(1)
    prompts = torch.randint(3, 40, (GROUPS, PROMPT), generator=g).repeat_interleave(GROUP, 0)
    completions = torch.randint(3, 40, (GROUPS * GROUP, COMPLETION), generator=g)
    lengths = torch.randint(1, COMPLETION + 1, (GROUPS * GROUP,), generator=g)
    completion_mask = (torch.arange(COMPLETION)[None] < lengths[:, None]).long()
    batch = UpdateBatch(
        input_ids=torch.cat([prompts, completions.masked_fill(completion_mask == 0, 0)], 1),
        attention_mask=torch.cat([torch.ones_like(prompts), completion_mask], 1),
        completion_mask=completion_mask,
        advantages=torch.randn(GROUPS * GROUP, generator=g),
    )
    current = completion_logprobs(model, batch, temperature=1.0)
    # Old and reference policies a little away from the current one, so ratios clip and KL is not 0.
    batch.old_logprobs = current + 0.3 * torch.randn(current.shape, generator=g)
    batch.ref_logprobs = current + 0.5 * torch.randn(current.shape, generator=g)
    return batch


@pytest.mark.parametrize("loss_agg", LOSS_AGG_MODES)
def test_micro_batches_give_the_same_update(tiny_varied_model_dir, loss_agg):
    base = load_model(str(tiny_varied_model_dir))
    batch = _batch(base)
    settings = PolicyLossSettings(
        clip_low=0.2,
        clip_high=0.28,
        beta=0.1,
        kl_estimator="k3",
        loss_agg=loss_agg,
        temperature=1.0,
        norm_constant=GROUPS * GROUP * COMPLETION,
    )

    def update(micro_batch_size: int):
        model = copy.deepcopy(base)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        metrics = policy_update(
            model,
            optimizer,
            batch,
            settings,
            passes=1,
            minibatches=1,
            group_size=GROUP,
            grad_clip=0.0,
            generator=torch.Generator().manual_seed(0),
            micro_batch_size=micro_batch_size,
        )
        assert all(p.grad is None for p in model.parameters())  # nothing held until the next update
        return metrics, [p.detach() for p in model.parameters()]

    whole_metrics, whole_params = update(0)
    assert whole_metrics["clip_frac"] > 0 and whole_metrics["kl"] > 0  # the comparison is not vacuous
    for micro in (GROUP, 2 * GROUP + 1):  # one group per pass; two groups (rounded down) then one
        metrics, params = update(micro)
        assert metrics.keys() == whole_metrics.keys()
        for k, v in whole_metrics.items():
            assert metrics[k] == pytest.approx(v, rel=1e-4, abs=1e-6), k
        moved = max((a - p).abs().max().item() for a, p in zip(whole_params, base.parameters(), strict=True))
        assert moved > 1e-3  # SGD moved the weights, so equality below is a real check
        for a, b in zip(params, whole_params, strict=True):
            assert torch.allclose(a, b, atol=1e-5 * moved)


def test_importance_ratio_setting_reaches_the_loss(tiny_varied_model_dir):
    """PolicyLossSettings.importance_ratio: off policy (old != current) token and sequence ratios give
    different losses; on policy (old_logprobs None) the same loss and gradients."""
    model = load_model(str(tiny_varied_model_dir))
    batch = _batch(model)
    on_policy = UpdateBatch(batch.input_ids, batch.attention_mask, batch.completion_mask, batch.advantages)

    def loss_and_grads(mb: UpdateBatch, mode: str):
        settings = PolicyLossSettings(0.2, 0.2, 0.0, "k3", "seq-mean-token-mean", 1.0, importance_ratio=mode)
        model.zero_grad(set_to_none=True)
        loss, _ = minibatch_loss(model, mb, settings, with_entropy=False)
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    token, sequence = loss_and_grads(batch, "token")[0], loss_and_grads(batch, "sequence")[0]
    assert abs(token - sequence) > 1e-3, (token, sequence)
    (tl, tg), (sl, sg) = loss_and_grads(on_policy, "token"), loss_and_grads(on_policy, "sequence")
    assert sl == pytest.approx(tl, rel=1e-6)
    for a, b in zip(tg, sg, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_truncated_importance_weights_scale_the_policy_term_only(tiny_varied_model_dir):
    """Rollout log-probs log 3 below the old ones give every token the ratio pi_old / pi_rollout = 3:
    truncated at C, the policy-gradient part of the loss is multiplied by min(3, C), the KL part is not;
    C = 0 switches the weights off but still logs the gap."""
    model = load_model(str(tiny_varied_model_dir))
    batch = _batch(model)
    with_rollout = copy.copy(batch)
    with_rollout.rollout_logprobs = batch.old_logprobs - torch.log(torch.tensor(3.0))

    def loss(mb: UpdateBatch, beta: float, cap: float = 2.0) -> tuple[float, dict]:
        settings = PolicyLossSettings(0.2, 0.2, beta, "k3", "token-mean", 1.0, rollout_is_cap=cap)
        value, metrics = minibatch_loss(model, mb, settings, with_entropy=False)
        return value.item(), metrics

    policy_only, _ = loss(batch, beta=0.0)
    assert abs(policy_only) > 1e-3  # the comparison is not vacuous
    for cap, weight in ((2.0, 2.0), (5.0, 3.0)):
        weighted, metrics = loss(with_rollout, beta=0.0, cap=cap)
        # float32 sums of the same terms scaled by a power-of-two-ish constant: 1e-6 relative
        assert weighted == pytest.approx(weight * policy_only, rel=1e-5)
        assert metrics["rollout/abs_log_ratio_mean"] == pytest.approx(float(torch.log(torch.tensor(3.0))))
        assert metrics["rollout/capped_frac"] == (1.0 if cap == 2.0 else 0.0)
    full, _ = loss(batch, beta=0.1)
    full_weighted, _ = loss(with_rollout, beta=0.1)
    assert full_weighted - full == pytest.approx((2.0 - 1.0) * policy_only, rel=1e-4, abs=1e-6)
    off, metrics = loss(with_rollout, beta=0.0, cap=0.0)
    assert off == pytest.approx(policy_only, rel=1e-6)
    assert metrics["rollout/kl"] > 0 and "rollout/capped_frac" not in metrics
