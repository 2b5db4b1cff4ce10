"""PPO with a critic, on the RL loop GRPO uses (`aha.train.rl_loop`): only the advantages and the
update differ.

One step, after the loop has sampled and scored the completions:
  1. the score (minus `truncation_penalty` for completions cut off without EOS, optionally clamped)
     goes on each completion's last real token;
  2. the rollout policy's log-probs, the reference's (when kl_coef > 0) and the critic's values, once,
     without gradients;
  3. KL in the reward (InstructGPT): r_t - kl_coef * kl_t, kl_coef fixed or adaptive toward a target;
     or KL in the loss, GRPO's way;
  4. GAE(gamma, lambda) -> advantages and returns; advantages whitened over the batch's tokens;
  5. the policy's clipped update (`policy_update`, + entropy bonus), skipped while the critic warms
     up with `critic.freeze_actor`; the critic's clipped value update with its own optimizer.
The critic is a named model of the session: checkpoints hold it with its optimizer and scheduler, and
resume restores them, with the adaptive KL coefficient.
"""

from __future__ import annotations

import torch

from aha.algos.advantages import gae
from aha.algos.kl_control import AdaptiveKLController, FixedKLController
from aha.algos.masked import explained_variance, masked_mean, masked_sum, masked_summary, masked_whiten
from aha.algos.reward_shaping import kl_shaped_rewards, sequence_rewards_to_tokens, truncation_penalty
from aha.config import ConfigError
from aha.dist.env import require_single_process
from aha.models.critic import build_critic, token_values
from aha.train.critic_update import ValueTargets, critic_update
from aha.train.optim import build_optimizer, build_scheduler
from aha.train.policy_update import PolicyLossSettings, UpdateBatch, completion_logprobs
from aha.train.ppo_config import PPORunConfig
from aha.train.reference import ReferencePolicy
from aha.train.rl_loop import Advantages, RLResult, RLStep, run_rl, step_seed, update_policy
from aha.train.scoring_budget import rows_per_pass, scoring_budget_bytes
from aha.train.session import NamedModel, TrainingSession

__all__ = ["PPO", "PPORunConfig", "run_ppo"]

PLOT_KEYS = [("reward/mean", "eval/accuracy"), "kl", "critic/value_loss", "critic/explained_variance"]


def run_ppo(cfg: PPORunConfig, resume: bool = False) -> RLResult:
    """Train with PPO as configured; with `resume`, continue from the run directory's last checkpoint."""
    require_single_process("aha ppo (its critic is not wrapped for DDP/FSDP2 yet)")
    return run_rl(cfg, PPO, resume=resume, plot_keys=PLOT_KEYS)


class PPO:
    """GAE advantages from a critic, KL in the reward or the loss, a clipped policy and value update."""

    stage = "ppo"

    def __init__(self, cfg: PPORunConfig, session: TrainingSession):
        self.cfg, self.session = cfg, session
        algo, critic_cfg = cfg.algo, cfg.critic
        self.ref_model = (
            ReferencePolicy(session.model, session.precision, session.device, algo.ref_offload)
            if algo.kl_coef > 0
            else None
        )
        self.kl_ctl = (
            AdaptiveKLController(algo.kl_coef, algo.kl_target, algo.kl_horizon)
            if algo.kl_target is not None
            else FixedKLController(algo.kl_coef)
        )
        self.critic = _load_critic(cfg, session)
        head_only = critic_cfg.shared_backbone  # the backbone is the policy's: train the head only
        trained = self.critic.score if head_only else self.critic
        optimizer = build_optimizer(trained, critic_cfg.lr, critic_cfg.weight_decay)
        scheduler = build_scheduler(
            optimizer, cfg.optim.warmup_steps, cfg.train.steps, kind=cfg.optim.schedule
        )
        self.critic_optimizer = optimizer
        session.add_model("critic", NamedModel(self.critic, optimizer, scheduler))
        batch_rows = cfg.train.prompts_per_step * cfg.rollout.group_size
        self.settings = PolicyLossSettings(
            clip_low=algo.clip_low,
            clip_high=algo.clip_high,
            beta=algo.kl_coef if algo.kl_placement == "loss" else 0.0,
            kl_estimator=algo.kl_estimator,
            loss_agg=algo.loss_agg,
            temperature=cfg.rollout.temperature,
            norm_constant=batch_rows / algo.minibatches * cfg.rollout.max_new_tokens,
            importance_ratio=algo.importance_ratio,
            entropy_coef=algo.entropy_coef,
        )

    def advantages(self, s: RLStep) -> Advantages:
        cfg, algo, session, device = self.cfg, self.cfg.algo, self.session, self.session.device
        rollout, temperature = s.rollout, cfg.rollout.temperature
        batch = UpdateBatch(
            rollout.input_ids.to(device),
            rollout.attention_mask.to(device),
            rollout.completion_mask.to(device),
            torch.zeros(0),  # set below
            rollout_logprobs=s.rollout_logprobs,  # rollout.dtype: corrected at algos.rollout_correction's C=2
        )
        mask = batch.completion_mask
        scores = s.rewards.float()
        if algo.truncation_penalty:
            scores = truncation_penalty(scores, rollout.truncated, algo.truncation_penalty)
        clamp = tuple(algo.reward_clamp) if algo.reward_clamp is not None else None
        rewards = sequence_rewards_to_tokens(scores.to(device), mask, clamp)
        batch.old_logprobs = completion_logprobs(session.model, batch, temperature, session.precision)
        if self.ref_model is not None:
            batch.ref_logprobs = self.ref_model.logprobs(batch, temperature)
        values = self._values(batch)
        metrics: dict[str, float] = {"kl_coef": self.kl_ctl.value}
        if self.ref_model is not None:
            shaped, kl = kl_shaped_rewards(
                rewards, batch.old_logprobs, batch.ref_logprobs, mask, self.kl_ctl.value, algo.kl_estimator
            )
            if algo.kl_placement == "reward":
                rewards = shaped
            kl_per_completion = float(masked_sum(kl, mask, dim=-1).mean())
            if algo.kl_placement == "reward":  # in the loss, the update logs its own `kl`
                metrics["kl"] = float(masked_mean(kl, mask))  # per token, of the rollout policy
            metrics["kl_per_completion"] = kl_per_completion
            self.kl_ctl.update(kl_per_completion, mask.shape[0])
        advantages, returns = gae(rewards, values, mask, algo.gamma, algo.lam)
        metrics["critic/explained_variance"] = float(explained_variance(values, returns, mask))
        for name, x in (("returns", returns), ("advantages", advantages), ("values", values)):
            metrics.update({f"{name}/{k}": float(v) for k, v in masked_summary(x, mask).items()})
        if algo.whiten_advantages:
            advantages = masked_whiten(advantages, mask)
        batch.advantages = advantages
        per_completion = masked_mean(advantages, mask, dim=-1).cpu()
        return Advantages(per_completion, metrics, (batch, ValueTargets(values, returns)))

    def update(self, s: RLStep, adv: Advantages) -> dict[str, float]:
        cfg, session = self.cfg, self.session
        batch, targets = adv.state
        G = cfg.rollout.group_size
        if s.bad_reward:  # train.on_nonfinite=skip: no update from this batch
            return {"update/nonfinite_skipped": 1.0, "update/skipped": 1.0}
        warming_up = s.step <= cfg.critic.warmup_steps
        metrics: dict[str, float] = {"update/nonfinite_skipped": 0.0}
        if not (warming_up and cfg.critic.freeze_actor):
            metrics = update_policy(session, cfg, s, batch, self.settings, G)
        metrics["update/actor_frozen"] = float(warming_up and cfg.critic.freeze_actor)
        metrics.update(
            critic_update(
                self.critic,
                self.critic_optimizer,
                batch,
                targets,
                clip=cfg.algo.value_clip,
                loss_agg=cfg.algo.loss_agg,
                passes=cfg.algo.mu,
                minibatches=cfg.algo.minibatches,
                group_size=G,
                grad_clip=cfg.critic.grad_clip,
                # its own stream: the critic's shuffles do not change the policy's
                generator=torch.Generator().manual_seed(step_seed(cfg, s.step) + 1),
                precision=session.precision,
                guard=s.guard,
                micro_batch_size=cfg.train.micro_batch_size,
                backbone_grad=not cfg.critic.shared_backbone,
            )
        )
        metrics["critic/lr"] = session.models["critic"].scheduler.get_last_lr()[0]
        metrics["update/skipped"] = 0.0
        return metrics

    def resume_state(self) -> dict:
        return {"kl_controller": self.kl_ctl.state_dict()}

    def load_resume_state(self, extra: dict) -> None:
        if "kl_controller" in extra:
            self.kl_ctl.load_state_dict(extra["kl_controller"])

    @torch.no_grad()
    def _values(self, batch: UpdateBatch) -> torch.Tensor:
        """The critic's values [N, C] of the batch, as many rows per pass as the scoring budget allows."""
        completion_len = batch.completion_mask.shape[1]
        # the causal LM's estimate (with logits the critic does not have): an upper bound for it
        budget = scoring_budget_bytes(batch.input_ids.device)
        rows = rows_per_pass(self.critic, batch.input_ids.shape[1], completion_len, budget)
        self.critic.eval()
        with self.session.precision.autocast():
            parts = [
                token_values(self.critic, ids, mask, completion_len)
                for ids, mask in zip(
                    batch.input_ids.split(rows), batch.attention_mask.split(rows), strict=True
                )
            ]
        return torch.cat(parts)


def _load_critic(cfg: PPORunConfig, session: TrainingSession):
    """The critic as configured (critic.path or the policy's model.path), checked against the policy."""
    path = cfg.critic.path or cfg.model.path
    policy = session.model if cfg.critic.shared_backbone else None
    try:
        critic = build_critic(
            path, session.device, policy=policy, trust_remote_code=cfg.model.trust_remote_code
        )
    except (OSError, ValueError, RuntimeError) as e:  # no such directory, no decoder, bad weights
        raise ConfigError(f"critic.path={path!r}: {e}") from None
    vocab, policy_vocab = critic.config.vocab_size, session.model.config.vocab_size
    if vocab != policy_vocab:
        raise ConfigError(
            f"critic.path={path!r} has a vocabulary of {vocab} tokens, the policy {policy_vocab}: the critic "
            "reads the policy's tokens, so it must share its tokenizer"
        )
    return critic
