"""The critic's update: `passes` epochs of clipped value loss over the batch, in minibatches of whole
prompts' rows, with its own optimizer (the policy's update is `policy_update`, untouched by it)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from aha.algos.policy_loss import micro_batch_weight, value_loss
from aha.dist.reduce import rank_weight, reduce_metrics
from aha.models.critic import token_values
from aha.train.nonfinite import NonFiniteGuard
from aha.train.policy_update import UpdateBatch, rank_share
from aha.train.precision import Precision


@dataclass
class ValueTargets:
    old_values: torch.Tensor  # [N, C] the critic's values when the advantages were computed
    returns: torch.Tensor  # [N, C] GAE returns (advantages + old values), before any whitening

    def select(self, rows: torch.Tensor) -> ValueTargets:
        return ValueTargets(self.old_values[rows], self.returns[rows])


def critic_update(
    critic: PreTrainedModel,
    optimizer: torch.optim.Optimizer,
    batch: UpdateBatch,
    targets: ValueTargets,
    *,
    clip: float | None,
    loss_agg: str,
    norm_constant: float | None = None,
    passes: int,
    minibatches: int,
    group_size: int,
    grad_clip: float,
    generator: torch.Generator,
    precision: Precision,
    guard: NonFiniteGuard,
    micro_batch_size: int = 0,
    backbone_grad: bool = True,
) -> dict[str, float]:
    """Fit the critic to the returns; metrics are means over its optimizer steps, prefixed `critic/`
    (value_loss, value_clip_frac, grad_norm). Groups are shuffled between passes with `generator`;
    micro-batches accumulate gradients weighted so the step equals the whole minibatch's.
    `norm_constant`: seq-mean-token-sum-norm's divisor (the policy's; None: each micro-batch's N * T).

    Under torchrun (`critic` wrapped by aha.dist.wrap) each rank's loss is weighted by its share of
    the global minibatch, as `policy_update` weights the policy's: the averaged gradient, the logged
    loss and clip fraction are the one-process numbers (tested). The values are read through the
    wrapper's hooks (`token_values`)."""
    num_groups = batch.input_ids.shape[0] // group_size
    groups_per_micro = max(1, micro_batch_size // group_size) if micro_batch_size else num_groups
    totals: dict[str, float] = {}
    steps = 0
    critic.train()
    for p in range(passes):
        order = torch.randperm(num_groups, generator=generator) if p > 0 else torch.arange(num_groups)
        for group_ids in order.tensor_split(min(minibatches, num_groups)):
            optimizer.zero_grad(set_to_none=True)
            full_mask = batch.completion_mask[_rows(group_ids, group_size)]
            # this rank's part of the global minibatch (1.0 and 1.0 in a single process)
            loss_share = rank_share(full_mask, loss_agg)
            token_share = rank_weight(float(full_mask.bool().sum()))
            loss_total, clip_frac = 0.0, 0.0
            for micro in group_ids.split(groups_per_micro):
                rows = _rows(micro, group_size).to(batch.input_ids.device)
                mb, tg = batch.select(rows), targets.select(rows)
                with precision.autocast():
                    values = token_values(
                        critic, mb.input_ids, mb.attention_mask, mb.completion_mask.shape[1], backbone_grad
                    )
                loss, stats = value_loss(
                    values, tg.old_values, tg.returns, mb.completion_mask, clip, loss_agg, norm_constant
                )
                weight = micro_batch_weight(mb.completion_mask, full_mask, loss_agg) * loss_share
                precision.backward(loss * weight)
                loss_total += float(loss.detach()) * weight
                clip_frac += (
                    float(stats["clip_frac"])
                    * token_share
                    * micro_batch_weight(mb.completion_mask, full_mask, "token-mean")
                )
            # the global minibatch's numbers (every rank then agrees on the guard's verdict)
            reduced = reduce_metrics({"loss": loss_total, "clip_frac": clip_frac})
            loss_total, clip_frac = reduced["loss"], reduced["clip_frac"]
            where = f"critic, pass {p + 1}"
            if guard.ok("value loss", loss_total, where):
                result = precision.step(optimizer, grad_clip if grad_clip > 0 else None, guard)
                if not result.nonfinite:
                    steps += 1
                    step_metrics = {"critic/value_loss": loss_total, "critic/value_clip_frac": clip_frac}
                    if result.grad_norm is not None:
                        step_metrics["critic/grad_norm"] = result.grad_norm
                    for k, v in step_metrics.items():
                        totals[k] = totals.get(k, 0.0) + v
            optimizer.zero_grad(set_to_none=True)
    critic.eval()
    return {k: v / steps for k, v in totals.items()}


def _rows(group_ids: torch.Tensor, group_size: int) -> torch.Tensor:
    return (group_ids[:, None] * group_size + torch.arange(group_size)).flatten()
