"""The PPO run configuration: the sections it shares with GRPO (data, rewards, rollouts, evaluation and
tracking; aha.train.rl_config), plus PPO's own algo section (GAE, KL placement and control, value
clipping) and the critic.

Defaults follow the anchors named in each help text: TRL (PPOTrainer), verl (ppo_trainer.yaml) and
OpenRLHF; where they disagree the help says which one was picked and why.
"""

from __future__ import annotations

from dataclasses import dataclass

from aha.algos.kl import KL_ESTIMATORS
from aha.algos.policy_loss import IMPORTANCE_RATIOS, LOSS_AGG_MODES
from aha.config import ConfigError, option
from aha.train.common_config import DistConfig, ModelConfig, OptimConfig, RunConfig
from aha.train.rl_config import (
    EvalConfig,
    PromptDataConfig,
    RewardConfig,
    RLTrainConfig,
    RolloutConfig,
    TrackConfig,
    check_policy_update,
    check_rl_run,
)

KL_PLACEMENTS = ("reward", "loss")


@dataclass
class PPORolloutConfig(RolloutConfig):
    group_size: int = option(
        4,
        help="Completions sampled per prompt. PPO needs no groups (the critic is its baseline): 1 is "
        "classic PPO; more rows per prompt share one pass over it.",
    )

    def check_group_size(self) -> None:
        if self.group_size < 1:
            raise ConfigError("group_size must be >= 1")


@dataclass
class PPOAlgoConfig:
    gamma: float = option(1.0, help="GAE discount (1 in TRL, verl and OpenRLHF).")
    lam: float = option(
        0.95,
        help="GAE lambda: 0.95 as TRL (and OpenAI's 2019 code); verl and OpenRLHF use 1 (Monte-Carlo "
        "returns, the critic only a baseline). 0.95 lets a fitted critic lower the advantages' variance.",
    )
    kl_placement: str = option(
        "reward",
        choices=KL_PLACEMENTS,
        help="reward: -kl_coef * KL folded into each token's reward before GAE (InstructGPT; TRL's and "
        "OpenRLHF's PPO); loss: kl_coef * KL added to the policy loss, as GRPO's beta (verl's use_kl_loss).",
    )
    kl_coef: float = option(
        0.05,
        help="KL weight against the reference (the starting policy); 0 = no reference model. 0.05 is "
        "TRL's; OpenRLHF starts at 0.01, verl at 0.001. With kl_target it is the adaptive start.",
    )
    kl_estimator: str = option(
        "k1",
        choices=KL_ESTIMATORS,
        help="KL estimator: k1 = log pi - log ref (TRL's and OpenRLHF's in the reward); k3 is GRPO's in the loss.",
    )
    kl_target: float | None = option(
        None,
        help="Adaptive KL (Ziegler et al. 2019): steer kl_coef toward this KL per completion (nats, "
        "summed over its tokens); None = fixed kl_coef. verl's example target 0.1, TRL v0.8's 6.",
    )
    kl_horizon: int = option(10000, help="Adaptive KL horizon in samples (10000 in TRL, verl and OpenRLHF).")
    whiten_advantages: bool = option(
        True, help="Whiten the advantages over the batch's real tokens (all three anchors do)."
    )
    value_clip: float | None = option(
        0.2,
        help="Clip each value update to old value +- value_clip (None = no clipping). 0.2 is TRL's "
        "cliprange_value; verl and OpenRLHF use 0.5. aha's rewards are mostly in [0, 1], where 0.5 "
        "would seldom bind, so TRL's is the one that acts at this scale.",
    )
    entropy_coef: float = option(
        0.0,
        help="Entropy bonus weight (0 = off, verl's default). On, the policy's scoring keeps full "
        "logits (the chunked LM head's entropy carries no gradient).",
    )
    truncation_penalty: float = option(
        0.0,
        help="Subtracted from the reward of completions that hit max_new_tokens without EOS (TRL's "
        "missing_eos_penalty; 0 = off).",
    )
    reward_clamp: list[float] | None = option(
        None, help="[low, high]: clamp the scores first (OpenRLHF: [-10, 10]; None = off, as TRL and verl)."
    )
    loss_agg: str = option("token-mean", choices=LOSS_AGG_MODES, help="Loss aggregation (policy and value).")
    clip_low: float = option(0.2, help="Lower clip range of the policy ratio.")
    clip_high: float = option(0.2, help="Upper clip range of the policy ratio.")
    importance_ratio: str = option(
        "token", choices=IMPORTANCE_RATIOS, help="token (PPO) or sequence (GSPO's per-sequence ratio)."
    )
    mu: int = option(1, help="Passes over each batch (PPO epochs), for the policy and the critic.")
    minibatches: int = option(1, help="Optimizer steps per pass (whole prompts' rows each).")
    ref_offload: bool = option(
        False, help="Keep the reference in CPU memory, on the GPU only for its pass (as GRPO's)."
    )

    def validate(self) -> None:
        if not (0 <= self.gamma <= 1 and 0 <= self.lam <= 1):
            raise ConfigError(f"gamma and lam must be in [0, 1], got gamma={self.gamma}, lam={self.lam}")
        if self.kl_coef < 0:
            raise ConfigError("kl_coef must be >= 0 (0 = no reference model)")
        if self.kl_target is not None and (self.kl_target <= 0 or self.kl_coef <= 0):
            raise ConfigError(
                "kl_target needs kl_target > 0 and kl_coef > 0 (the adaptive start; 0 can never grow)"
            )
        if self.kl_target is not None and self.kl_placement != "reward":
            raise ConfigError("kl_target (adaptive KL) steers the KL in the reward: set kl_placement=reward")
        if self.kl_horizon < 1:
            raise ConfigError("kl_horizon must be >= 1")
        if self.value_clip is not None and self.value_clip <= 0:
            raise ConfigError("value_clip must be > 0, or null for no clipping")
        if self.entropy_coef < 0 or self.truncation_penalty < 0:
            raise ConfigError("entropy_coef and truncation_penalty must be >= 0 (0 = off)")
        if self.reward_clamp is not None and (
            len(self.reward_clamp) != 2 or self.reward_clamp[0] > self.reward_clamp[1]
        ):
            raise ConfigError(f"reward_clamp must be [low, high] with low <= high, got {self.reward_clamp}")
        check_policy_update(self)


@dataclass
class CriticConfig:
    path: str | None = option(
        None,
        help="Where the critic starts: None = the policy's model.path (a fresh value head on its "
        "backbone); or a reward-model directory (`aha rm` writes one), whose head is kept (OpenRLHF and "
        "TRL start the critic from the reward model). Must use the policy's tokenizer.",
    )
    shared_backbone: bool = option(
        False,
        help="A value head on the policy's own backbone instead of a separate model: no second copy of "
        "the weights; the value loss then trains the head only (the backbone's features are read "
        "without gradient, so the value loss never moves the policy).",
    )
    lr: float = option(
        1e-4, help="The critic's AdamW learning rate (its own optimizer; optim's warm-up and schedule)."
    )
    weight_decay: float = option(0.0, help="The critic's AdamW weight decay.")
    grad_clip: float = option(1.0, help="Clip the critic's gradient norm (0 = no clipping).")
    warmup_steps: int = option(
        0, help="Steps at the start where the critic trains; with freeze_actor the policy does not."
    )
    freeze_actor: bool = option(
        True,
        help="Leave the policy untouched during the critic's warm-up steps (OpenRLHF's "
        "freezing_actor_steps), so the first advantages come from a fitted critic.",
    )

    def validate(self) -> None:
        if self.lr <= 0:
            raise ConfigError("lr must be > 0")
        if self.warmup_steps < 0:
            raise ConfigError("warmup_steps must be >= 0 (0 = no warm-up)")


@dataclass
class PPORunConfig:
    model: ModelConfig = option(
        default_factory=lambda: ModelConfig(path="runs/tiny-model"), help="The policy to train."
    )
    data: PromptDataConfig = option(default_factory=PromptDataConfig, help="Training and held-out prompts.")
    rewards: RewardConfig = option(default_factory=RewardConfig, help="How completions are scored.")
    rollout: PPORolloutConfig = option(default_factory=PPORolloutConfig, help="How completions are sampled.")
    algo: PPOAlgoConfig = option(default_factory=PPOAlgoConfig, help="GAE, KL, clipping.")
    critic: CriticConfig = option(default_factory=CriticConfig, help="The value model.")
    train: RLTrainConfig = option(default_factory=RLTrainConfig, help="Steps and batch size.")
    optim: OptimConfig = option(default_factory=OptimConfig, help="The policy's AdamW and LR schedule.")
    eval: EvalConfig = option(default_factory=EvalConfig, help="Held-out evaluation.")
    track: TrackConfig = option(default_factory=TrackConfig, help="Samples and plots.")
    run: RunConfig = option(
        default_factory=lambda: RunConfig(output_dir="runs/ppo"), help="Run directory, seed, checkpoints."
    )
    dist: DistConfig = option(
        default_factory=DistConfig,
        help="Several processes under torchrun (the critic is wrapped as the policy).",
    )

    def validate(self) -> None:
        check_rl_run(self)
        if self.critic.warmup_steps >= self.train.steps:
            raise ConfigError(
                f"critic.warmup_steps={self.critic.warmup_steps} leaves no step of train.steps="
                f"{self.train.steps} for the policy; lower it"
            )
        if self.model.precision == "fp16-mixed":
            raise ConfigError(
                "model.precision=fp16-mixed is not supported by PPO yet (the critic has no loss scaler); "
                "use bf16-mixed or fp32"
            )
        if self.critic.shared_backbone and (self.model.lora.r or self.critic.path is not None):
            raise ConfigError(
                "critic.shared_backbone puts a value head on the policy's own backbone: it takes no "
                "critic.path and no LoRA (model.lora.r); unset one or set critic.shared_backbone=false"
            )
        if self.model.lora.r and self.algo.ref_offload:
            raise ConfigError(
                "algo.ref_offload has nothing to move under LoRA (model.lora.r > 0); set it to false"
            )
        batch = self.train.prompts_per_step * self.rollout.group_size
        if self.train.prompts_per_step % self.algo.minibatches != 0:
            raise ConfigError(
                f"algo.minibatches={self.algo.minibatches} must divide train.prompts_per_step="
                f"{self.train.prompts_per_step} (each minibatch holds whole prompts' rows; batch {batch})"
            )
