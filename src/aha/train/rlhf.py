"""`aha rlhf`: SFT -> reward model -> RL in one command, each stage's output the next stage's input.

The config has one section per stage with the keys of its own command (`sft:` as `aha sft`, `rm:` as
`aha rm`, `grpo:` as `aha grpo` or `ppo:` as `aha ppo`, chosen by `pipeline.rl`) and a `pipeline:`
section that wires them:
  - every stage runs in its own directory under `pipeline.output_dir` (sft/, rm/, <rl>/): the
    pipeline sets each section's run.output_dir;
  - the reward model starts from the SFT model (InstructGPT's recipe) unless
    `pipeline.rm_from_sft=false` (then rm.model.path, e.g. an encoder such as MiniLM);
  - the RL policy and its KL reference are the SFT model; its `reward_model` reward (which the RL
    section's rewards.functions must name) is the trained reward model.
`pipeline.json` in the pipeline directory records each finished stage, its output and a hash of its
resolved config. Running again skips finished stages (refusing one whose config has changed since),
continues an interrupted one from its last checkpoint, and starts the rest. So the re-run is the
resume, after a kill, a SIGTERM or a crash alike, and `aha rlhf` takes no --resume: a flag that changed
nothing would suggest that running without it starts over.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aha.config import ConfigError, config_to_dict, option
from aha.dist import env as dist_env
from aha.dist.reduce import from_main
from aha.durable import write_text_atomically
from aha.rewards.base import RewardConfigError, resolve_reward_fn
from aha.train.common_config import resolve_device
from aha.train.grpo import GRPORunConfig, run_grpo
from aha.train.interrupt import RunInterrupted
from aha.train.ppo import check_ppo_under_torchrun, run_ppo
from aha.train.ppo_config import PPORunConfig
from aha.train.reward_model import RMRunConfig, run_rm
from aha.train.sft import SFTRunConfig, run_sft
from aha.write_errors import write_failed

STATE_FILE = "pipeline.json"
# RL algorithms `pipeline.rl` can name; each is a config section of the same name.
RL_ALGORITHMS = ("grpo", "ppo")


@dataclass
class PipelineConfig:
    output_dir: str = option("runs/rlhf", help="Pipeline directory; each stage runs in a folder under it.")
    rl: str = option(
        "grpo",
        help="RL algorithm of the last stage, configured by the section of that name "
        f"(available: {', '.join(RL_ALGORITHMS)}).",
    )
    until: str = option(
        "rl", choices=("sft", "rm", "rl"), help="The last stage to run (sft, rm, or rl: all three)."
    )
    rm_from_sft: bool = option(
        True,
        help="Start the reward model from the SFT model (InstructGPT); false: from rm.model.path.",
    )

    def validate(self) -> None:
        if self.rl not in RL_ALGORITHMS:
            raise ConfigError(f"rl={self.rl!r} is not available; choose one of: {', '.join(RL_ALGORITHMS)}")


@dataclass
class RLHFConfig:
    pipeline: PipelineConfig = option(default_factory=PipelineConfig, help="How the stages are wired.")
    sft: SFTRunConfig = option(default_factory=SFTRunConfig, help="Stage 1: the keys of `aha sft`.")
    rm: RMRunConfig = option(default_factory=RMRunConfig, help="Stage 2: the keys of `aha rm`.")
    grpo: GRPORunConfig = option(
        default_factory=GRPORunConfig,
        help="Stage 3 with pipeline.rl=grpo: the keys of `aha grpo`. rewards.functions must include "
        "reward_model (its path is set to the trained reward model).",
    )
    ppo: PPORunConfig = option(
        default_factory=PPORunConfig,
        help="Stage 3 with pipeline.rl=ppo: the keys of `aha ppo`. rewards.functions must include "
        "reward_model; the critic starts from the trained reward model (OpenRLHF, TRL) when that was "
        "trained from the SFT model and critic.path is unset (with critic.shared_backbone: a fresh head "
        "on the policy's backbone, as in aha ppo).",
    )

    def validate(self) -> None:
        rl = getattr(self, self.pipeline.rl)
        if "reward_model" not in rl.rewards.functions:
            raise ConfigError(
                f"{self.pipeline.rl}.rewards.functions={rl.rewards.functions} does not include reward_model: "
                "the RL stage of the pipeline optimises the reward model it trained"
            )
        if "path" in ((rl.rewards.options or {}).get("reward_model") or {}):
            raise ConfigError(
                f"{self.pipeline.rl}.rewards.options.reward_model.path is set by the pipeline (the trained "
                "reward model); remove it"
            )


@dataclass
class RLHFResult:
    output_dir: Path
    outputs: dict[str, Path]  # stage -> its output (SFT and RM: final/; RL: the run directory)
    ran: list[str] = field(default_factory=list)  # stages run (or continued) by this call
    skipped: list[str] = field(default_factory=list)  # stages already finished before this call
    results: dict[str, Any] = field(default_factory=dict)  # stage -> its run function's result, if run


def stage_configs(cfg: RLHFConfig) -> tuple[SFTRunConfig, RMRunConfig, Any]:
    """The three stage configs with their run directories and inputs wired (outputs of earlier stages
    are fixed paths under the pipeline directory, so this needs no stage to have run)."""
    root = Path(cfg.pipeline.output_dir)
    sft = _with_output(cfg.sft, root / "sft")
    rm = _with_output(cfg.rm, root / "rm")
    sft_final = root / "sft" / "final"
    if cfg.pipeline.rm_from_sft:
        rm.model.path = str(sft_final)
    rl = _with_output(getattr(cfg, cfg.pipeline.rl), root / cfg.pipeline.rl)
    rl.model.path = str(sft_final)
    options = dict(rl.rewards.options or {})
    options["reward_model"] = {**(options.get("reward_model") or {}), "path": str(root / "rm" / "final")}
    rl.rewards.options = options
    if cfg.pipeline.rl == "ppo" and cfg.pipeline.rm_from_sft and rl.critic.path is None:
        if not rl.critic.shared_backbone:  # a head on the policy's backbone takes no critic.path
            rl.critic.path = str(root / "rm" / "final")  # same backbone and tokenizer as the policy
    return sft, rm, rl


def run_rlhf(cfg: RLHFConfig) -> RLHFResult:
    """Run the stages that are not finished, in order; each continues from its checkpoint if it has one.
    Under torchrun every rank runs every stage; rank 0 alone writes pipeline.json, and every rank
    decides to skip, continue or start a stage on what rank 0 read (so a re-run takes one branch)."""
    root = Path(cfg.pipeline.output_dir)
    sft, rm, rl = stage_configs(cfg)
    stages = [("sft", sft, run_sft), ("rm", rm, run_rm), (cfg.pipeline.rl, rl, _RL_RUNNERS[cfg.pipeline.rl])]
    last = {"sft": 0, "rm": 1, "rl": 2}[cfg.pipeline.until]
    if last == 2:
        _check_rl_stage_early(cfg.pipeline.rl, rl)
    env = _join_process_group(stages[: last + 1])
    if env.is_main:
        root.mkdir(parents=True, exist_ok=True)
    result = RLHFResult(root, {})
    for name, stage_cfg, run in stages[: last + 1]:
        digest = config_hash(stage_cfg)
        dist_env.barrier()  # rank 0 has recorded the stage before, and no rank has looked at this one
        seen = from_main(lambda name=name, run_dir=Path(stage_cfg.run.output_dir): _look(root, name, run_dir))
        state, done = seen["state"], seen["state"].get(name)
        if done is not None:
            _check_finished(root, name, done, digest, result.ran, seen["output_exists"])
            if env.is_main:
                print(f"aha rlhf: {name} finished earlier, skipped ({done['output']})", file=sys.stderr)
            result.outputs[name] = Path(done["output"])
            result.skipped.append(name)
            continue
        resume = seen["started"]
        if env.is_main:
            verb = "continuing" if resume else "running"
            print(f"aha rlhf: {verb} {name} in {stage_cfg.run.output_dir}", file=sys.stderr)
        try:
            out = run(stage_cfg, resume=resume)
        except RunInterrupted as e:  # `aha rlhf` has no --resume: running it again continues
            raise RunInterrupted(
                e.signum, e.step, e.run_dir, f"stage {name}; run the same aha rlhf command again to continue"
            ) from None
        except ConfigError as e:  # the stage names its own keys; here they live under `name.`
            raise ConfigError(f"stage {name}: {e} (this stage's keys are {name}.*)") from None
        output = getattr(out, "final_dir", None) or out.run_dir
        stop = getattr(out, "stop_reason", None)
        dist_env.barrier()  # the other ranks return before rank 0 has exported the stage's final/
        if env.is_main:
            state[name] = {"output": str(output), "config_hash": digest, "stop_reason": stop}
            _write_state(root, state, name)
        result.outputs[name] = Path(output)
        result.ran.append(name)
        result.results[name] = out
    return result


def _join_process_group(stages: list[tuple[str, Any, Any]]) -> dist_env.DistEnv:
    """Under torchrun, join the process group before the first stage would, for the pipeline's own
    barriers. Its backend (NCCL on GPUs, gloo on the CPU) then serves every stage, so under torchrun
    the stages must run on one kind of device."""
    devices = {name: resolve_device(stage_cfg.model.device) for name, stage_cfg, _ in stages}
    kinds = {device.split(":")[0] for device in devices.values()}
    if len(kinds) > 1 and dist_env.env_from(os.environ) is not None:
        listed = ", ".join(f"{name}.model.device={device}" for name, device in devices.items())
        raise ConfigError(f"under torchrun the stages must run on one kind of device ({listed})")
    return dist_env.init(devices["sft"])[0]


def _check_rl_stage_early(name: str, rl: Any) -> None:
    """Refusals the RL stage would raise as it starts, raised before SFT and the reward model run: PPO's
    under torchrun, and the reward model reward's options (e.g. normalize=running under several
    processes). Building the reward object reads no file: it loads the model on first use."""
    if name == "ppo":
        check_ppo_under_torchrun(rl, section="ppo.")
    try:
        resolve_reward_fn("reward_model", rl.rewards.options["reward_model"])
    except RewardConfigError as e:
        raise ConfigError(f"{name}.rewards.options: {e}") from None


def _look(root: Path, name: str, run_dir: Path) -> dict:
    """What decides a stage's fate: the pipeline's record, whether the recorded output still exists, and
    whether the stage was started (a metrics.jsonl: continue it from its checkpoint)."""
    state = _read_state(root)
    done = state.get(name)
    return {
        "state": state,
        "output_exists": done is not None and Path(done["output"]).exists(),
        "started": (run_dir / "metrics.jsonl").exists(),
    }


def _check_finished(
    root: Path, name: str, done: dict, digest: str, ran: list[str], output_exists: bool
) -> None:
    """A finished stage may be skipped only if its inputs and config are the ones it finished with."""
    if ran:
        raise ConfigError(
            f"stage {name} finished before {ran[-1]}, which had to run again; delete {root / name} and "
            f"its entry in {root / STATE_FILE} to redo it from the new input"
        )
    if not output_exists:
        raise ConfigError(
            f"stage {name} is recorded as finished but its output {done['output']} is gone; delete "
            f"{root / name} and the later stages' folders, and their entries in {root / STATE_FILE}"
        )
    if done["config_hash"] != digest:
        raise ConfigError(
            f"stage {name} finished in {root / name} with another config; put the pipeline in a new "
            f"pipeline.output_dir, or delete {root / name} (and the later stages) to redo it"
        )


_RL_RUNNERS = {"grpo": run_grpo, "ppo": run_ppo}


def config_hash(stage_cfg: Any) -> str:
    """A stage's identity: its resolved config, without the keys that change nothing it computes."""
    tree = config_to_dict(stage_cfg)
    tree.get("run", {}).pop("progress", None)
    return hashlib.sha256(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _with_output(stage_cfg: Any, out_dir: Path) -> Any:
    wired = copy.deepcopy(stage_cfg)
    wired.run.output_dir = str(out_dir)
    return wired


def _read_state(root: Path) -> dict:
    path = root / STATE_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def _write_state(root: Path, state: dict, finished: str) -> None:
    """Durable before the next stage starts: a power cut must not lose a finished stage's record. A
    failed write (a full disk) leaves the previous record, and the stage's checkpoints let it finish."""
    path = root / STATE_FILE
    try:
        write_text_atomically(path, json.dumps(state, indent=2) + "\n")
    except OSError as e:
        raise write_failed(
            path,
            e,
            f"it still records the stages finished before {finished}; run the same aha rlhf command again "
            f"once there is room: {finished} continues from its last checkpoint",
        ) from None
