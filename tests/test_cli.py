from __future__ import annotations

import importlib
import subprocess
import sys
import types
from dataclasses import dataclass

import pytest

from aha.cli import COMMANDS, main
from aha.config import ConfigError, load_config, option


@dataclass
class OptimSection:
    lr: float = option(1e-3, help="Peak learning rate.")


@dataclass
class FakeConfig:
    name: str = option("run", help="Run name.")
    steps: int = option(3, help="How many steps to take.")
    optim: OptimSection = option(default_factory=OptimSection, help="Optimiser.")

    def validate(self) -> None:
        if self.steps < 0:
            raise ConfigError("steps must be >= 0")


CALLS: list[tuple[FakeConfig, bool | None]] = []


def run_resumable(cfg: FakeConfig, resume: bool = False) -> str:
    CALLS.append((cfg, resume))
    return "done"


def run_plain(cfg: FakeConfig) -> None:
    CALLS.append((cfg, None))


TABLE = {
    "train": ("fake_cmds:FakeConfig", "fake_cmds:run_resumable", "Train something."),
    "plain": ("fake_cmds:FakeConfig", "fake_cmds:run_plain", "Run without resume support."),
    "broken": ("fake_cmds_missing:Config", "fake_cmds_missing:run", "Its module does not exist."),
}


@pytest.fixture(autouse=True)
def fake_module(monkeypatch):
    module = types.ModuleType("fake_cmds")
    module.FakeConfig, module.run_resumable, module.run_plain = FakeConfig, run_resumable, run_plain
    monkeypatch.setitem(sys.modules, "fake_cmds", module)
    CALLS.clear()


def test_main_help_lists_commands(capsys):
    assert main(["--help"], commands=TABLE) == 0
    out = capsys.readouterr().out
    assert "usage: aha <command>" in out
    assert "train   Train something." in out and "plain   Run without resume support." in out


def test_no_arguments_prints_usage_and_fails(capsys):
    assert main([], commands=TABLE) == 2
    assert "commands:" in capsys.readouterr().err


def test_command_help_shows_every_option_grouped(capsys):
    assert main(["train", "--help"], commands=TABLE) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: aha train [--config FILE.yaml] [--resume] [--print-config] [key=value ...]")
    general, optim = out.index("\ngeneral:\n"), out.index("\noptim: Optimiser.\n")
    assert general < out.index("  name (str, default: run)\n      Run name.") < optim
    assert optim < out.index("  optim.lr (float, default: 0.001)\n      Peak learning rate.")
    assert "  steps (int, default: 3)\n      How many steps to take." in out
    assert main(["plain", "--help"], commands=TABLE) == 0
    assert "--resume" not in capsys.readouterr().out


def test_runs_with_config_file_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: from-file\noptim:\n  lr: 0.5\n")
    assert main(["train", "--config", str(path), "steps=9"], commands=TABLE) == 0
    assert CALLS == [(FakeConfig(name="from-file", steps=9, optim=OptimSection(lr=0.5)), False)]
    assert main(["plain", f"--config={path}"], commands=TABLE) == 0
    assert CALLS[-1] == (FakeConfig(name="from-file", optim=OptimSection(lr=0.5)), None)


def test_resume_is_passed_only_to_run_functions_that_accept_it(capsys):
    assert main(["train", "--resume", "optim.lr=1e-4"], commands=TABLE) == 0
    assert CALLS == [(FakeConfig(optim=OptimSection(lr=1e-4)), True)]
    assert main(["plain", "--resume"], commands=TABLE) == 2
    assert (
        "error: aha plain cannot resume: fake_cmds:run_plain has no 'resume' parameter"
        in capsys.readouterr().err
    )
    assert len(CALLS) == 1


def test_config_errors_exit_2_without_traceback(capsys):
    assert main(["train", "optim.lrr=1"], commands=TABLE) == 2
    err = capsys.readouterr().err
    assert err == "error: unknown option optim.lrr (from the command line); did you mean optim.lr?\n"
    assert main(["train", "steps=-1"], commands=TABLE) == 2
    assert capsys.readouterr().err == "error: steps must be >= 0\n"
    assert main(["train", "steps"], commands=TABLE) == 2
    assert "malformed override 'steps'" in capsys.readouterr().err
    assert CALLS == []


def test_print_config_round_trips(tmp_path, capsys):
    assert main(["train", "--print-config", "name=x", "optim.lr=2e-5"], commands=TABLE) == 0
    printed = capsys.readouterr().out
    assert CALLS == []  # printing the config does not run anything
    saved = tmp_path / "printed.yaml"
    saved.write_text(printed)
    assert load_config(FakeConfig, saved) == FakeConfig(name="x", optim=OptimSection(lr=2e-5))


def test_usage_errors(capsys):
    assert main(["trian"], commands=TABLE) == 2
    assert "unknown command 'trian'; did you mean 'train'?" in capsys.readouterr().err
    assert main(["train", "--lr=1"], commands=TABLE) == 2
    assert "unknown flag '--lr=1'" in capsys.readouterr().err
    assert main(["train", "--config"], commands=TABLE) == 2
    assert "--config needs a file" in capsys.readouterr().err
    assert main(["broken"], commands=TABLE) == 2
    assert "cannot import fake_cmds_missing" in capsys.readouterr().err


def test_version(capsys):
    assert main(["--version"], commands=TABLE) == 0
    assert capsys.readouterr().out.startswith("aha 0.")


def test_top_level_help_does_not_import_torch():
    code = "import sys; from aha.cli import main; rc = main(['--help']); assert 'torch' not in sys.modules; sys.exit(rc)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "grpo" in result.stdout and "sft" in result.stdout and "demo" in result.stdout


def test_python_dash_m_aha():
    result = subprocess.run([sys.executable, "-m", "aha", "nope"], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.startswith("error: unknown command 'nope'")


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_registered_commands_are_documented_and_runnable(name, capsys):
    """A registered command whose module is missing fails here: `aha` must not list what does not run."""
    config_spec, run_spec, description = COMMANDS[name]
    for spec in (config_spec, run_spec):
        module_name, attribute = spec.split(":")
        assert hasattr(importlib.import_module(module_name), attribute), f"{spec} is registered, not written"
    # --help imports both halves and describes every option (fails if an option lacks help text).
    assert main([name, "--help"]) == 0
    assert description in capsys.readouterr().out
