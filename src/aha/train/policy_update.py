"""The clipped policy-gradient update shared by GRPO (and PPO's actor): passes, minibatches, KL, clipping.

Inputs are plain tensors (an `UpdateBatch`), so the same function serves any advantage estimator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from aha.algos.kl import kl_penalty
from aha.algos.masked import masked_mean
from aha.algos.policy_loss import aggregate_loss, clipped_surrogate, entropy_bonus, micro_batch_weight
from aha.algos.rollout_correction import DEFAULT_CAP, rollout_mismatch_metrics, truncated_importance_weights
from aha.dist.env import current
from aha.dist.reduce import rank_weight, reduce_metrics
from aha.dist.wrap import full_weights
from aha.models.forward import score_completions
from aha.train.nonfinite import NonFiniteGuard
from aha.train.precision import Precision
from aha.train.scoring_budget import rows_per_pass, scoring_budget_bytes

FP32 = Precision("fp32")


@dataclass
class UpdateBatch:
    input_ids: torch.Tensor  # [N, P + C]
    attention_mask: torch.Tensor  # [N, P + C]
    completion_mask: torch.Tensor  # [N, C]
    advantages: torch.Tensor  # [N] (one per completion) or [N, C]
    ref_logprobs: torch.Tensor | None = None  # [N, C], None when beta == 0
    old_logprobs: torch.Tensor | None = None  # [N, C], None: the batch is used once, old == current
    # [N, C] the rollout engine's own log-probs; set when it samples at another precision than training
    rollout_logprobs: torch.Tensor | None = None

    def select(self, rows: torch.Tensor) -> UpdateBatch:
        def pick(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[rows]

        return UpdateBatch(
            self.input_ids[rows],
            self.attention_mask[rows],
            self.completion_mask[rows],
            self.advantages[rows],
            pick(self.ref_logprobs),
            pick(self.old_logprobs),
            pick(self.rollout_logprobs),
        )


@dataclass(frozen=True)
class PolicyLossSettings:
    clip_low: float
    clip_high: float
    beta: float
    kl_estimator: str
    loss_agg: str
    temperature: float
    norm_constant: float | None = None  # for seq-mean-token-sum-norm (Dr. GRPO)
    importance_ratio: str = "token"  # or "sequence" (GSPO); see clipped_surrogate
    entropy_coef: float = 0.0  # PPO's entropy bonus (algos.policy_loss.entropy_bonus); 0 = off
    rollout_is_cap: float = DEFAULT_CAP  # truncated importance sampling's C (0: off); see minibatch_loss


@torch.no_grad()
def completion_logprobs(
    model: PreTrainedModel, batch: UpdateBatch, temperature: float, precision: Precision = FP32
) -> torch.Tensor:
    """Log-probs of the completion tokens under `model` without gradients (reference / old policy), as
    many rows per pass as `rows_per_pass` allows."""
    completion_len = batch.completion_mask.shape[1]
    rows = rows_per_pass(
        model, batch.input_ids.shape[1], completion_len, scoring_budget_bytes(batch.input_ids.device)
    )
    # full_weights (fsdp2): ranks' rows differ in length, so they may run different numbers of passes
    with precision.autocast(), full_weights(model):
        parts = [
            score_completions(model, ids, mask, completion_len, temperature).logprobs
            for ids, mask in zip(batch.input_ids.split(rows), batch.attention_mask.split(rows), strict=True)
        ]
    return torch.cat(parts)


def minibatch_loss(
    model: PreTrainedModel,
    mb: UpdateBatch,
    settings: PolicyLossSettings,
    with_entropy: bool,
    precision: Precision = FP32,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of one minibatch: clipped surrogate + beta * KL, aggregated as configured.

    When the batch carries the rollout engine's log-probs (it sampled at another precision), the
    surrogate's denominator stays the trainer's own old log-probs, and each token's policy-gradient
    term is weighted by min(pi_old / pi_rollout, rollout_is_cap) (truncated importance sampling; the KL
    term is not reweighted, as in verl). With one optimizer step per batch the old log-probs are this
    forward's, detached: the same numbers a separate no-grad pass would recompute, without the pass.
    The gap is logged as rollout/abs_log_ratio_mean, rollout/abs_log_ratio_max, rollout/kl and
    rollout/capped_frac."""
    with precision.autocast():  # the model's forward only; the loss is computed from float32 log-probs
        scores = score_completions(
            model,
            mb.input_ids,
            mb.attention_mask,
            mb.completion_mask.shape[1],
            settings.temperature,
            with_entropy=with_entropy,
            entropy_grad=settings.entropy_coef > 0,
        )
    logprobs, mask = scores.logprobs, mb.completion_mask
    old = logprobs.detach() if mb.old_logprobs is None else mb.old_logprobs
    per_token, stats = clipped_surrogate(
        logprobs,
        old,
        mb.advantages,
        mask,
        clip_low=settings.clip_low,
        clip_high=settings.clip_high,
        importance_ratio=settings.importance_ratio,
    )
    metrics = {k: float(v) for k, v in stats.items()}
    if mb.rollout_logprobs is not None:
        cap = settings.rollout_is_cap
        gap = rollout_mismatch_metrics(old, mb.rollout_logprobs, mask, cap or DEFAULT_CAP)
        if not cap:
            del gap["capped_frac"]  # no cap, nothing truncated
        metrics.update({f"rollout/{k}": v for k, v in gap.items()})
        if cap:
            per_token = per_token * truncated_importance_weights(old, mb.rollout_logprobs, cap)
    if settings.beta > 0:
        kl = kl_penalty(logprobs, mb.ref_logprobs, settings.kl_estimator)
        per_token = per_token + settings.beta * kl
        metrics["kl"] = float(masked_mean(kl.detach(), mask))
    loss = aggregate_loss(per_token, mask, settings.loss_agg, settings.norm_constant)
    if settings.entropy_coef > 0:
        loss = loss + entropy_bonus(
            scores.entropy, mask, settings.entropy_coef, settings.loss_agg, settings.norm_constant
        )
    if with_entropy:
        metrics["entropy"] = float(masked_mean(scores.entropy.detach(), mask))
    return loss, metrics


def policy_update(
    model: PreTrainedModel,
    optimizer: torch.optim.Optimizer,
    batch: UpdateBatch,
    settings: PolicyLossSettings,
    *,
    passes: int,
    minibatches: int,
    group_size: int,
    grad_clip: float,
    generator: torch.Generator,
    micro_batch_size: int = 0,
    precision: Precision = FP32,
    guard: NonFiniteGuard | None = None,
) -> dict[str, float]:
    """`passes` epochs over the batch, each split into `minibatches` optimizer steps of whole groups.

    Groups are shuffled between passes (seeded) and never split, so every minibatch holds complete
    groups. Each minibatch is run `micro_batch_size` completions at a time (whole groups; 0 = all at
    once), its gradients accumulated with `micro_batch_weight` so the update is the same either way.
    Metrics are averaged over the optimizer steps that produced them (entropy: the first pass's).
    Gradients are released after each optimizer step, so none are held between updates. Forwards run under
    `precision` (fp16-mixed: loss-scaled, and a step whose gradients overflowed is skipped and counted
    in `amp/step_skipped`, averaged over the optimizer steps). `guard` (default: stop) checks each
    minibatch's loss and gradient norm before its optimizer step; a step it skips is counted in
    `update/nonfinite_skipped` and adds nothing else to the metrics.

    Under torchrun (`model` wrapped by aha.dist.wrap) each rank holds whole groups of the batch and
    its minibatch k is its share of the global minibatch k: each rank's loss is weighted by its share
    of the global minibatch (`rank_weight`), so the averaged gradient, the loss and the metrics are the
    one-process numbers for that minibatch (to float rounding; tested). Every rank must hold the same
    number of groups.
    """
    guard = guard or NonFiniteGuard("stop")
    num_groups = batch.input_ids.shape[0] // group_size
    groups_per_pass = max(1, micro_batch_size // group_size) if micro_batch_size else num_groups
    totals: dict[str, float] = {}
    counts: dict[str, int] = {}  # optimizer steps that contributed each metric
    mb_index = 0
    model.train()
    for p in range(passes):
        order = torch.randperm(num_groups, generator=generator) if p > 0 else torch.arange(num_groups)
        for group_ids in order.tensor_split(min(minibatches, num_groups)):
            optimizer.zero_grad(set_to_none=True)
            full_mask = batch.completion_mask[_rows(group_ids, group_size)]
            # this rank's part of the global minibatch (1.0 and 1.0 in a single process)
            loss_share = rank_share(full_mask, settings.loss_agg)
            token_share = rank_weight(float(full_mask.bool().sum()))
            metrics: dict[str, float] = {}
            loss_total = 0.0
            for micro_groups in group_ids.split(groups_per_pass):
                mb = batch.select(_rows(micro_groups, group_size).to(batch.input_ids.device))
                loss, micro_metrics = minibatch_loss(model, mb, settings, p == 0, precision)
                weight = micro_batch_weight(mb.completion_mask, full_mask, settings.loss_agg) * loss_share
                precision.backward(loss * weight)
                loss_total += float(loss.detach()) * weight
                _accumulate(
                    metrics,
                    micro_metrics,
                    token_share=micro_batch_weight(mb.completion_mask, full_mask, "token-mean") * token_share,
                )
            metrics = reduce_metrics({**metrics, "loss": loss_total})  # the global minibatch's numbers
            loss_total = metrics.pop("loss")
            where = f"pass {p + 1}, optimizer step {mb_index + 1} of the update"
            mb_index += 1
            result = None
            if guard.ok("loss", loss_total, where):
                result = precision.step(optimizer, grad_clip if grad_clip > 0 else None, guard)
            # Released now, not at the next update: sampling and the reference pass in between would
            # otherwise hold a model-sized buffer of stale gradients (docs/ARCHITECTURE.md: what it cost).
            optimizer.zero_grad(set_to_none=True)
            if result is None or result.nonfinite:
                metrics = {"update/nonfinite_skipped": 1.0}  # the step's other numbers are not real
            else:
                if result.grad_norm is not None:
                    metrics["grad_norm"] = result.grad_norm
                if precision.scaler is not None:
                    metrics["amp/step_skipped"] = float(result.skipped)
                metrics["loss"] = loss_total
                metrics["update/nonfinite_skipped"] = 0.0
            for k, v in metrics.items():
                totals[k] = totals.get(k, 0.0) + v
                counts[k] = counts.get(k, 0) + 1
    # each metric is the mean over the steps that produced it (entropy: the first pass only)
    return {k: v / counts[k] for k, v in totals.items()}


def rank_share(full_mask: torch.Tensor, loss_agg: str) -> float:
    """`rank_weight` for the unit `loss_agg` averages over: tokens, sequences with a token, or none
    (seq-mean-token-sum-norm divides by a constant: each rank's sum counts whole)."""
    if loss_agg == "token-mean":
        return rank_weight(float(full_mask.bool().sum()))
    if loss_agg == "seq-mean-token-mean":
        return rank_weight(float(full_mask.bool().any(-1).sum()))
    return float(current().world_size)  # undoes the ranks' gradient averaging


def _rows(group_ids: torch.Tensor, group_size: int) -> torch.Tensor:
    return (group_ids[:, None] * group_size + torch.arange(group_size)).flatten()


def _accumulate(metrics: dict[str, float], micro: dict[str, float], token_share: float) -> None:
    """Minibatch metrics from micro-batch ones: maxima stay maxima, the rest are token-level means,
    weighted by each micro-batch's share of the real tokens."""
    for k, v in micro.items():
        if k.endswith("_max"):
            metrics[k] = max(metrics.get(k, v), v)
        else:
            metrics[k] = metrics.get(k, 0.0) + v * token_share
