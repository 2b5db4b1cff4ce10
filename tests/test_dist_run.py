"""`torchrun --nproc_per_node 2 -m aha grpo|sft|rm` on the CPU (gloo): real launches of the CLI.

- GRPO (FSDP2): a run SIGKILLed (the whole torchrun process group) after its second step and
  resumed ends bit for bit where the uninterrupted 2-process run ends: final weights, every metric that
  is not a clock reading, every sample; rank 0 alone wrote the run's files, and samples.jsonl holds
  every rank's completions.
- SFT: the 2-process run's first step logs the one-process run's loss and gradient norm (the batch is
  split across ranks; the gradient averaged over them is the whole batch's).
- RM (FSDP2): the 2-process run logs the one-process run's loss, pair accuracy and gradient norm at
  each step and the same held-out accuracy; rank 0 alone writes final/ with reward_model.json.
- PPO (FSDP2, the critic wrapped too): with top-k 1 sampling (the completions are the argmax, so the
  same text however the prompts are split and seeded) the 2-process run's first step logs the
  one-process run's critic loss, gradient norms, advantage and value statistics and explained
  variance, and its second step the same adaptive KL coefficient; resumed from its step-1
  checkpoint (the critic and its AdamW state gathered by rank 0, re-sharded on load), it logs
  step 2 again bit for bit.
- `aha rlhf` (fsdp2 in every stage), with GRPO and with PPO: SFT's and the reward model's rows equal one
  process's, so do the RL stage's first numbers; killed inside a stage and run again, the pipeline ends
  bit for bit where the uninterrupted 2-process pipeline ends.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import aha
from aha.config import load_config
from aha.models.tiny import create_tiny_model
from aha.train.ppo import PPORunConfig, run_ppo
from aha.train.reward_model import RMRunConfig, run_rm
from aha.train.sft import SFTRunConfig, run_sft

HELPERS = Path(__file__).parent / "helpers"
CLOCK_KEYS = ("time/", "throughput/", "memory/")  # wall-clock and memory readings differ run to run
STEPS, GROUP, PROMPTS = 4, 4, 4


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return create_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="module")
def launch_env(tmp_path_factory) -> dict[str, str]:
    """The environment of a torchrun launch: this checkout's aha and the toy reward module (copied
    alone: tests/helpers holds a `kernels` that would shadow the package transformers imports)."""
    rewards_dir = tmp_path_factory.mktemp("rewards")
    shutil.copy(HELPERS / "toy_rewards.py", rewards_dir / "toy_rewards.py")
    src = Path(aha.__file__).resolve().parents[1]
    return {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{rewards_dir}", "OMP_NUM_THREADS": "1"}


def torchrun(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """`torchrun --standalone --nproc_per_node 2 -m aha ...` in its own process group (to kill it whole)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    return subprocess.Popen(
        [*command, "-m", "aha", *argv],
        env=env,
        stdout=log.open("a"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def kill_launch(process: subprocess.Popen) -> None:
    """SIGKILL torchrun and its ranks, as a crash of the job would. torchrun starts each rank in a
    session of its own, so a signal to torchrun's process group alone leaves the ranks running."""
    ranks = children(process.pid)
    os.killpg(process.pid, signal.SIGKILL)
    for pid in ranks:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 60
    while any(alive(pid) for pid in ranks):
        assert time.monotonic() < deadline, f"ranks {ranks} outlived SIGKILL"
        time.sleep(0.05)


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rpartition(")")[2].split()  # after the command name
            if int(fields[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    """Whether `pid` still runs (a zombie, dead but not yet reaped by its new parent, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def run_to_end(argv: list[str], env: dict[str, str], log: Path) -> None:
    process = torchrun(argv, env, log)
    assert process.wait(timeout=300) == 0, log.read_text()[-3000:]


def one_and_two_processes(
    command: str, cls: type, run: Callable, overrides: list[str], env: dict[str, str], tmp_path: Path
) -> tuple[list[dict], Path]:
    """`aha COMMAND overrides` run in this process (its metrics history) and launched on two processes
    with FSDP2 (its run directory)."""
    two = tmp_path / "two"
    run_to_end(
        [command, *overrides, f"run.output_dir={two}", "dist.strategy=fsdp2"],
        env,
        tmp_path / f"{command}.log",
    )
    one = run(load_config(cls, None, [*overrides, f"run.output_dir={tmp_path / 'one'}"])).history
    return one, two


def grpo_argv(tiny_dir: Path, out: Path, strategy: str) -> list[str]:
    return [
        "grpo",
        f"model.path={tiny_dir}",
        f"run.output_dir={out}",
        "run.progress=false",
        "run.save_every=1",
        "rewards.functions=[toy_rewards:digit_fraction]",
        "optim.lr=3e-3",
        "rollout.max_new_tokens=6",
        f"rollout.group_size={GROUP}",
        f"train.prompts_per_step={PROMPTS}",
        f"train.steps={STEPS}",
        "algo.mu=2",  # old-policy log-probs (a no-grad pass on gathered weights) and two optimizer steps
        "data.arithmetic_train_size=64",
        "data.arithmetic_eval_size=8",
        "eval.num_prompts=8",
        "eval.every=2",
        "track.sample_every=1",
        "track.plot=false",
        f"dist.strategy={strategy}",
    ]


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def last_logged_step(out: Path) -> int:
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
        return json.loads(lines[-1])["step"] if lines else -1
    except (FileNotFoundError, json.JSONDecodeError):  # not yet written, or a line being written
        return -1


def launch_and_kill_after(argv: list[str], env: dict[str, str], log: Path, run_dir: Path, step: int) -> None:
    """Launch `aha argv` on two processes and SIGKILL torchrun and its ranks once `run_dir` has logged
    `step` (mid-way through the next one)."""
    process = torchrun(argv, env, log)
    deadline = time.monotonic() + 300
    while last_logged_step(run_dir) < step:
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)
    kill_launch(process)


def assert_same_weights(one: Path, two: Path, what: str) -> None:
    """The model.safetensors in directories `one` and `two` hold the same tensors, bit for bit."""
    a, b = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), (what, key)


# fsdp2 only, to stay within the CI budget (each strategy costs 3 launches, ~50 s here): it is the
# strategy whose checkpoints are gathered from shards and re-sharded on resume; ddp's checkpoints are the
# one-process ones. ["ddp", "fsdp2"] passes as well (docs/scaling.md).
@pytest.mark.parametrize("strategy", ["fsdp2"])
def test_two_process_grpo_killed_and_resumed_ends_where_the_uninterrupted_run_ends(
    tiny_dir, launch_env, tmp_path, strategy
):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_to_end(grpo_argv(tiny_dir, straight, strategy), launch_env, tmp_path / "straight.log")

    log = tmp_path / "resumed.log"
    launch_and_kill_after(grpo_argv(tiny_dir, resumed, strategy), launch_env, log, resumed, 2)  # mid-step 3
    assert last_logged_step(resumed) < STEPS  # it was killed before the end
    run_to_end([*grpo_argv(tiny_dir, resumed, strategy), "--resume"], launch_env, log)

    final = f"checkpoints/step-{STEPS:08d}"
    assert_same_weights(straight / final, resumed / final, final)
    for name in ("metrics.jsonl", "samples.jsonl"):
        kept = [
            [{k: v for k, v in r.items() if not k.startswith(CLOCK_KEYS)} for r in rows(run / name)]
            for run in (straight, resumed)
        ]
        assert kept[0] == kept[1], name
    metrics = rows(straight / "metrics.jsonl")
    assert [r["step"] for r in metrics] == list(range(STEPS + 1))  # one row per step: rank 0 wrote alone
    assert any(r.get("reward/std", 0) > 0 for r in metrics)  # rewards vary: the updates are not trivial
    samples = rows(straight / "samples.jsonl")
    assert len(samples) == STEPS * PROMPTS * GROUP  # every rank's completions, gathered
    assert len(rows(straight / "resources.jsonl")) == 1  # one writer per launch


def test_two_process_sft_first_step_equals_one_process(tiny_dir, launch_env, tmp_path):
    data = tmp_path / "sft.jsonl"
    data.write_text(
        "".join(
            json.dumps({"prompt": f"{a}+{a}=", "completion": str(2 * a) * (1 + a % 3)}) + "\n"
            for a in range(32)
        )
    )
    overrides = [
        f"model.path={tiny_dir}",
        f"data.train_file={data}",
        "run.progress=false",
        "train.batch_size=8",
        "train.steps=2",
        "optim.lr=3e-3",
        "optim.warmup_steps=0",
    ]
    one, two = one_and_two_processes("sft", SFTRunConfig, run_sft, overrides, launch_env, tmp_path)
    two_rows = rows(two / "metrics.jsonl")
    for key in ("loss", "grad_norm", "tokens/completion"):
        assert two_rows[0][key] == pytest.approx(one[0][key], rel=1e-5), key
    assert (two / "final" / "model.safetensors").is_file()


def test_two_process_rm_steps_equal_one_process(tiny_dir, launch_env, tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text(
        "".join(
            json.dumps({"prompt": f"q{i}:", "chosen": " y" * (1 + i % 4), "rejected": " n" * (1 + i % 3)})
            + "\n"
            for i in range(40)
        )
    )
    overrides = [
        f"model.path={tiny_dir}",
        f"data.train_file={data}",
        "run.progress=false",
        "train.batch_size=8",
        "train.steps=2",
        "train.center_coef=0.01",
        "optim.lr=3e-3",
        "eval.at_start=false",
    ]
    one, two = one_and_two_processes("rm", RMRunConfig, run_rm, overrides, launch_env, tmp_path)
    two_rows = rows(two / "metrics.jsonl")
    assert len(two_rows) == len(one) == 2
    for a, b in zip(one, two_rows, strict=True):
        for key in ("loss", "accuracy", "grad_norm", "eval/accuracy"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), (a["step"], key)
    assert "eval/accuracy" in two_rows[-1]
    assert (two / "final" / "model.safetensors").is_file() and (two / "final" / "reward_model.json").is_file()
    assert len(rows(two / "calibration.jsonl")) == 1  # one evaluation, written once (rank 0)


def test_two_process_ppo_steps_equal_one_process_and_resume(
    tiny_varied_model_dir, launch_env, tmp_path, monkeypatch
):
    """On the varied tiny model (conftest): its argmax completions differ from prompt to prompt, so do
    the rewards."""
    monkeypatch.syspath_prepend(launch_env["PYTHONPATH"].split(os.pathsep)[1])  # toy_rewards, for one process
    overrides = [
        f"model.path={tiny_varied_model_dir}",
        "run.progress=false",
        "run.save_every=1",
        "rewards.functions=[toy_rewards:digit_fraction]",
        "optim.lr=3e-3",
        "critic.lr=3e-3",
        "rollout.max_new_tokens=6",
        "rollout.group_size=2",
        "rollout.top_k=1",  # argmax sampling: the one-process completions, whatever each rank's seed
        f"train.prompts_per_step={PROMPTS}",
        "train.steps=2",
        "algo.kl_target=0.01",  # adaptive: step 2's coefficient comes from step 1's KL of every rank
        "algo.kl_horizon=100",
        "data.arithmetic_train_size=64",
        "data.arithmetic_eval_size=4",
        "eval.num_prompts=4",
        "track.plot=false",
    ]
    two = tmp_path / "two"
    argv = ["ppo", *overrides, f"run.output_dir={two}", "dist.strategy=fsdp2"]
    run_to_end(argv, launch_env, tmp_path / "ppo.log")
    one = run_ppo(load_config(PPORunConfig, None, [*overrides, f"run.output_dir={tmp_path / 'one'}"])).history
    two_rows = rows(two / "metrics.jsonl")
    assert [r["step"] for r in two_rows] == [r["step"] for r in one] == [0, 1, 2]
    # Step 1 is computed from the one-process weights and batch: the ranks only sum the same float32
    # terms in another order. Not its `loss` (at ratio 1 the mean of whitened advantages: 0 up to
    # rounding; its gradient is not, grad_norm) nor its `kl` (the policy against its own copy: rounding
    # noise). Later steps start from AdamW steps, whose first moves a weight by lr * g / (|g| + eps):
    # for gradients within rounding of 0 that is anything in [-lr, lr], so they are not compared
    # (beyond step 2's KL coefficient, set from step 1's KL); the resume below checks them bit for bit.
    compared = ("grad_norm", "entropy", "critic/value_loss", "critic/grad_norm", "critic/explained_variance")
    compared += (
        "advantages/std",
        "advantages/min",
        "returns/mean",
        "values/mean",
        "values/max",
        "reward/mean",
    )
    for key in compared:
        assert two_rows[1][key] == pytest.approx(one[1][key], rel=1e-5, abs=1e-7), key
    assert two_rows[2]["kl_coef"] == pytest.approx(one[2]["kl_coef"], rel=1e-6) != one[1]["kl_coef"]
    assert two_rows[0]["eval/reward_mean"] == one[0]["eval/reward_mean"]
    assert one[1]["critic/value_loss"] > 0 and one[1]["reward/std"] > 0  # the comparison is not vacuous

    shutil.rmtree(two / "checkpoints" / "step-00000002")  # resume from step 1: the critic re-sharded
    straight = [{k: v for k, v in r.items() if not k.startswith(CLOCK_KEYS)} for r in two_rows]
    run_to_end([*argv, "--resume"], launch_env, tmp_path / "ppo.log")
    resumed = [
        {k: v for k, v in r.items() if not k.startswith(CLOCK_KEYS)} for r in rows(two / "metrics.jsonl")
    ]
    assert resumed == straight


# `aha rlhf`: SFT -> reward model (from the SFT model) -> GRPO, every stage under fsdp2. The reward model
# runs 12 steps so that a kill after its step 2 lands inside the stage (about 0.3 s a step here).
RLHF_STEPS = {"sft": 3, "rm": 12, "grpo": 2}
RLHF_PROMPTS, RLHF_GROUP = 2, 2


def rlhf_argv(files, tiny_dir: Path, out: Path) -> list[str]:
    common = ["run.progress=false", "run.save_every=1", "dist.strategy=fsdp2"]
    return [
        "rlhf",
        f"pipeline.output_dir={out}",
        f"sft.model.path={tiny_dir}",
        f"sft.data.train_file={files.sft}",
        f"sft.train.steps={RLHF_STEPS['sft']}",
        "sft.train.batch_size=8",
        "sft.optim.warmup_steps=0",
        *(f"sft.{o}" for o in common),
        f"rm.data.train_file={files.preferences}",
        f"rm.train.steps={RLHF_STEPS['rm']}",
        "rm.train.batch_size=8",
        "rm.eval.every=4",
        *(f"rm.{o}" for o in common),
        f"grpo.data.train_file={files.rl_train}",
        f"grpo.data.eval_file={files.heldout}",
        "grpo.rewards.functions=[reward_model]",
        "grpo.rewards.monitors=[aha.demo.hacking_task:gold]",
        f"grpo.rollout.group_size={RLHF_GROUP}",
        "grpo.rollout.max_new_tokens=6",
        f"grpo.train.prompts_per_step={RLHF_PROMPTS}",
        f"grpo.train.steps={RLHF_STEPS['grpo']}",
        "grpo.eval.every=1",
        "grpo.eval.num_prompts=4",
        "grpo.track.plot=false",
        "grpo.track.sample_every=1",
        *(f"grpo.{o}" for o in common),
    ]


@pytest.fixture(scope="module")
def rlhf_files(tmp_path_factory):
    from aha.demo.hacking_task import write_task_files

    return write_task_files(tmp_path_factory.mktemp("rlhf") / "data", seed=0, demos=64, pairs=64, heldout=8)


@pytest.fixture(scope="module")
def rlhf_two(tiny_dir, rlhf_files, launch_env, tmp_path_factory) -> Path:
    """The uninterrupted 2-process pipeline, compared with one process and with a killed run."""
    out = tmp_path_factory.mktemp("rlhf-two") / "pipe"
    run_to_end(rlhf_argv(rlhf_files, tiny_dir, out), launch_env, out.parent / "run.log")
    return out


def without_clock(rows_: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith(CLOCK_KEYS)} for r in rows_]


def assert_rows_close(one: list[dict], two: list[dict], what: str) -> None:
    """The same rows and keys, and every number within the existing dist tests' rel=1e-5 (float32
    rounding of a batch split across ranks: measured up to 5e-7 in the GRPO pipeline, 3.5e-6 in the PPO
    pipeline's step-0 evaluation, on the varied model)."""
    one, two = without_clock(one), without_clock(two)
    assert [sorted(r) for r in one] == [sorted(r) for r in two], what
    for a, b in zip(one, two, strict=True):
        for key, value in a.items():
            assert b[key] == pytest.approx(value, rel=1e-5, abs=1e-7), (what, a["step"], key)


def test_two_process_rlhf_equals_one_process_stage_by_stage(tiny_dir, rlhf_files, rlhf_two, tmp_path):
    """`torchrun -m aha rlhf`: SFT and the reward model log one process's numbers at every step (their
    batches are split across ranks, the gradients averaged), the reward model is saved with the same
    normalisation, and GRPO's step-0 evaluation (the SFT policy, greedy, scored by the trained reward
    model) equals one process's. GRPO's later steps differ by design: each rank samples with its own
    seed (docs/scaling.md); the update on a given batch equals one process's in test_dist_update.py."""
    from aha.train.rlhf import STATE_FILE, RLHFConfig, run_rlhf

    one = tmp_path / "one"
    run_rlhf(load_config(RLHFConfig, None, rlhf_argv(rlhf_files, tiny_dir, one)[1:]))
    for stage in ("sft", "rm"):
        assert_rows_close(
            rows(one / stage / "metrics.jsonl"), rows(rlhf_two / stage / "metrics.jsonl"), stage
        )
    calibration = [rows(run / "rm" / "calibration.jsonl") for run in (one, rlhf_two)]
    assert [r["step"] for r in calibration[1]] == [0, 4, 8, 12]  # one row per evaluation: one writer
    for a, b in zip(*calibration, strict=True):
        for bin_a, bin_b in zip(a["bins"], b["bins"], strict=True):
            assert bin_b == pytest.approx(bin_a, rel=1e-5), a["step"]
    norms = [
        json.loads((run / "rm/final/reward_model.json").read_text())["normalization"]
        for run in (one, rlhf_two)
    ]
    assert norms[1]["std"] > 0 and norms[1] == pytest.approx(norms[0], rel=1e-5)
    grpo = [rows(run / "grpo" / "metrics.jsonl") for run in (one, rlhf_two)]
    assert "eval/reward_mean" in grpo[1][0]
    assert_rows_close(grpo[0][:1], grpo[1][:1], "grpo step 0")
    assert [r["step"] for r in grpo[1]] == list(range(RLHF_STEPS["grpo"] + 1))
    assert all(math.isfinite(r["loss"]) for r in grpo[1][1:])
    samples = rows(rlhf_two / "grpo" / "samples.jsonl")
    assert len(samples) == RLHF_STEPS["grpo"] * RLHF_PROMPTS * RLHF_GROUP  # every rank's, gathered once
    state = json.loads((rlhf_two / STATE_FILE).read_text())
    assert {name: Path(s["output"]) for name, s in state.items()} == {
        "sft": rlhf_two / "sft" / "final",
        "rm": rlhf_two / "rm" / "final",
        "grpo": rlhf_two / "grpo",
    }


def test_two_process_rlhf_killed_in_a_stage_and_rerun_ends_where_the_uninterrupted_run_ends(
    tiny_dir, rlhf_files, rlhf_two, launch_env, tmp_path
):
    """SIGKILL of the torchrun group inside the reward model (after its step 2); the same command run
    again skips SFT and continues the reward model on both ranks, then runs GRPO: every stage's outputs
    are bit for bit the uninterrupted 2-process pipeline's."""
    killed, log = tmp_path / "pipe", tmp_path / "run.log"
    argv = rlhf_argv(rlhf_files, tiny_dir, killed)
    launch_and_kill_after(argv, launch_env, log, killed / "rm", 2)
    assert set(json.loads((killed / "pipeline.json").read_text())) == {"sft"}  # killed inside rm
    assert last_logged_step(killed / "rm") < RLHF_STEPS["rm"]
    before = len(log.read_text())
    run_to_end(argv, launch_env, log)
    rerun = log.read_text()[before:]
    assert "aha rlhf: sft finished earlier, skipped" in rerun and "aha rlhf: continuing rm" in rerun

    for final in ("sft/final", "rm/final", f"grpo/checkpoints/step-{RLHF_STEPS['grpo']:08d}"):
        assert_same_weights(rlhf_two / final, killed / final, final)
    meta = [json.loads((run / "rm/final/reward_model.json").read_text()) for run in (rlhf_two, killed)]
    assert meta[0] == meta[1]
    for name in (
        "sft/metrics.jsonl",
        "rm/metrics.jsonl",
        "rm/calibration.jsonl",
        "grpo/metrics.jsonl",
        "grpo/samples.jsonl",
    ):
        assert without_clock(rows(rlhf_two / name)) == without_clock(rows(killed / name)), name
    records = [json.loads((run / "pipeline.json").read_text()) for run in (rlhf_two, killed)]
    assert {k: Path(v["output"]).relative_to(rlhf_two) for k, v in records[0].items()} == {
        k: Path(v["output"]).relative_to(killed) for k, v in records[1].items()
    }


# `aha rlhf pipeline.rl=ppo`: the same SFT and reward-model stages (the reward model 4 steps), then PPO
# with its critic started from the reward model's final/ (pipeline.rm_from_sft). Top-k 1 sampling, as in
# the `aha ppo` case above: the completions are the argmax, the same however the prompts are split and
# seeded, so PPO's first update can be compared with one process's.
RLHF_PPO_STEPS = {"sft": 3, "rm": 4, "ppo": 6}


def rlhf_ppo_argv(files, model_dir: Path, out: Path) -> list[str]:
    """rlhf_argv with its grpo section as the ppo section (later overrides win)."""
    argv = rlhf_argv(files, model_dir, out)
    ppo = [a.replace("grpo.", "ppo.", 1) if a.startswith("grpo.") else a for a in argv]
    return [
        *ppo,
        "pipeline.rl=ppo",
        f"rm.train.steps={RLHF_PPO_STEPS['rm']}",
        f"ppo.train.steps={RLHF_PPO_STEPS['ppo']}",
        "ppo.rollout.top_k=1",
        "ppo.optim.lr=3e-3",
        "ppo.critic.lr=3e-3",
        "ppo.algo.kl_target=0.01",  # adaptive: step 2's coefficient comes from step 1's KL of every rank
        "ppo.algo.kl_horizon=100",
    ]


@pytest.fixture(scope="module")
def rlhf_ppo_two(tiny_varied_model_dir, rlhf_files, launch_env, tmp_path_factory) -> Path:
    """The uninterrupted 2-process pipeline with PPO, compared with one process and with a killed run."""
    out = tmp_path_factory.mktemp("rlhf-ppo-two") / "pipe"
    run_to_end(rlhf_ppo_argv(rlhf_files, tiny_varied_model_dir, out), launch_env, out.parent / "run.log")
    return out


def test_two_process_rlhf_with_ppo_equals_one_process_stage_by_stage(
    tiny_varied_model_dir, rlhf_files, rlhf_ppo_two, tmp_path
):
    """`torchrun -m aha rlhf pipeline.rl=ppo`: SFT's and the reward model's rows and the stored
    normalisation equal one process's as with GRPO, and so do PPO's step-0 evaluation and its step-1
    update (the same statistics as the `aha ppo` case: step 1 starts from the SFT weights and the critic
    from the reward model's final/, written by rank 0 and read by both ranks), and step 2's adaptive KL
    coefficient. Later PPO steps are not compared, for the reason given in the `aha ppo` case."""
    from aha.train.rlhf import STATE_FILE, RLHFConfig, run_rlhf

    one = tmp_path / "one"
    run_rlhf(load_config(RLHFConfig, None, rlhf_ppo_argv(rlhf_files, tiny_varied_model_dir, one)[1:]))
    for stage in ("sft", "rm"):
        assert_rows_close(
            rows(one / stage / "metrics.jsonl"), rows(rlhf_ppo_two / stage / "metrics.jsonl"), stage
        )
    norms = [
        json.loads((run / "rm/final/reward_model.json").read_text())["normalization"]
        for run in (one, rlhf_ppo_two)
    ]
    assert norms[1]["std"] > 0 and norms[1] == pytest.approx(norms[0], rel=1e-5)
    ppo = [rows(run / "ppo" / "metrics.jsonl") for run in (one, rlhf_ppo_two)]
    assert (
        [r["step"] for r in ppo[1]] == [r["step"] for r in ppo[0]] == list(range(RLHF_PPO_STEPS["ppo"] + 1))
    )
    assert_rows_close(ppo[0][:1], ppo[1][:1], "ppo step 0")
    compared = ("grad_norm", "entropy", "critic/value_loss", "critic/grad_norm", "critic/explained_variance")
    compared += ("advantages/std", "advantages/min", "returns/mean", "values/mean", "values/max")
    compared += ("reward/mean", "reward/std", "monitor/gold")
    for key in compared:
        assert ppo[1][1][key] == pytest.approx(ppo[0][1][key], rel=1e-5, abs=1e-7), key
    assert ppo[1][2]["kl_coef"] == pytest.approx(ppo[0][2]["kl_coef"], rel=1e-6) != ppo[0][1]["kl_coef"]
    assert ppo[0][1]["critic/value_loss"] > 0 and ppo[0][1]["reward/std"] > 0  # not vacuous
    assert all(math.isfinite(r["loss"]) for r in ppo[1][1:])
    samples = rows(rlhf_ppo_two / "ppo" / "samples.jsonl")
    assert len(samples) == RLHF_PPO_STEPS["ppo"] * RLHF_PROMPTS * RLHF_GROUP  # every rank's, gathered once
    state = json.loads((rlhf_ppo_two / STATE_FILE).read_text())
    assert {name: Path(s["output"]) for name, s in state.items()} == {
        "sft": rlhf_ppo_two / "sft" / "final",
        "rm": rlhf_ppo_two / "rm" / "final",
        "ppo": rlhf_ppo_two / "ppo",
    }


def test_two_process_rlhf_with_ppo_killed_in_ppo_and_rerun_ends_where_the_uninterrupted_run_ends(
    tiny_varied_model_dir, rlhf_files, rlhf_ppo_two, launch_env, tmp_path
):
    """SIGKILL of the torchrun group inside PPO (after its step 2); the same command run again skips
    SFT and the reward model and continues PPO on both ranks from its checkpoint (policy, critic and
    their AdamW states re-sharded): every stage's outputs are bit for bit the uninterrupted run's."""
    killed, log = tmp_path / "pipe", tmp_path / "run.log"
    argv = rlhf_ppo_argv(rlhf_files, tiny_varied_model_dir, killed)
    launch_and_kill_after(argv, launch_env, log, killed / "ppo", 2)
    assert set(json.loads((killed / "pipeline.json").read_text())) == {"sft", "rm"}  # killed inside ppo
    assert last_logged_step(killed / "ppo") < RLHF_PPO_STEPS["ppo"]
    before = len(log.read_text())
    run_to_end(argv, launch_env, log)
    rerun = log.read_text()[before:]
    assert "aha rlhf: rm finished earlier, skipped" in rerun and "aha rlhf: continuing ppo" in rerun

    last = f"ppo/checkpoints/step-{RLHF_PPO_STEPS['ppo']:08d}"
    for final in ("sft/final", "rm/final", last, f"{last}/critic"):
        assert_same_weights(rlhf_ppo_two / final, killed / final, final)
    for name in ("sft/metrics.jsonl", "rm/metrics.jsonl", "ppo/metrics.jsonl", "ppo/samples.jsonl"):
        assert without_clock(rows(rlhf_ppo_two / name)) == without_clock(rows(killed / name)), name
    assert set(json.loads((killed / "pipeline.json").read_text())) == {"sft", "rm", "ppo"}
