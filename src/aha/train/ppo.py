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

Under torchrun each rank holds whole prompts' rows (the loop shards them); the session wraps the
critic as it wraps the policy (`NamedModel.rebuild`), and every statistic of the batch that step 4 and
the logs use is the whole batch's (`ppo_targets`), so every rank makes one process's decisions.
"""

from __future__ import annotations

import os

import torch

from aha.algos.advantages import gae
from aha.algos.kl_control import AdaptiveKLController, FixedKLController
from aha.algos.masked import masked_mean, masked_sum
from aha.algos.reward_shaping import kl_shaped_rewards, sequence_rewards_to_tokens, truncation_penalty
from aha.config import ConfigError
from aha.dist.env import env_from
from aha.dist.masked import explained_variance as global_explained_variance
from aha.dist.masked import masked_mean as global_masked_mean
from aha.dist.masked import masked_summary as global_masked_summary
from aha.dist.masked import masked_whiten as global_masked_whiten
from aha.dist.wrap import full_weights
from aha.models.critic import build_critic, token_values
from aha.train.critic_update import ValueTargets, critic_update
from aha.train.optim import build_optimizer, build_scheduler
from aha.train.policy_update import PolicyLossSettings, UpdateBatch, completion_logprobs
from aha.train.ppo_config import PPOAlgoConfig, PPORunConfig
from aha.train.precision import Precision
from aha.train.reference import ReferencePolicy
from aha.train.rl_loop import Advantages, RLResult, RLStep, run_rl, step_seed, update_policy
from aha.train.scoring_budget import rows_per_pass, scoring_budget_bytes
from aha.train.session import NamedModel, TrainingSession

__all__ = ["PPO", "PPORunConfig", "run_ppo"]

PLOT_KEYS = [("reward/mean", "eval/accuracy"), "kl", "critic/value_loss", "critic/explained_variance"]


def run_ppo(cfg: PPORunConfig, resume: bool = False) -> RLResult:
    """Train with PPO as configured; with `resume`, continue from the run directory's last checkpoint."""
    check_ppo_under_torchrun(cfg)
    return run_rl(cfg, PPO, resume=resume, plot_keys=PLOT_KEYS)


def check_ppo_under_torchrun(cfg: PPORunConfig, section: str = "") -> None:
    """Refuse what PPO does not support under torchrun; `section` prefixes the keys named (`ppo.` in
    `aha rlhf`, which checks before its first stage)."""
    if cfg.critic.shared_backbone and env_from(os.environ) is not None:
        key = f"{section}critic.shared_backbone"
        raise ConfigError(
            f"{key} is not supported under torchrun: its value head reads the policy's "
            f"backbone outside the policy's DDP/FSDP2 wrapper; set {key}=false (a "
            "separate critic, wrapped like the policy) or run as one process"
        )


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

        def trainer(
            critic: torch.nn.Module,
        ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
            optimizer = build_optimizer(
                critic.score if head_only else critic, critic_cfg.lr, critic_cfg.weight_decay
            )
            return optimizer, build_scheduler(
                optimizer, cfg.optim.warmup_steps, cfg.train.steps, kind=cfg.optim.schedule
            )

        # under torchrun the session wraps the critic as it wraps the policy, and rebuilds these then
        session.add_model("critic", NamedModel(self.critic, *trainer(self.critic), rebuild=trainer))
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
        scores = s.rewards.float()
        if algo.truncation_penalty:
            scores = truncation_penalty(scores, rollout.truncated, algo.truncation_penalty)
        batch.old_logprobs = completion_logprobs(session.model, batch, temperature, session.precision)
        if self.ref_model is not None:
            batch.ref_logprobs = self.ref_model.logprobs(batch, temperature)
        values = critic_values(self.critic, batch, session.precision)
        batch.advantages, returns, metrics = ppo_targets(
            scores.to(device), values, batch, algo, self.kl_ctl.value
        )
        if "kl_per_completion" in metrics:  # the whole batch's KL (every rank's), for the whole batch's size
            self.kl_ctl.update(
                metrics["kl_per_completion"], batch.completion_mask.shape[0] * session.dist.world_size
            )
        per_completion = masked_mean(batch.advantages, batch.completion_mask, dim=-1).cpu()
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
                session.models["critic"].optimizer,
                batch,
                targets,
                clip=cfg.algo.value_clip,
                loss_agg=cfg.algo.loss_agg,
                norm_constant=self.settings.norm_constant,
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


def ppo_targets(
    scores: torch.Tensor, values: torch.Tensor, batch: UpdateBatch, algo: PPOAlgoConfig, kl_coef: float
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """(advantages, returns, metrics) of a batch: the scores [N] on each completion's last real token
    (clamped if configured), minus kl_coef * KL per token when the batch has reference log-probs and
    the KL goes in the reward, GAE over the critic's `values` [N, C], the advantages whitened. Under torchrun
    `batch` is this rank's share: every statistic of the batch (whitening, the logged summaries and KL,
    the explained variance) is the whole batch's (`aha.dist.masked`), as one process computes it."""
    mask = batch.completion_mask
    clamp = tuple(algo.reward_clamp) if algo.reward_clamp is not None else None
    rewards = sequence_rewards_to_tokens(scores, mask, clamp)
    metrics: dict[str, float] = {"kl_coef": kl_coef}
    if batch.ref_logprobs is not None:
        shaped, kl = kl_shaped_rewards(
            rewards, batch.old_logprobs, batch.ref_logprobs, mask, kl_coef, algo.kl_estimator
        )
        if algo.kl_placement == "reward":
            rewards = shaped
            metrics["kl"] = float(global_masked_mean(kl, mask))  # per token; in the loss, the update logs it
        per_completion = masked_sum(kl, mask, dim=-1)  # summed over its tokens; then every row's mean
        metrics["kl_per_completion"] = float(global_masked_mean(per_completion, torch.ones_like(mask[:, 0])))
    advantages, returns = gae(rewards, values, mask, algo.gamma, algo.lam)
    metrics["critic/explained_variance"] = float(global_explained_variance(values, returns, mask))
    for name, x in (("returns", returns), ("advantages", advantages), ("values", values)):
        metrics.update({f"{name}/{k}": float(v) for k, v in global_masked_summary(x, mask).items()})
    if algo.whiten_advantages:
        advantages = global_masked_whiten(advantages, mask)
    return advantages, returns, metrics


@torch.no_grad()
def critic_values(critic: torch.nn.Module, batch: UpdateBatch, precision: Precision) -> torch.Tensor:
    """The critic's values [N, C] of the batch, as many rows per pass as the scoring budget allows (on
    weights gathered once under fsdp2: ranks' rows differ in length, so in their numbers of passes)."""
    completion_len = batch.completion_mask.shape[1]
    # the causal LM's estimate (with logits the critic does not have): an upper bound for it
    budget = scoring_budget_bytes(batch.input_ids.device)
    rows = rows_per_pass(critic, batch.input_ids.shape[1], completion_len, budget)
    critic.eval()
    with precision.autocast(), full_weights(critic):
        parts = [
            token_values(critic, ids, mask, completion_len)
            for ids, mask in zip(batch.input_ids.split(rows), batch.attention_mask.split(rows), strict=True)
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
