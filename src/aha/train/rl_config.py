"""The config sections GRPO and PPO share (prompts, rewards, rollouts, steps, evaluation, tracking) and
the checks both run, so each algorithm's config module holds only what is its own."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aha.config import ConfigError, option
from aha.data.chat import CHAT_TEMPLATE_HELP, CHAT_TEMPLATE_MODES, SYSTEM_PROMPT_HELP
from aha.rewards.base import RewardSpec, make_reward_specs
from aha.track.hacking import HackingConfig
from aha.train.common_config import TrackingConfig
from aha.train.nonfinite import ON_NONFINITE, ON_NONFINITE_HELP
from aha.train.precision import ROLLOUT_DTYPES


@dataclass
class PromptDataConfig:
    train_file: str | None = option(
        None,
        help="JSONL of prompts (+ fields such as 'answer' for rewards). None = built-in arithmetic task.",
    )
    eval_file: str | None = option(
        None, help="Held-out JSONL prompts. None = built-in arithmetic held-out set."
    )
    prompt_field: str = option(
        "prompt", help="Name of the prompt column: a string, or a list of {role, content} messages."
    )
    chat_template: str = option("auto", choices=CHAT_TEMPLATE_MODES, help=CHAT_TEMPLATE_HELP)
    system_prompt: str | None = option(None, help=SYSTEM_PROMPT_HELP)
    arithmetic_digits: int = option(2, help="Built-in task: digits per operand.")
    arithmetic_train_size: int = option(2000, help="Built-in task: number of training problems.")
    arithmetic_eval_size: int = option(200, help="Built-in task: number of held-out problems.")


@dataclass
class RewardConfig:
    functions: list[str] = option(
        default_factory=lambda: ["exact_answer"],
        help="Reward functions: built-in names or 'package.module:function'; their weighted sum is the reward.",
    )
    weights: list[float] | None = option(None, help="One weight per function (default: all 1.0).")
    options: dict[str, dict] | None = option(
        None, help="Options per function name, e.g. {math_answer: {bad_gold: skip, timeout_s: 2}}."
    )
    error_fallback: float | None = option(
        None, help="Reward for a sample whose function raised or returned NaN (None = stop with an error)."
    )
    monitors: list[str] = option(
        default_factory=list,
        help="Reward functions (named as in functions) scored every step and at evaluation, logged as "
        "monitor/<name> and eval/monitor/<name>, never optimised: a gold reward, a held-out reward "
        "model, a length statistic. The hacking watch (track.hacking) compares them with the reward.",
    )
    monitor_options: dict[str, dict] | None = option(
        None, help="Options per monitor name, as `options` is for functions."
    )

    def specs(self) -> list[RewardSpec]:
        """The reward functions as weighted specs (their sum is the reward)."""
        weights = self.weights or [1.0] * len(self.functions)
        options = self.options or {}
        entries = zip(self.functions, weights, strict=True)
        return make_reward_specs([{"fn": f, "weight": w, "options": options.get(f)} for f, w in entries])

    def monitor_specs(self) -> list[RewardSpec]:
        """The monitors as specs (their weights are unused: monitors enter no total)."""
        options = self.monitor_options or {}
        return make_reward_specs([{"fn": name, "options": options.get(name)} for name in self.monitors])

    def validate(self) -> None:
        if not self.functions:
            raise ConfigError("functions must name at least one reward function")
        unknown_monitors = set(self.monitor_options or {}) - set(self.monitors)
        if unknown_monitors:
            raise ConfigError(
                f"monitor_options given for {sorted(unknown_monitors)}, which are not in "
                f"monitors={self.monitors}"
            )
        unknown = set(self.options or {}) - set(self.functions)
        if unknown:
            raise ConfigError(
                f"options given for {sorted(unknown)}, which are not in functions={self.functions}"
            )
        if self.weights is not None and len(self.weights) != len(self.functions):
            raise ConfigError(
                f"weights has {len(self.weights)} entries but functions has {len(self.functions)}; "
                "give one weight per function or leave weights unset"
            )


@dataclass
class RolloutConfig:
    engine: str = option(
        "native",
        help="Generation engine: native (the fast default) or hf (model.generate, the reference). "
        "There is no vLLM engine yet.",
    )
    group_size: int = option(8, help="G: completions sampled per prompt (the group of GRPO).")
    max_new_tokens: int = option(16, help="Maximum completion length in tokens.")
    min_new_tokens: int = option(
        0, help="Forbid EOS before this many tokens (benchmarks force exact lengths)."
    )
    temperature: float = option(1.0, help="Sampling temperature (also used to score tokens in the loss).")
    top_p: float = option(1.0, help="Nucleus sampling threshold (1 = off).")
    top_k: int = option(0, help="Top-k sampling (0 = off).")
    stop_strings: list[str] = option(default_factory=list, help="Stop generating after any of these strings.")
    dtype: str = option(
        "auto",
        choices=ROLLOUT_DTYPES,
        help="Precision of the rollout (and evaluation) forwards: auto = the training forward's "
        "(model.precision), float32, or bfloat16 (bf16 weights for the sampler's matmuls; faster, and "
        "off-policy by rounding when training is not bf16-mixed: the update then reweights tokens by "
        "truncated importance sampling, algo.rollout_is_cap, and logs rollout/* mismatch metrics).",
    )

    def validate(self) -> None:
        if self.engine == "vllm":
            raise ConfigError(
                "engine='vllm': aha has no vLLM engine yet; use rollout.engine=native (the fast default) or hf"
            )
        if self.engine not in ("native", "hf"):
            raise ConfigError(f"engine={self.engine!r} is not one of: native, hf")
        self.check_group_size()
        if self.temperature <= 0:
            raise ConfigError("temperature must be > 0 for RL sampling (greedy samples have no variance)")

    def check_group_size(self) -> None:
        if self.group_size < 2:
            raise ConfigError("group_size must be >= 2: group-relative advantages need at least two samples")


@dataclass
class RLTrainConfig:
    steps: int = option(100, help="RL steps (one batch of prompts_per_step x group_size completions each).")
    prompts_per_step: int = option(8, help="Prompts per step; each gets group_size completions.")
    micro_batch_size: int = option(
        0,
        help="Completions per forward/backward pass, in whole groups (rounded down to a multiple of "
        "group_size, at least one group). Gradients accumulate over a minibatch's micro-batches: the "
        "same update with less activation memory. 0 = the whole minibatch in one pass (fastest).",
    )
    gradient_checkpointing: bool = option(
        False,
        help="Keep only each decoder layer's input for backward and recompute the layer there: far less "
        "activation memory for about one more forward pass. The policy's scoring then runs every row's "
        "prompt (no shared-prompt pass) in the gradient pass.",
    )
    on_nonfinite: str = option("stop", choices=ON_NONFINITE, help=ON_NONFINITE_HELP)

    def validate(self) -> None:
        if self.steps < 1 or self.prompts_per_step < 1:
            raise ConfigError(
                f"need steps >= 1 and prompts_per_step >= 1, got {self.steps} and {self.prompts_per_step}"
            )
        if self.micro_batch_size < 0:
            raise ConfigError("micro_batch_size must be >= 0 (0 = the whole minibatch in one pass)")


@dataclass
class EvalConfig:
    every: int = option(
        10, help="Evaluate on the held-out prompts every N steps (0 = only at start and end)."
    )
    num_prompts: int = option(200, help="Held-out prompts per evaluation (the first N of the eval set).")
    greedy: bool = option(True, help="Greedy decoding for evaluation (else the rollout temperature).")
    success_threshold: float = option(1.0, help="A completion counts as correct if its total reward >= this.")


@dataclass
class TrackConfig(TrackingConfig):
    sample_every: int = option(10, help="Write sample completions every N steps (0 = never).")
    samples_shown: int = option(4, help="Sample completions printed to the terminal each time.")
    plot: bool = option(True, help="Write plots.png with the training curves at the end.")
    hacking: HackingConfig = option(
        default_factory=HackingConfig,
        help="The hacking watch: warn (and optionally stop) when the reward rises while a monitor falls.",
    )


def check_rl_run(cfg: Any) -> None:
    """Checks across the sections a GRPO or PPO run config shares: the hacking watch needs monitors and
    evaluations to compare, and the warm-up must fit in the run."""
    if cfg.track.hacking.stop and not (cfg.rewards.monitors and cfg.track.hacking.patience):
        raise ConfigError(
            "track.hacking.stop needs a watch: name rewards.monitors and set track.hacking.patience > 0"
        )
    if cfg.rewards.monitors and cfg.track.hacking.patience and cfg.eval.every == 0:
        raise ConfigError(
            "track.hacking watches evaluations, and eval.every=0 gives only the first and the last; "
            "set eval.every > 0, or track.hacking.patience=0 to only log the monitors"
        )
    if cfg.optim.warmup_steps > cfg.train.steps:
        raise ConfigError(
            f"optim.warmup_steps={cfg.optim.warmup_steps} exceeds train.steps={cfg.train.steps}; lower it"
        )


def check_policy_update(algo: Any) -> None:
    """The clipped policy update's passes and clip range, named alike in GRPO's and PPO's algo sections."""
    if algo.mu < 1 or algo.minibatches < 1:
        raise ConfigError("mu and minibatches must be >= 1")
    if not (0 <= algo.clip_low < 1) or algo.clip_high < 0:
        raise ConfigError("need 0 <= clip_low < 1 and clip_high >= 0")
