"""The GRPO recipe, readable top to bottom: sample groups -> rewards -> group advantages -> clipped update.

Prompts are turned into model input text once, up front (message lists through the chat template,
aha.data.chat); reward functions receive that text as `prompts`, with the record's other fields.
One step:
  1. take `prompts_per_step` prompts and sample `group_size` completions for each (the rollout engine);
  2. score them with the reward functions; advantages are rewards relative to their group;
  3. reference log-probs once per batch (when beta > 0); old-policy log-probs only when the batch is
     used for more than one optimizer step (mu > 1 or several minibatches): otherwise old == current;
  4. `mu` passes of clipped-surrogate + beta * KL updates (aha.train.policy_update);
  5. every `ref_sync_every` steps the reference becomes the current policy (R1-Zero style reset).
The loop around these (prompts, rollouts, rewards, evaluation, metrics, samples, atomic checkpoints) is
`aha.train.rl_loop.run_rl`, shared with PPO; this module supplies GRPO's advantages and update.
"""

from __future__ import annotations

import torch

from aha.algos.advantages import get_advantage_estimator, zero_variance_groups
from aha.train.grpo_config import GRPORunConfig
from aha.train.policy_update import PolicyLossSettings, UpdateBatch, completion_logprobs
from aha.train.reference import ReferencePolicy
from aha.train.rl_loop import Advantages, RLResult, RLStep, run_rl, update_policy
from aha.train.session import NamedModel, TrainingSession

__all__ = ["GRPO", "GRPORunConfig", "GRPOResult", "run_grpo"]

PLOT_KEYS = [("reward/mean", "eval/accuracy"), "kl", "completion/length_mean", "entropy"]
GRPOResult = RLResult  # the name callers of run_grpo know


def run_grpo(cfg: GRPORunConfig, resume: bool = False) -> RLResult:
    """Train with GRPO as configured; with `resume`, continue from the run directory's last checkpoint."""
    return run_rl(cfg, GRPO, resume=resume, plot_keys=PLOT_KEYS)


class GRPO:
    """Group-relative advantages and the clipped update with beta * KL in the loss."""

    stage = "grpo"

    def __init__(self, cfg: GRPORunConfig, session: TrainingSession):
        self.cfg, self.session = cfg, session
        self.estimator = get_advantage_estimator(cfg.algo.advantage)
        self.ref_model = (
            ReferencePolicy(session.model, session.precision, session.device, cfg.algo.ref_offload)
            if cfg.algo.beta > 0
            else None
        )
        if self.ref_model is not None and cfg.algo.ref_sync_every:  # it moves: checkpoints must hold it
            session.add_model("reference", NamedModel(self.ref_model.model))
        batch_rows = cfg.train.prompts_per_step * cfg.rollout.group_size
        self.settings = PolicyLossSettings(
            clip_low=cfg.algo.clip_low,
            clip_high=cfg.algo.clip_high,
            beta=cfg.algo.beta,
            kl_estimator=cfg.algo.kl_estimator,
            loss_agg=cfg.algo.loss_agg,
            temperature=cfg.rollout.temperature,
            norm_constant=batch_rows / cfg.algo.minibatches * cfg.rollout.max_new_tokens,
            importance_ratio=cfg.algo.importance_ratio,
            rollout_is_cap=cfg.algo.rollout_is_cap,
        )

    def advantages(self, s: RLStep) -> Advantages:
        G = self.cfg.rollout.group_size
        advantages = self.estimator(s.rewards, G)
        dead_groups = zero_variance_groups(s.scored.total, G)
        return Advantages(
            advantages, {"groups/zero_variance_frac": float(dead_groups.float().mean())}, dead_groups
        )

    def update(self, s: RLStep, adv: Advantages) -> dict[str, float]:
        cfg, session, device = self.cfg, self.session, self.session.device
        G = cfg.rollout.group_size
        rollout = s.rollout
        batch = UpdateBatch(
            rollout.input_ids.to(device),
            rollout.attention_mask.to(device),
            rollout.completion_mask.to(device),
            adv.per_completion.to(device),
            rollout_logprobs=s.rollout_logprobs,
        )
        if cfg.algo.drop_zero_variance_groups:
            keep = (~adv.state).repeat_interleave(G).nonzero().squeeze(1)
            batch = batch.select(keep.to(device))
        if s.bad_reward:  # train.on_nonfinite=skip: no update from this batch
            batch = batch.select(torch.zeros(0, dtype=torch.long, device=device))
        metrics: dict[str, float] = {"update/nonfinite_skipped": float(s.bad_reward)}
        if batch.input_ids.shape[0] > 0:
            if self.ref_model is not None:
                batch.ref_logprobs = self.ref_model.logprobs(batch, cfg.rollout.temperature)
            if cfg.algo.mu > 1 or cfg.algo.minibatches > 1:  # the batch feeds several optimizer steps
                batch.old_logprobs = completion_logprobs(
                    session.model, batch, cfg.rollout.temperature, session.precision
                )
            metrics = update_policy(session, cfg, s, batch, self.settings, G)
        metrics["update/skipped"] = float(batch.input_ids.shape[0] == 0)
        every = cfg.algo.ref_sync_every
        if self.ref_model is not None and every and s.step % every == 0:
            self.ref_model.sync_from(session.model)
        return metrics

    def resume_state(self) -> dict:
        return {}  # the moving reference is a named model of the session

    def load_resume_state(self, extra: dict) -> None:
        pass
