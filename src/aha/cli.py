"""The `aha` command: `aha <cmd> [--config FILE.yaml] [--resume] [--print-config] [key=value ...]`.

Each subcommand is a config dataclass plus a run function, named by import path and imported only when
that subcommand runs, so `aha --help` stays fast and never imports torch.

Run-function convention: `run(cfg) -> Any`; a stage that can continue an interrupted run also accepts
`resume: bool = False` (it then continues from the latest checkpoint in its run directory). `--resume` is
refused for run functions without that parameter.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import json
import sys
import textwrap
from collections.abc import Mapping
from typing import Any

from aha.config import ConfigError, config_to_yaml, describe_options, describe_sections, load_config
from aha.models.weight_files import WeightFileError
from aha.train.interrupt import RunInterrupted
from aha.write_errors import WriteFailed

# Commands that run as several processes under torchrun (docs/scaling.md); the others refuse to.
DISTRIBUTED_COMMANDS = ("grpo", "sft", "rm", "ppo", "rlhf")

# name -> ("module:ConfigClass", "module:run_function", one-line description)
CommandTable = Mapping[str, tuple[str, str, str]]

COMMANDS: CommandTable = {
    "grpo": (
        "aha.train.grpo:GRPORunConfig",
        "aha.train.grpo:run_grpo",
        "Train a policy with GRPO on prompts scored by verifiable rewards.",
    ),
    "ppo": (
        "aha.train.ppo:PPORunConfig",
        "aha.train.ppo:run_ppo",
        "Train a policy with PPO: a critic, GAE advantages, KL in the reward or the loss.",
    ),
    "sft": (
        "aha.train.sft:SFTRunConfig",
        "aha.train.sft:run_sft",
        "Supervised fine-tuning on demonstrations.",
    ),
    "rm": (
        "aha.train.reward_model:RMRunConfig",
        "aha.train.reward_model:run_rm",
        "Train a reward model on human preferences (pairs, K-wise rankings or hh-rlhf).",
    ),
    "rlhf": (
        "aha.train.rlhf:RLHFConfig",
        "aha.train.rlhf:run_rlhf",
        "SFT -> reward model -> RL in one command; running it again skips finished stages.",
    ),
    "eval": (
        "aha.evaluation.config:EvalCommand",
        "aha.evaluation.run:run_eval",
        "Evaluate a model or a run's checkpoint on held-out prompts: accuracy, pass@k, majority vote.",
    ),
    "tiny-model": (
        "aha.models.tiny:TinyModelCommand",
        "aha.models.tiny:run_tiny_model",
        "Write the built-in tiny Llama and character tokenizer to a directory (HF format).",
    ),
    "merge-lora": (
        "aha.models.lora:MergeLoRACommand",
        "aha.models.lora:run_merge_lora",
        "Merge a LoRA adapter directory into its base model and write a plain HF model (needs peft).",
    ),
    "convert-gguf": (
        "aha.models.gguf:ConvertGGUFCommand",
        "aha.models.gguf:run_convert_gguf",
        "Convert a GGUF checkpoint (e.g. from llama.cpp) into a Hugging Face directory aha can train.",
    ),
    "report": (
        "aha.track.report:ReportCommand",
        "aha.track.report:run_report",
        "Write a run's self-contained HTML report: curves, evaluation, samples, timing, memory, config.",
    ),
    "demo": (
        "aha.demo:DemoConfig",
        "aha.demo:run_demo",
        "RL surpasses its teacher (scenario=carry), chain of thought grows (scenario=cot), reward hacking "
        "caught (scenario=hacking), on a laptop CPU (algo=ppo: PPO in place of GRPO).",
    ),
}

USAGE = "usage: aha <command> [--config FILE.yaml] [--resume] [--print-config] [key=value ...]"


class UsageError(Exception):
    """Bad command-line syntax (as opposed to a bad config value)."""


def main(argv: list[str] | None = None, commands: CommandTable | None = None) -> int:
    """Entry point of the `aha` console script; returns the process exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    commands = COMMANDS if commands is None else commands
    try:
        return _dispatch(argv, commands)
    except (ConfigError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (WriteFailed, WeightFileError) as e:  # a failed write says what was kept; a damaged model file
        print(f"error: {e}", file=sys.stderr)
        return 1
    except RunInterrupted as e:  # SIGTERM / Ctrl-C at a step boundary: the step was checkpointed
        print(e, file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _dispatch(argv: list[str], commands: CommandTable) -> int:
    if not argv:
        print(_main_help(commands), file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help", "help"):
        print(_main_help(commands))
        return 0
    if argv[0] == "--version":
        from aha import __version__

        print(f"aha {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in commands:
        close = difflib.get_close_matches(name, list(commands), n=1)
        hint = f" did you mean {close[0]!r}?" if close else ""
        raise UsageError(f"unknown command {name!r};{hint} commands: {', '.join(commands)} (see aha --help)")
    config_spec, run_spec, description = commands[name]
    args = _parse_command_args(name, rest)
    config_cls = _import(config_spec)
    args["overrides"] = _positional(config_cls, args["overrides"])
    if args["help"]:
        run = _import(run_spec)
        print(_command_help(name, description, config_cls, _accepts_resume(run)))
        return 0
    cfg = load_config(config_cls, args["config"], args["overrides"])
    if args["print_config"]:
        print(config_to_yaml(cfg), end="")
        return 0
    if name not in DISTRIBUTED_COMMANDS:
        from aha.dist.env import require_single_process

        require_single_process(f"aha {name}")
    run = _import(run_spec)
    try:
        _run(run, cfg, name, run_spec, args["resume"])
    finally:
        from aha.dist.env import shutdown

        shutdown()  # leave torchrun's process group, if the command joined one
    return 0


def _run(run: Any, cfg: Any, name: str, run_spec: str, resume: bool) -> None:
    if resume:
        if not _accepts_resume(run):
            raise UsageError(f"aha {name} cannot resume: {run_spec} has no 'resume' parameter")
        run(cfg, resume=True)
    else:
        run(cfg)


def _parse_command_args(name: str, rest: list[str]) -> dict[str, Any]:
    args: dict[str, Any] = {
        "config": None,
        "resume": False,
        "print_config": False,
        "help": False,
        "overrides": [],
    }
    i = 0
    while i < len(rest):
        arg = rest[i]
        if arg in ("-h", "--help"):
            args["help"] = True
        elif arg == "--resume":
            args["resume"] = True
        elif arg == "--print-config":
            args["print_config"] = True
        elif arg == "--config" or arg.startswith("--config="):
            if arg == "--config":
                if i + 1 >= len(rest):
                    raise UsageError("--config needs a file: --config FILE.yaml")
                i += 1
                args["config"] = rest[i]
            else:
                args["config"] = arg.split("=", 1)[1]
        elif arg.startswith("-"):
            raise UsageError(f"unknown flag {arg!r} (options are key=value; see aha {name} --help)")
        else:
            args["overrides"].append(arg)  # load_config reports a missing '='
        i += 1
    return args


def _positional(config_cls: type, overrides: list[str]) -> list[str]:
    """A config class with `positional = "name"` takes its first bare argument (no '=') as that option,
    so `aha report runs/grpo` means `aha report run_dir=runs/grpo`."""
    name = getattr(config_cls, "positional", None)
    bare = [i for i, arg in enumerate(overrides) if "=" not in arg]
    if name is None or not bare:
        return overrides
    i = bare[0]
    return [*overrides[:i], f"{name}={json.dumps(overrides[i])}", *overrides[i + 1 :]]


def _import(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and (module_name + ".").startswith(e.name + "."):  # the command's module itself
            raise UsageError(f"cannot import {module_name}: {e}") from None
        raise  # a dependency of the module is missing: show the real traceback
    try:
        return getattr(module, attr)
    except AttributeError:
        raise UsageError(f"{module_name} has no attribute {attr!r} (command table entry {spec!r})") from None


def _accepts_resume(run: Any) -> bool:
    return "resume" in inspect.signature(run).parameters


def _main_help(commands: CommandTable) -> str:
    width = max((len(n) for n in commands), default=0)
    lines = [USAGE, "", "commands:"]
    lines += [f"  {name.ljust(width)}  {desc}" for name, (_, _, desc) in commands.items()]
    lines += ["", "Run `aha <command> --help` to list every option of a command with its type and default."]
    return "\n".join(lines)


def _command_help(name: str, description: str, config_cls: type, resumable: bool) -> str:
    resume = " [--resume]" if resumable else ""
    positional = getattr(config_cls, "positional", None)
    first = f" {positional.upper()}" if positional else ""
    lines = [
        f"usage: aha {name}{first} [--config FILE.yaml]{resume} [--print-config] [key=value ...]",
        "",
        description,
        "",
        "  --config FILE.yaml  read options from a YAML file (nested mappings for sections)",
    ]
    if resumable:
        lines.append("  --resume            continue from the latest checkpoint in the run directory")
    lines += [
        "  --print-config      print the resolved config as YAML and exit",
        "  key=value           set an option; values are YAML: train.lr=1e-5 'stop=[\"\\n\"]' seed=null",
    ]
    sections: dict[str, list[str]] = {}
    for key, type_name, default, help_text in describe_options(config_cls):
        entry = sections.setdefault(key.split(".")[0] if "." in key else "general", [])
        entry.append(f"  {key} ({type_name}, default: {default})")
        entry += textwrap.wrap(help_text, width=100, initial_indent=" " * 6, subsequent_indent=" " * 6)
    section_help = describe_sections(config_cls)
    for section, entries in sections.items():
        heading = f"{section}: {section_help[section]}" if section in section_help else f"{section}:"
        lines += ["", heading, *entries]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
