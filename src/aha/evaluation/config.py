"""The `aha eval` configuration, and how `aha eval RUN_DIR` takes a training run's settings.

Given a GRPO or PPO run directory (`from_run`), the run's own config.yaml supplies the model (its latest
checkpoint, or `step`), the prompts, the reward functions and monitors, the decoding (greedy if the
run evaluated greedily, else its sampling temperature, top-p and top-k), the precision and the seed;
anything given on the command line or in --config overrides it (`EvalCommand.base_options`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import yaml

from aha.config import ConfigError, option
from aha.train.checkpoint import CHECKPOINTS, latest_checkpoint, list_checkpoints
from aha.train.precision import PRECISIONS, ROLLOUT_DTYPES
from aha.train.rl_config import PromptDataConfig, RewardConfig

VOTE_MODES = ("off", "text", "math")
RESULTS_FILE = "eval.json"
COMPLETIONS_FILE = "completions.jsonl"


@dataclass
class EvalModelConfig:
    path: str | None = option(
        None,
        help="Model to evaluate: a Hugging Face directory, a LoRA adapter directory, or a run's "
        "checkpoints/step-N. Set from the run with from_run.",
    )
    precision: str = option(
        "auto",
        choices=PRECISIONS,
        help="fp32, bf16-mixed or fp16-mixed forwards (auto: bf16-mixed on a CUDA GPU with bf16, fp32 "
        "elsewhere; from_run: the run's).",
    )
    device: str = option("auto", help="'auto' (CUDA if available, else CPU), 'cpu' or 'cuda[:N]'.")
    trust_remote_code: bool = option(
        False, help="Run modelling code shipped with the checkpoint. Only for checkpoints you trust."
    )


@dataclass
class EvalRolloutConfig:
    engine: str = option("native", choices=("native", "hf"), help="Generation engine, as in training.")
    max_new_tokens: int = option(16, help="Maximum completion length in tokens.")
    temperature: float = option(0.0, help="0 = greedy decoding; > 0 samples (needed for eval.samples > 1).")
    top_p: float = option(1.0, help="Nucleus sampling threshold (1 = off).")
    top_k: int = option(0, help="Top-k sampling (0 = off).")
    stop_strings: list[str] = option(default_factory=list, help="Stop generating after any of these strings.")
    dtype: str = option(
        "auto",
        choices=ROLLOUT_DTYPES,
        help="Precision of the sampler: auto (model.precision's), float32, bfloat16.",
    )

    def validate(self) -> None:
        if self.temperature < 0 or self.max_new_tokens < 1:
            raise ConfigError("need temperature >= 0 and max_new_tokens >= 1")


@dataclass
class EvalOptions:
    num_prompts: int = option(0, help="Evaluate the first N held-out prompts (0 = all of them).")
    samples: int = option(1, help="n: completions sampled per prompt (pass@k needs k <= n).")
    pass_k: list[int] = option(
        default_factory=list, help="The k of pass@k to report (default: 1, powers of two below n, and n)."
    )
    vote: str = option(
        "off",
        choices=VOTE_MODES,
        help="Majority vote over each prompt's n samples (maj@n): text = the stripped completion is the "
        "answer; math = the final answer extracted and normalised as the math rewards do (<answer> tag, "
        "\\boxed{}, '#### x', 'the answer is x', else the last number); off = no vote.",
    )
    success_threshold: float = option(1.0, help="A completion counts as correct if its total reward >= this.")
    batch_size: int = option(256, help="Completions generated per engine call.")

    def validate(self) -> None:
        if self.samples < 1 or self.num_prompts < 0 or self.batch_size < 1:
            raise ConfigError("need samples >= 1, num_prompts >= 0 and batch_size >= 1")
        bad = [k for k in self.pass_k if not 1 <= k <= self.samples]
        if bad:
            raise ConfigError(
                f"pass_k: {bad} outside 1..samples={self.samples}; raise eval.samples or drop them"
            )


@dataclass
class EvalOutputConfig:
    output_dir: str | None = option(
        None,
        help="Where eval.json and completions.jsonl go (default: RUN_DIR/eval/<checkpoint>, else runs/eval).",
    )
    seed: int = option(0, help="Seed of the sampling (and of the built-in task's held-out split).")
    threads: int = option(0, help="torch CPU threads (0 = torch's default).")
    progress: bool = option(True, help="Show a progress bar.")


@dataclass
class EvalCommand:
    positional: ClassVar[str] = "from_run"  # `aha eval RUN_DIR`

    from_run: str | None = option(
        None, help="A GRPO or PPO run directory whose settings (model, data, rewards, decoding) to use."
    )
    step: int = option(0, help="With from_run: the checkpoint's step (0 = the latest).")
    model: EvalModelConfig = option(default_factory=EvalModelConfig, help="The model evaluated.")
    data: PromptDataConfig = option(
        default_factory=PromptDataConfig,
        help="Held-out prompts: data.eval_file, or the built-in arithmetic task's held-out set.",
    )
    rewards: RewardConfig = option(
        default_factory=RewardConfig, help="The reward functions that judge each completion (and monitors)."
    )
    rollout: EvalRolloutConfig = option(default_factory=EvalRolloutConfig, help="Decoding.")
    eval: EvalOptions = option(default_factory=EvalOptions, help="Samples per prompt, pass@k, majority vote.")
    run: EvalOutputConfig = option(default_factory=EvalOutputConfig, help="Output directory and seed.")

    def validate(self) -> None:
        if self.model.path is None:
            raise ConfigError(
                "model.path: no model to evaluate; give model.path=DIR, or a run directory (aha eval RUN_DIR)"
            )
        if self.eval.samples > 1 and self.rollout.temperature == 0:
            raise ConfigError(
                f"eval.samples={self.eval.samples} with greedy decoding (rollout.temperature=0) gives the same "
                "completion n times; set rollout.temperature > 0 (e.g. 1.0)"
            )
        if self.step and self.from_run is None:
            raise ConfigError(
                "step picks a checkpoint of from_run; give the run directory too (aha eval RUN_DIR)"
            )

    @classmethod
    def base_options(cls, given: dict[str, Any]) -> dict[str, Any]:
        """The options `from_run` implies (what `given` sets wins over them); {} without from_run."""
        run_dir = given.get("from_run")
        if run_dir is None:
            return {}
        return options_from_run(Path(str(run_dir)), given.get("step", 0))


def options_from_run(run_dir: Path, step: Any) -> dict[str, Any]:
    """The eval options a training run's config.yaml and checkpoints give (see the module docstring)."""
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise ConfigError(f"from_run: {config_file} not found: {run_dir} is not a run directory")
    try:
        run = yaml.safe_load(config_file.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"from_run: {config_file}: invalid YAML: {e}") from None
    if not isinstance(run, dict) or not isinstance(run.get("rewards"), dict):
        raise ConfigError(
            f"from_run: {config_file} is not a GRPO or PPO run's config (it has no rewards section); "
            "give model.path, data.eval_file and rewards.functions instead"
        )
    rollout, run_eval = run.get("rollout") or {}, run.get("eval") or {}
    greedy = run_eval.get("greedy", True)
    decoding = {k: rollout[k] for k in ("engine", "max_new_tokens", "stop_strings", "dtype") if k in rollout}
    if not greedy:
        decoding.update({k: rollout[k] for k in ("temperature", "top_p", "top_k") if k in rollout})
    model = {k: v for k, v in (run.get("model") or {}).items() if k in _field_names(EvalModelConfig)}
    model["path"] = str(_checkpoint(run_dir, step))
    options: dict[str, Any] = {
        "model": model,
        "data": run.get("data") or {},
        "rewards": run["rewards"],
        "rollout": decoding,
        "eval": {k: run_eval[k] for k in ("num_prompts", "success_threshold") if k in run_eval},
        "run": {"output_dir": str(run_dir / "eval" / Path(model["path"]).name)},
    }
    if "seed" in (run.get("run") or {}):
        options["run"]["seed"] = run["run"]["seed"]
    return options


def _checkpoint(run_dir: Path, step: Any) -> Path:
    # a mistyped step picks the latest here; load_config then reports the step's type
    if isinstance(step, bool) or not isinstance(step, int) or step == 0:
        latest = latest_checkpoint(run_dir)
        if latest is None:
            raise ConfigError(f"from_run: {run_dir / CHECKPOINTS} holds no checkpoint yet")
        return latest
    wanted = [c for c in list_checkpoints(run_dir) if c.name == f"step-{step:08d}"]
    if not wanted:
        have = ", ".join(c.name for c in list_checkpoints(run_dir)) or "none"
        raise ConfigError(f"step: {run_dir / CHECKPOINTS} has no checkpoint of step {step} (it has: {have})")
    return wanted[0]


def _field_names(cls: type) -> set[str]:
    return {f.name for f in fields(cls) if f.init}
