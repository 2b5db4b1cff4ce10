"""Kill anywhere: a run SIGKILLed at 20 seeded random moments, resumed after each, ends bit for bit where
the uninterrupted run ends (final weights, every metric that is not a clock reading, every sample); the
same for the `aha rlhf` pipeline, with planned kills at the seams of its stages; SIGTERM and Ctrl-C save
a checkpoint of the step in progress and exit with 128 + the signal.

Each attempt is a real process killed with SIGKILL. The processes are forked from a forkserver that has
imported aha, torch and transformers once, so 20 attempts cost 20 model loads, not 20 interpreter
start-ups. A kill comes a seeded random delay of up to 1.5 steps (the uninterrupted run's measured time
per step) after the attempt has logged a step past the last checkpoint, so kills land in sampling, the update,
evaluation and checkpoint writing in proportion to the time each takes.
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from aha.models.tiny import create_tiny_model
from aha.train.checkpoint import latest_checkpoint

KILLS = 20
# each attempt advances a step or two, more where the machine speeds up after the uninterrupted run
# was timed: enough steps that all 20 kills land mid-run
GRPO_STEPS = SFT_STEPS = RM_STEPS = 50
# the pipeline's stages: fewer steps each, as its 20 kills are shared by three stages and their seams
PIPELINE_STEPS = {"sft": 12, "rm": 14, "grpo": 10}
HELPERS = Path(__file__).parent / "helpers"
CLOCK_KEYS = ("time/", "throughput/", "memory/")  # wall-clock and memory readings differ run to run


def run_command(argv: list[str], log: str, die_at: str | None = None) -> None:
    """The forked child: the `aha` command with its output in `log`; exits with the command's code.
    `die_at` (see `die_writing`) makes it SIGKILL itself at a point too short-lived to be hit from
    outside."""
    sys.stdout = sys.stderr = open(log, "a")  # noqa: SIM115  # closed by the process's exit
    if die_at is not None:
        die_writing(*die_at.split(":"))
    from aha.cli import main

    code = main(argv)
    sys.stderr.flush()
    os._exit(code)


def die_writing(how: str, name: str) -> None:
    """Make this process SIGKILL itself when it writes the file `name`: `torn`, after writing the first
    half of its text (`Path.write_text`); `rename`, when it is about to move a finished temp file onto
    `name` (`Path.replace`)."""
    write_text, replace = Path.write_text, Path.replace

    def torn_write_text(self, data, *args, **kwargs):
        if self.name == name:
            write_text(self, data[: len(data) // 2], *args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)
        return write_text(self, data, *args, **kwargs)

    def dying_replace(self, target):
        if Path(target).name == name:
            os.kill(os.getpid(), signal.SIGKILL)
        return replace(self, target)

    if how == "torn":
        Path.write_text = torn_write_text
    elif how == "rename":
        Path.replace = dying_replace
    else:
        raise ValueError(how)


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
            "aha.train.rlhf",
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


def rlhf_argv(files, tiny_dir: Path, out: Path) -> list[str]:
    """SFT -> reward model (from the SFT model) -> GRPO on the reward model, each checkpointing every step."""
    common = ["run.progress=false", "run.save_every=1", "optim.lr=3e-3"]
    return [
        "rlhf",
        f"pipeline.output_dir={out}",
        f"sft.model.path={tiny_dir}",
        f"sft.data.train_file={files.sft}",
        f"sft.train.steps={PIPELINE_STEPS['sft']}",
        "sft.train.batch_size=16",
        "sft.optim.warmup_steps=2",
        *(f"sft.{o}" for o in common),
        f"rm.data.train_file={files.preferences}",
        "rm.data.held_out_fraction=0.25",
        f"rm.train.steps={PIPELINE_STEPS['rm']}",
        "rm.train.batch_size=16",
        "rm.eval.every=5",
        "rm.model.lean_activations=false",
        *(f"rm.{o}" for o in common),
        f"grpo.data.train_file={files.rl_train}",
        f"grpo.data.eval_file={files.heldout}",
        "grpo.rewards.functions=[reward_model]",
        "grpo.rollout.group_size=4",
        "grpo.rollout.max_new_tokens=6",
        "grpo.train.prompts_per_step=4",
        f"grpo.train.steps={PIPELINE_STEPS['grpo']}",
        "grpo.eval.every=5",
        "grpo.eval.num_prompts=8",
        "grpo.track.sample_every=1",
        "grpo.track.plot=false",
        *(f"grpo.{o}" for o in common),
    ]


def start(context, argv: list[str], log: Path, die_at: str | None = None):
    process = context.Process(target=run_command, args=(argv, str(log), die_at))
    process.start()
    return process


def run_to_end(context, argv: list[str], log: Path) -> float:
    started = time.monotonic()
    process = start(context, argv, log)
    process.join(timeout=600)
    assert process.exitcode == 0, log.read_text()[-3000:]
    return time.monotonic() - started


def last_logged_step(run_dir: Path, since: float = 0.0) -> int | None:
    """The step of the last row in run_dir/metrics.jsonl; None without the file or if it was last
    written before `since` (a time.time()); -1 for an empty file or a torn line being written now."""
    metrics = run_dir / "metrics.jsonl"
    try:
        if metrics.stat().st_mtime < since:
            return None
        lines = metrics.read_text().splitlines()
        return json.loads(lines[-1])["step"] if lines else -1
    except FileNotFoundError:
        return None
    except json.JSONDecodeError:
        return -1


@dataclass(frozen=True)
class Stages:
    """Where a run stands, as (stage, step) compared in order: the run directories under the output
    directory (one, ".", for a single command; sft, rm, grpo for a pipeline)."""

    names: tuple[str, ...] = (".",)

    def logged(self, out: Path, since: float = 0.0) -> tuple[int, int]:
        """The last stage with a row logged (since `since`), and that row's step."""
        for i in reversed(range(len(self.names))):
            step = last_logged_step(out / self.names[i], since)
            if step is not None and step >= 0:
                return i, step
        return -1, -1

    def checkpointed(self, out: Path) -> tuple[int, int]:
        for i in reversed(range(len(self.names))):
            ckpt = latest_checkpoint(out / self.names[i]) if (out / self.names[i]).exists() else None
            if ckpt is not None:
                return i, int(ckpt.name.split("-")[1])
        return -1, -1


@dataclass(frozen=True)
class When:
    """A planned kill: SIGKILL as soon as `ready(out)` turns true (polled every 5 ms), for a window too
    short for a random delay to land in often (a stage exported but not yet recorded, a stage starting).
    Once the run has logged a step of a stage after `stage`, the moment is past: a random kill instead."""

    ready: Callable[[Path], bool]
    stage: int


@dataclass(frozen=True)
class Die:
    """A planned kill the attempt makes itself (see `die_writing`), e.g. "rename:pipeline.json"."""

    at: str


def kill_and_resume(
    context,
    argv: list[str],
    out: Path,
    step_s: Sequence[float],
    seed: int,
    *,
    resume: Sequence[str] = ("--resume",),
    stages: Stages = Stages(),
    plan: Sequence[When | Die | None] = (None,) * KILLS,
    where: Callable[[Path], str] | None = None,
) -> list[str]:
    """One attempt per `plan` entry, each resuming the last (`resume`: the arguments that make the
    command continue). None is a random kill: once the attempt has logged a step of its own past the
    last checkpoint (a row the last attempt logged after its checkpoint does not count: a stage that
    logs a step-0 evaluation before its first checkpoint would be killed in its start-up every time,
    never getting further), it is SIGKILLed after a seeded random delay of up to 1.5 steps
    (`step_s[stage]`: landing in the checkpoint write, the next step's sampling, update or evaluation,
    or what follows a stage's last step). Then one attempt runs to the end. Returns, for each kill
    made, `where(out)` at that moment (or the `Die` point)."""
    rng = random.Random(seed)
    log = out.parent / f"{out.name}.log"
    where = where or (lambda run: "{}: step {}".format(*stages.logged(run)))
    kills: list[str] = []
    for attempt, planned in enumerate(plan):
        done = stages.checkpointed(out)
        was_ready = isinstance(planned, When) and planned.ready(out)
        started_at = time.time()
        die_at = planned.at if isinstance(planned, Die) else None
        process = start(context, [*argv, *(resume if attempt else [])], log, die_at)
        deadline = time.monotonic() + 300
        if isinstance(planned, Die):
            process.join(timeout=300)
        while process.is_alive():
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            at = stages.logged(out, since=started_at)  # rows of this attempt's own
            if isinstance(planned, When) and at[0] <= planned.stage:
                if planned.ready(out) and not was_ready:
                    kills.append(where(out))
                    process.kill()
                    break
                was_ready = was_ready and planned.ready(out)
            elif at > done:
                process.join(timeout=rng.uniform(0.0, 1.5 * step_s[max(at[0], 0)]))
                if process.is_alive():
                    kills.append(where(out))
                    process.kill()
                break
            time.sleep(0.005)
        process.join()
        if process.exitcode == -signal.SIGKILL and isinstance(planned, Die):
            kills.append(planned.at)
        elif process.exitcode != -signal.SIGKILL:  # the run ended before this kill: too few steps
            assert process.exitcode == 0, log.read_text()[-3000:]
            break
    run_to_end(context, [*argv, *resume], log)
    return kills


def deterministic(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.startswith(CLOCK_KEYS)} for row in rows]


def assert_same_run(straight: Path, resumed: Path, final: str) -> None:
    """Every weights file under `final` (the policy, and a critic's or reference's folder) bit for bit
    equal, every JSON file there equal (a reward model's score statistics and held-out metrics), and
    every metrics, samples and calibration row but clock readings."""
    files = sorted(p.relative_to(straight / final) for p in (straight / final).rglob("*.safetensors"))
    assert files and files == sorted(
        p.relative_to(resumed / final) for p in (resumed / final).rglob("*.safetensors")
    )
    for name in files:
        a, b = load_file(straight / final / name), load_file(resumed / final / name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
    for path in (straight / final).rglob("*.json"):
        name = path.relative_to(straight / final)
        assert json.loads(path.read_text()) == json.loads((resumed / final / name).read_text()), name
    for name in (
        "metrics.jsonl",
        "samples.jsonl",
        "calibration.jsonl",
    ):  # redone steps' rows replace, never repeat, the lost ones
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
        len(kill_and_resume(forkserver, grpo_argv(tiny_dir, killed), killed, [duration / GRPO_STEPS], seed=0))
        == KILLS
    )
    assert_same_run(straight, killed, f"checkpoints/step-{GRPO_STEPS:08d}")


def sft_data(tmp_path: Path) -> Path:
    """A folder with train.jsonl and heldout.jsonl: copy a 3-letter word."""
    data = tmp_path / "data"
    data.mkdir()
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijkl") for _ in range(3)) for _ in range(160)]
    for name, part in (("train.jsonl", words[:128]), ("heldout.jsonl", words[128:])):
        (data / name).write_text(
            "".join(json.dumps({"prompt": f"{w}=", "completion": w}) + "\n" for w in part)
        )
    return data


def rm_pairs(tmp_path: Path) -> Path:
    from test_train_reward_model import synthetic_pairs

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in synthetic_pairs(400, seed=1)))
    return pairs


def test_sft_killed_20_times_ends_where_the_uninterrupted_run_ends(forkserver, tiny_dir, tmp_path):
    data = sft_data(tmp_path)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    duration = run_to_end(forkserver, sft_argv(data, tiny_dir, straight), tmp_path / "straight.log")
    assert (
        len(
            kill_and_resume(
                forkserver, sft_argv(data, tiny_dir, killed), killed, [duration / SFT_STEPS], seed=1
            )
        )
        == KILLS
    )
    assert_same_run(straight, killed, "final")


def test_ppo_killed_20_times_ends_where_the_uninterrupted_run_ends(forkserver, tiny_dir, tmp_path):
    """With its critic: the critic's weights, AdamW state and schedule come back from each checkpoint."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    duration = run_to_end(forkserver, ppo_argv(tiny_dir, straight), tmp_path / "straight.log")
    assert (
        len(kill_and_resume(forkserver, ppo_argv(tiny_dir, killed), killed, [duration / GRPO_STEPS], seed=2))
        == KILLS
    )
    final = f"checkpoints/step-{GRPO_STEPS:08d}"
    assert (straight / final / "critic").is_dir()
    assert_same_run(straight, killed, final)


def test_reward_model_killed_20_times_ends_where_the_uninterrupted_run_ends(forkserver, tiny_dir, tmp_path):
    pairs = rm_pairs(tmp_path)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    duration = run_to_end(forkserver, rm_argv(pairs, tiny_dir, straight), tmp_path / "straight.log")
    assert (
        len(
            kill_and_resume(
                forkserver, rm_argv(pairs, tiny_dir, killed), killed, [duration / RM_STEPS], seed=3
            )
        )
        == KILLS
    )
    assert_same_run(straight, killed, "final")


def recorded(pipeline: Path) -> set[str]:
    """The stages pipeline.json records as finished."""
    try:
        return set(json.loads((pipeline / "pipeline.json").read_text()))
    except FileNotFoundError:
        return set()


def exported_not_recorded(stage: str) -> Callable[[Path], bool]:
    return lambda pipeline: (pipeline / stage / "final").is_dir() and stage not in recorded(pipeline)


def stage_started(stage: str) -> Callable[[Path], bool]:
    return lambda pipeline: (pipeline / stage / "config.yaml").exists()


def pipeline_where(pipeline: Path, names: Sequence[str] = tuple(PIPELINE_STEPS)) -> str:
    """Where a pipeline stands, read from its directory: the last stage begun and how far it got."""
    for name in reversed(names):
        run = pipeline / name
        if not run.exists():
            continue
        if name in recorded(pipeline):
            return f"{name}: recorded"
        if (run / "final").is_dir():
            return f"{name}: exported, not recorded"
        step = last_logged_step(run)
        return (
            f"{name}: started, nothing logged" if step is None or step < 0 else f"{name}: step {step} logged"
        )
    return "nothing started"


def test_rlhf_pipeline_killed_20_times_ends_where_the_uninterrupted_run_ends(forkserver, tiny_dir, tmp_path):
    """SFT -> reward model -> GRPO under `aha rlhf`, whose re-run is its resume (it has no --resume:
    finished stages are skipped, the interrupted one continues). Random kills inside each stage, and
    planned ones at the seams: a stage exported but not yet recorded in pipeline.json, the next stage
    starting, pipeline.json's write itself (a torn temp file; the temp file written but not renamed).
    Every stage's outputs end bit for bit those of the uninterrupted pipeline."""
    from aha.demo.hacking_task import write_task_files

    files = write_task_files(tmp_path / "data", seed=0, demos=64, pairs=64, heldout=8)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run_to_end(forkserver, rlhf_argv(files, tiny_dir, straight), tmp_path / "straight.log")
    # a random kill waits up to 1.5 times the stage's wall time per step (with its saving, evaluation and
    # start-up), as the uninterrupted run measured it
    step_s = [
        json.loads((straight / name / "resources.jsonl").read_text())["wall_s"] / steps
        for name, steps in PIPELINE_STEPS.items()
    ]
    stages = Stages(tuple(PIPELINE_STEPS))
    stage = {name: i for i, name in enumerate(PIPELINE_STEPS)}
    plan = [
        *[None] * 4,  # inside sft
        When(exported_not_recorded("sft"), stage["sft"]),
        Die("torn:pipeline.json.tmp"),  # sft's record: half the temp file written
        Die("rename:pipeline.json"),  # sft's record: the temp file written, not yet renamed
        When(stage_started("rm"), stage["rm"]),
        *[None] * 5,  # inside rm
        When(exported_not_recorded("rm"), stage["rm"]),
        Die("rename:pipeline.json"),  # rm's record
        When(stage_started("grpo"), stage["grpo"]),
        *[None] * 3,  # inside grpo
        Die("torn:pipeline.json.tmp"),  # grpo's record, after its last step: the final run redoes only that
    ]
    kills = kill_and_resume(
        forkserver,
        rlhf_argv(files, tiny_dir, killed),
        killed,
        step_s,
        seed=4,
        resume=(),
        stages=stages,
        plan=plan,
        where=pipeline_where,
    )
    assert len(kills) == KILLS, kills
    for name in PIPELINE_STEPS:  # each stage killed in its training loop (after step 0: in step 1)
        assert any(k.startswith(f"{name}: step ") for k in kills), kills
    for seam in ("sft: exported, not recorded", "rm: exported, not recorded"):
        assert seam in kills, kills
    for name in ("rm", "grpo"):  # killed while starting, before its first checkpoint
        assert {f"{name}: started, nothing logged", f"{name}: step 0 logged"} & set(kills), kills
    assert kills.count("torn:pipeline.json.tmp") == 2 and kills.count("rename:pipeline.json") == 2, kills
    assert recorded(killed) == set(PIPELINE_STEPS)
    assert_same_run(straight / "sft", killed / "sft", "final")
    assert_same_run(straight / "rm", killed / "rm", "final")
    assert_same_run(straight / "grpo", killed / "grpo", f"checkpoints/step-{PIPELINE_STEPS['grpo']:08d}")


PPO_PIPELINE_STEPS = {"sft": 6, "rm": 6, "ppo": 6}


def test_rlhf_pipeline_with_ppo_killed_4_times_ends_where_the_uninterrupted_run_ends(
    forkserver, tiny_dir, tmp_path
):
    """The same pipeline with pipeline.rl=ppo, shorter and killed 4 times: inside SFT, at the seam where
    the reward model is exported but not recorded, as PPO starts (its critic is loaded from the reward
    model's final/), and inside PPO. Every stage's outputs, PPO's critic included, end bit for bit those
    of the uninterrupted pipeline."""
    from aha.demo.hacking_task import write_task_files

    files = write_task_files(tmp_path / "data", seed=0, demos=64, pairs=64, heldout=8)
    steps = [f"{name}.train.steps={n}" for name, n in PPO_PIPELINE_STEPS.items()]

    def argv(out: Path) -> list[str]:
        rl = [a.replace("grpo.", "ppo.", 1) for a in rlhf_argv(files, tiny_dir, out) if a.startswith("grpo.")]
        rest = [a for a in rlhf_argv(files, tiny_dir, out) if not a.startswith("grpo.")]
        return [*rest, *rl, "pipeline.rl=ppo", "ppo.critic.lr=3e-3", "ppo.critic.warmup_steps=2", *steps]

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run_to_end(forkserver, argv(straight), tmp_path / "straight.log")
    step_s = [
        json.loads((straight / name / "resources.jsonl").read_text())["wall_s"] / n
        for name, n in PPO_PIPELINE_STEPS.items()
    ]
    names = tuple(PPO_PIPELINE_STEPS)
    plan = [None, When(exported_not_recorded("rm"), 1), When(stage_started("ppo"), 2), None]
    kills = kill_and_resume(
        forkserver,
        argv(killed),
        killed,
        step_s,
        seed=0,
        resume=(),
        stages=Stages(names),
        plan=plan,
        where=lambda pipeline: pipeline_where(pipeline, names),
    )
    assert len(kills) == len(plan), kills
    assert kills[0].startswith("sft: step ") and kills[1] == "rm: exported, not recorded", kills
    assert kills[2] in ("ppo: started, nothing logged", "ppo: step 0 logged"), kills
    assert kills[3].startswith("ppo: step "), kills
    assert recorded(killed) == set(names)
    assert_same_run(straight / "sft", killed / "sft", "final")
    assert_same_run(straight / "rm", killed / "rm", "final")
    assert_same_run(straight / "ppo", killed / "ppo", f"checkpoints/step-{PPO_PIPELINE_STEPS['ppo']:08d}")


def stage_argv(stage: str, tiny_dir: Path, tmp_path: Path, out: Path) -> list[str]:
    if stage == "sft":
        return sft_argv(sft_data(tmp_path), tiny_dir, out)
    if stage == "rm":
        return rm_argv(rm_pairs(tmp_path), tiny_dir, out)
    return {"grpo": grpo_argv, "ppo": ppo_argv}[stage](tiny_dir, out)


@pytest.mark.parametrize(
    "stage, signum",
    [
        ("grpo", signal.SIGTERM),
        ("grpo", signal.SIGINT),
        ("sft", signal.SIGTERM),
        ("ppo", signal.SIGTERM),
        ("rm", signal.SIGTERM),
    ],
)
def test_sigterm_and_ctrl_c_save_the_step_in_progress(forkserver, tiny_dir, tmp_path, stage, signum):
    out, log = tmp_path / "run", tmp_path / "run.log"
    # no checkpoint unless asked
    argv = [*stage_argv(stage, tiny_dir, tmp_path, out), "train.steps=200", "run.save_every=0"]
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
