"""The GRPO run configuration: GRPO's own algo section (advantages, clipping, KL against the reference)
and the run config that joins it to the sections shared with PPO (aha.train.rl_config), with the checks
that reject bad combinations."""

from __future__ import annotations

from dataclasses import dataclass

from aha.algos.kl import KL_ESTIMATORS
from aha.algos.policy_loss import IMPORTANCE_RATIOS, LOSS_AGG_MODES
from aha.algos.rollout_correction import DEFAULT_CAP
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


@dataclass
class AlgoConfig:
    advantage: str = option(
        "grpo",
        choices=("grpo", "dr_grpo", "rloo"),
        help="grpo: (r-mean)/std; dr_grpo: r-mean (no std); rloo: leave-one-out baseline.",
    )
    loss_agg: str = option(
        "token-mean",
        choices=LOSS_AGG_MODES,
        help="token-mean (DAPO), seq-mean-token-mean (original GRPO), seq-mean-token-sum-norm (Dr. GRPO).",
    )
    clip_low: float = option(0.2, help="Lower clip range: ratio >= 1 - clip_low.")
    clip_high: float = option(0.2, help="Upper clip range: ratio <= 1 + clip_high (DAPO clip-higher: 0.28).")
    importance_ratio: str = option(
        "token",
        choices=IMPORTANCE_RATIOS,
        help="token: a ratio per token (PPO/GRPO); sequence: GSPO's per-sequence ratio exp(mean token "
        "log-ratio), clipped per sequence (GSPO pairs it with loss_agg=seq-mean-token-mean and much "
        "smaller clip ranges, about 3e-4 / 4e-4).",
    )
    beta: float = option(
        0.04, help="KL penalty weight against the reference policy (0 = no reference model)."
    )
    kl_estimator: str = option("k3", choices=KL_ESTIMATORS, help="KL estimator (k1, k2, k3).")
    mu: int = option(1, help="Optimisation passes over each batch (mu in the GRPO paper).")
    minibatches: int = option(
        1, help="Optimizer steps per pass: the batch is split into this many minibatches."
    )
    ref_sync_every: int = option(
        0, help="Reset the reference policy to the current policy every N steps (0 = never)."
    )
    ref_offload: bool = option(
        False,
        help="Keep the reference policy in CPU memory and move it to the GPU only for its pass (once per "
        "step): frees its share of GPU memory for a host-to-device and device-to-host copy of its weights "
        "each step (measured: +0.8 s a step for a 0.5B model on an H200, docs/ARCHITECTURE.md). No effect "
        "when training on the CPU.",
    )
    rollout_is_cap: float = option(
        DEFAULT_CAP,
        help="C of truncated importance sampling, used when rollout.dtype differs from the training "
        "precision: each token's policy-gradient term is weighted by min(pi_train / pi_rollout, C) "
        "(verl's default 2). 0 turns the correction off (the mismatch is still logged).",
    )
    drop_zero_variance_groups: bool = option(
        False, help="Leave groups whose rewards are all equal out of the loss (they carry no signal)."
    )

    def validate(self) -> None:
        check_policy_update(self)
        if self.beta < 0:
            raise ConfigError("beta must be >= 0")
        if self.rollout_is_cap < 0:
            raise ConfigError("rollout_is_cap must be >= 0 (0 = no importance-sampling correction)")


@dataclass
class GRPORunConfig:
    model: ModelConfig = option(
        default_factory=lambda: ModelConfig(path="runs/tiny-model"), help="The policy to train."
    )
    data: PromptDataConfig = option(default_factory=PromptDataConfig, help="Training and held-out prompts.")
    rewards: RewardConfig = option(default_factory=RewardConfig, help="How completions are scored.")
    rollout: RolloutConfig = option(default_factory=RolloutConfig, help="How completions are sampled.")
    algo: AlgoConfig = option(default_factory=AlgoConfig, help="Advantages, loss and KL.")
    train: RLTrainConfig = option(default_factory=RLTrainConfig, help="Steps and batch size.")
    optim: OptimConfig = option(default_factory=OptimConfig, help="AdamW and the learning-rate schedule.")
    eval: EvalConfig = option(default_factory=EvalConfig, help="Held-out evaluation.")
    track: TrackConfig = option(default_factory=TrackConfig, help="Samples, plots, TensorBoard and W&B.")
    run: RunConfig = option(
        default_factory=lambda: RunConfig(output_dir="runs/grpo"), help="Run directory, seed, checkpoints."
    )
    dist: DistConfig = option(default_factory=DistConfig, help="Several processes under torchrun.")

    def validate(self) -> None:
        check_rl_run(self)
        if self.model.lora.r and self.algo.ref_offload:
            raise ConfigError(
                "algo.ref_offload has nothing to move under LoRA (model.lora.r > 0): the reference is the "
                "policy itself with its adapters switched off; set algo.ref_offload=false"
            )
        if self.model.lora.r and self.algo.beta > 0 and self.algo.ref_sync_every:
            raise ConfigError(
                "algo.ref_sync_every needs full fine-tuning: under LoRA (model.lora.r > 0) the reference is "
                "the base model with the adapters switched off, and moving it to the policy would mean "
                "merging the adapters into the base weights; set algo.ref_sync_every=0 or model.lora.r=0"
            )
        batch = self.train.prompts_per_step * self.rollout.group_size
        if batch % self.algo.minibatches != 0:
            raise ConfigError(
                f"algo.minibatches={self.algo.minibatches} does not divide the batch of "
                f"train.prompts_per_step x rollout.group_size = {batch} completions; "
                f"choose a divisor of {batch}"
            )
        if (batch // self.algo.minibatches) % self.rollout.group_size != 0:
            raise ConfigError(
                f"each minibatch ({batch // self.algo.minibatches} completions) must hold whole groups of "
                f"rollout.group_size={self.rollout.group_size}; lower algo.minibatches"
            )
