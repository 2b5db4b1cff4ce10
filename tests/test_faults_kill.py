"""Kill anywhere: a run SIGKILLed at 20 seeded random moments, resumed after each, ends bit for bit where
the uninterrupted run ends (final weights, every metric that is not a clock reading); SIGTERM and Ctrl-C
save a checkpoint of the step in progress and exit with 128 + the signal.

Each attempt is a real process killed with SIGKILL. The processes are forked from a forkserver that has
imported aha, torch and transformers once, so 20 attempts cost 20 model loads, not 20 interpreter
start-ups. Kill moments are drawn uniformly over one uninterrupted run's measured duration, so they land
in sampling, the update, evaluation and checkpoint writing in proportion to the time each takes.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from aha.models.tiny import create_tiny_model
from aha.train.checkpoint import latest_checkpoint

KILLS = 20
# each attempt advances a step or two: enough steps that all 20 kills land mid-run
GRPO_STEPS = SFT_STEPS = RM_STEPS = 40
HELPERS = Path(__file__).parent / "helpers"
CLOCK_KEYS = ("time/", "throughput/", "memory/")  # wall-clock and memory readings differ run to run


def run_command(argv: list[str], log: str) -> None:
    """The forked child: the `aha` command with its output in `log`; exits with the command's code."""
    sys.stdout = sys.stderr = open(log, "a")  # noqa: SIM115  # closed by the process's exit
    from aha.cli import main

    code = main(argv)
    sys.stderr.flush()
    os._exit(code)


@pytest.fixture(scope="module")
def forkserver(tmp_path_factory):
    """A multiprocessing context whose processes start with aha already imported. Only the toy reward
    module's folder is added to the path (tests/helpers itself holds a `kernels` that would shadow the
    package transformers imports)."""
    rewards_dir = tmp_path_factory.mktemp("rewards")
    shutil.copy(HELPERS / "toy_rewards.py", rewards_dir / "toy_rewards.py")
    sys.path.insert(0, str(rewards_dir))
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(
        [
            "aha.cli",
            "aha.train.grpo",
            "aha.train.ppo",
            "aha.train.sft",
            "aha.train.reward_model",
            "toy_rewards",
        ]
    )
    warm_up = context.Process(target=time.sleep, args=(0,))  # starts the server: not part of any timing
    warm_up.start()
    warm_up.join()
    yield context
    sys.path.remove(str(rewards_dir))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return create_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


def grpo_argv(tiny_dir: Path, out: Path) -> list[str]:
    return [
        "grpo",
        f"model.path={tiny_dir}",
        f"run.output_dir={out}",
        "run.progress=false",
        "run.save_every=1",
        "rewards.functions=[toy_rewards:digit_fraction]",
        "optim.lr=3e-3",
        "rollout.max_new_tokens=6",
        "rollout.group_size=4",
        "train.prompts_per_step=4",
        f"train.steps={GRPO_STEPS}",
        "algo.mu=2",  # old-policy log-probs and two optimizer steps per batch: more state to get right
        "data.arithmetic_train_size=64",
        "data.arithmetic_eval_size=8",
        "eval.num_prompts=8",
        "eval.every=5",
        "track.sample_every=1",
        "track.plot=false",
    ]


def ppo_argv(tiny_dir: Path, out: Path) -> list[str]:
    """GRPO's run with PPO's critic (its own AdamW and scheduler, checkpointed under critic/)."""
    argv = [a for a in grpo_argv(tiny_dir, out) if not a.startswith("algo.mu")]
    return ["ppo", *argv[1:], "critic.lr=3e-3", "critic.warmup_steps=2"]


def rm_argv(pairs: Path, tiny_dir: Path, out: Path) -> list[str]:
    return [
        "rm",
        f"model.path={tiny_dir}",
        "model.lean_activations=false",
        f"data.train_file={pairs}",
        "data.held_out_fraction=0.25",
        f"run.output_dir={out}",
        "run.progress=false",
        "run.save_every=1",
        f"train.steps={RM_STEPS}",
        "train.batch_size=16",
        "eval.every=5",
        "optim.lr=3e-3",
    ]


def sft_argv(data: Path, tiny_dir: Path, out: Path) -> list[str]:
    return [
        "sft",
        f"model.path={tiny_dir}",
        f"data.train_file={data / 'train.jsonl'}",
        f"data.eval_file={data / 'heldout.jsonl'}",
        f"run.output_dir={out}",
        "run.progress=false",
        "run.save_every=1",
        "train.batch_size=16",
        f"train.steps={SFT_STEPS}",
        "eval.every=3",
        "optim.lr=3e-3",
        "optim.warmup_steps=2",
    ]


def start(context, argv: list[str], log: Path):
    process = context.Process(target=run_command, args=(argv, str(log)))
    process.start()
    return process


def run_to_end(context, argv: list[str], log: Path) -> float:
    started = time.monotonic()
    process = start(context, argv, log)
    process.join(timeout=600)
    assert process.exitcode == 0, log.read_text()[-3000:]
    return time.monotonic() - started


def last_logged_step(out: Path) -> int:
    metrics = out / "metrics.jsonl"
    lines = metrics.read_text().splitlines() if metrics.exists() else []
    try:
        return json.loads(lines[-1])["step"] if lines else -1
    except json.JSONDecodeError:  # a torn line being written right now
        return -1


def kill_and_resume(context, argv: list[str], out: Path, step_s: float, seed: int) -> int:
    """KILLS attempts, each resuming the last: once an attempt has logged a step of its own, it is
    SIGKILLed after a seeded random delay of up to 1.5 steps (landing in the checkpoint write, the next
    step's sampling, update or evaluation). Then one attempt runs to the end. Returns the kills made."""
    rng = random.Random(seed)
    log = out.parent / f"{out.name}.log"
    kills = 0
    for attempt in range(KILLS):
        ckpt = latest_checkpoint(out) if out.exists() else None
        done = int(ckpt.name.split("-")[1]) if ckpt else -1
        process = start(context, [*argv, *(["--resume"] if attempt else [])], log)
        deadline = time.monotonic() + 300
        while process.is_alive() and last_logged_step(out) <= done:
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.01)
        process.join(timeout=rng.uniform(0.0, 1.5 * step_s))
        if process.exitcode is not None:  # the run ended before this kill: too few steps for KILLS
            assert process.exitcode == 0, log.read_text()[-3000:]
            break
        process.kill()
        process.join()
        kills += 1
    run_to_end(context, [*argv, "--resume"], log)
    return kills


def deterministic(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.startswith(CLOCK_KEYS)} for row in rows]


def assert_same_run(straight: Path, resumed: Path, final: str) -> None:
    """Every weights file under `final` (the policy, and a critic's or reference's folder) bit for bit
    equal, and every metrics and samples row but clock readings."""
    files = sorted(p.relative_to(straight / final) for p in (straight / final).rglob("*.safetensors"))
    assert files and files == sorted(
        p.relative_to(resumed / final) for p in (resumed / final).rglob("*.safetensors")
    )
    for name in files:
        a, b = load_file(straight / final / name), load_file(resumed / final / name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
    for name in ("metrics.jsonl", "samples.jsonl"):  # redone steps' rows replace, never repeat, the lost ones
        if (straight / name).exists():
            rows = [
                deterministic([json.loads(line) for line in (run / name).read_text().splitlines()])
                for run in (straight, resumed)
            ]
            assert rows[0] == rows[1], name


def test_grpo_killed_20_times_ends_where_the_uninterrupted_run_ends(forkserver, tiny_dir, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    duration = run_to_end(forkserver, grpo_argv(tiny_dir, straight), tmp_path / "straight.log")
    assert (
        kill_and_resume(forkserver, grpo_argv(tiny_dir, killed), killed, duration / GRPO_STEPS, seed=0)
        == KILLS
    )
    assert_same_run(straight, killed, f"checkpoints/step-{GRPO_STEPS:08d}")


def test_sft_killed_20_times_ends_where_the_uninterrupted_run_ends(forkserver, tiny_dir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijkl") for _ in range(3)) for _ in range(160)]
    for name, part in (("train.jsonl", words[:128]), ("heldout.jsonl", words[128:])):
        (data / name).write_text(
            "".join(json.dumps({"prompt": f"{w}=", "completion": w}) + "\n" for w in part)
        )
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    duration = run_to_end(forkserver, sft_argv(data, tiny_dir, straight), tmp_path / "straight.log")
    assert (
        kill_and_resume(forkserver, sft_argv(data, tiny_dir, killed), killed, duration / SFT_STEPS, seed=1)
        == KILLS
    )
    assert_same_run(straight, killed, "final")


def test_ppo_killed_20_times_ends_where_the_uninterrupted_run_ends(forkserver, tiny_dir, tmp_path):
    """With its critic: the critic's weights, AdamW state and schedule come back from each checkpoint."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    duration = run_to_end(forkserver, ppo_argv(tiny_dir, straight), tmp_path / "straight.log")
    assert (
        kill_and_resume(forkserver, ppo_argv(tiny_dir, killed), killed, duration / GRPO_STEPS, seed=2)
        == KILLS
    )
    final = f"checkpoints/step-{GRPO_STEPS:08d}"
    assert (straight / final / "critic").is_dir()
    assert_same_run(straight, killed, final)


def test_reward_model_killed_20_times_ends_where_the_uninterrupted_run_ends(forkserver, tiny_dir, tmp_path):
    from test_train_reward_model import synthetic_pairs

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in synthetic_pairs(400, seed=1)))
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    duration = run_to_end(forkserver, rm_argv(pairs, tiny_dir, straight), tmp_path / "straight.log")
    assert (
        kill_and_resume(forkserver, rm_argv(pairs, tiny_dir, killed), killed, duration / RM_STEPS, seed=3)
        == KILLS
    )
    assert_same_run(straight, killed, "final")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_ctrl_c_save_the_step_in_progress(forkserver, tiny_dir, tmp_path, signum):
    out, log = tmp_path / "run", tmp_path / "run.log"
    argv = [*grpo_argv(tiny_dir, out), "train.steps=200", "run.save_every=0"]  # no checkpoint unless asked
    process = start(forkserver, argv, log)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):  # steps 0, 1, 2 logged
        assert time.monotonic() < deadline and process.is_alive(), log.read_text()[-3000:]
        time.sleep(0.05)
    os.kill(process.pid, signum)
    process.join(timeout=300)
    assert process.exitcode == 128 + signum, log.read_text()[-3000:]
    last_step = json.loads(metrics.read_text().splitlines()[-1])["step"]
    assert latest_checkpoint(out).name == f"step-{last_step:08d}"
    assert f"stopped after step {last_step}" in log.read_text()
