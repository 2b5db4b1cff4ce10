"""aha.dist.env: torchrun's variables, per-rank seeds, whole-group sharding, and the one-line refusal of
stages that do not run on several processes, and a shutdown that leaves no gloo thread behind."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import aha
from aha.config import ConfigError
from aha.dist.env import DistEnv, env_from, rank_seed, require_single_process, shard
from aha.dist.reduce import from_main, gather_lists, rank_weight, reduce_metrics, sum_across_ranks


def test_env_from_torchrun_variables():
    assert env_from({}) is None  # plain python: no torchrun
    env = env_from({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"})
    assert env == DistEnv(rank=3, world_size=8, local_rank=1)
    assert not env.is_main and env.distributed
    assert env_from({"RANK": "0", "WORLD_SIZE": "1"}).is_main  # torchrun --nproc_per_node 1
    with pytest.raises(ConfigError, match="RANK=2 is not in"):
        env_from({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(ConfigError, match="must be integers"):
        env_from({"RANK": "x", "WORLD_SIZE": "2"})


def test_rank_seed():
    assert rank_seed(1234, 0) == 1234  # one process samples exactly as before
    seeds = [rank_seed(1234, r) for r in range(64)]
    assert len(set(seeds)) == 64  # no two ranks share a stream
    assert seeds == [rank_seed(1234, r) for r in range(64)]  # stable: a resume draws the same
    assert rank_seed(1235, 1) != seeds[1]  # and it follows the step seed
    assert all(0 <= s < 2**63 for s in seeds)  # a valid torch.Generator seed


def test_shard_gives_contiguous_equal_shares():
    groups = list(range(12))
    shares = [shard(groups, DistEnv(r, 3), "train.prompts_per_step") for r in range(3)]
    assert shares == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]  # gathered in rank order: the batch
    assert shard(groups, DistEnv(), "x") == groups
    with pytest.raises(ConfigError, match=r"train.prompts_per_step=12 must be divisible .* \(5\)"):
        shard(groups, DistEnv(0, 5), "train.prompts_per_step")


def test_single_process_reductions_are_identities():
    metrics = {"loss": 0.5, "ratio_max": 2.0}
    assert reduce_metrics(metrics) == metrics
    assert sum_across_ranks(1.5) == 1.5 and rank_weight(7.0) == 1.0
    assert gather_lists([1, 2]) == [1, 2]


def test_unsupported_stages_refuse_several_processes(monkeypatch):
    require_single_process("aha demo")  # one process: fine
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(
        ConfigError, match=r"aha demo does not support several processes yet \(torchrun WORLD_SIZE=2\)"
    ):
        require_single_process("aha demo")


def test_cli_refuses_the_demo_under_torchrun(monkeypatch, capsys, tmp_path):
    """`aha demo` (SFT then RL on the built-in model, in one process) is not among the stages that run
    under torchrun: refused in one line before anything is written."""
    from aha.cli import main

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    code = main(["demo", f"output_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2 and "aha demo does not support several processes" in err
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_single_process_from_main_is_the_call():
    assert from_main(lambda: {"state": {"sft": 1}}) == {"state": {"sft": 1}}


def rlhf_overrides(tiny_model_dir, out) -> list[str]:
    return [
        f"pipeline.output_dir={out}",
        f"sft.model.path={tiny_model_dir}",
        "sft.data.train_file=unused.jsonl",  # refused before any data is read
        "rm.data.train_file=unused.jsonl",
        "grpo.rewards.functions=[reward_model]",
        "ppo.rewards.functions=[reward_model]",
    ]


def test_ppo_refuses_a_critic_on_the_policys_backbone_under_torchrun(
    monkeypatch, capsys, tiny_model_dir, tmp_path
):
    from aha.cli import main

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    run = tmp_path / "run"
    code = main(
        ["ppo", f"model.path={tiny_model_dir}", f"run.output_dir={run}", "critic.shared_backbone=true"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "critic.shared_backbone is not supported under torchrun" in err
    assert not run.exists()  # refused before anything was written


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["pipeline.rl=ppo", "ppo.critic.shared_backbone=true"],
            "ppo.critic.shared_backbone is not supported under torchrun",
        ),
        (
            ["grpo.rewards.options={reward_model: {normalize: running}}"],
            "grpo.rewards.options: reward_model: normalize=running gives each torchrun process its own scale",
        ),
        (
            ["pipeline.rl=ppo", "ppo.rewards.options={reward_model: {normalize: running}}"],
            "ppo.rewards.options: reward_model: normalize=running",
        ),
    ],
)
def test_cli_refuses_rlhf_rl_settings_under_torchrun_before_the_first_stage(
    monkeypatch, capsys, tiny_model_dir, tmp_path, overrides, message
):
    """What the RL stage refuses under torchrun is refused as the pipeline starts, naming the section's
    key, not after SFT and the reward model have run (rl=ppo itself runs, tests/test_dist_run.py)."""
    from aha.cli import main

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    out = tmp_path / "pipe"
    assert main(["rlhf", *rlhf_overrides(tiny_model_dir, out), *overrides]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert not out.exists()  # refused before anything was written


def test_rlhf_under_torchrun_refuses_stages_on_different_kinds_of_device(
    monkeypatch, tiny_model_dir, tmp_path
):
    """The pipeline joins one process group (gloo or NCCL) for every stage."""
    from aha.config import load_config
    from aha.train.rlhf import RLHFConfig, run_rlhf

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    overrides = [
        *rlhf_overrides(tiny_model_dir, tmp_path / "pipe"),
        "sft.model.device=cpu",
        "grpo.model.device=cuda",
    ]
    with pytest.raises(
        ConfigError,
        match=r"one kind of device \(sft.model.device=cpu, rm.model.device=.*, grpo.model.device=cuda\)",
    ):
        run_rlhf(load_config(RLHFConfig, None, overrides))


# One rank of a gloo group with an FSDP2 model, as `aha sft dist.strategy=fsdp2` ends: the names of the
# process's gloo threads before and after `shutdown`.
_SHUTDOWN_SCRIPT = textwrap.dedent(
    """
    import os, socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch
    from torch.distributed.fsdp import fully_shard
    from aha.dist import env

    def gloo_threads():
        names = (open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task"))
        return sorted(name for name in names if "gloo" in name)

    env.init("cpu")
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1))
    fully_shard(model[0])
    fully_shard(model)
    model(torch.ones(2, 4)).sum().backward()
    del model
    print("before", gloo_threads())
    env.shutdown()
    print("after", gloo_threads())
    """
)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="thread names are read from Linux /proc")
def test_shutdown_ends_the_gloo_threads_an_fsdp2_model_kept_alive():
    """destroy_process_group alone left gloo's threads running (FSDP2's device meshes, cached by DTensor,
    hold the group) into interpreter teardown, where a rank sometimes aborted with "terminate called
    without an active exception"; `shutdown` frees the group while Python is whole."""
    src = str(Path(aha.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", _SHUTDOWN_SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith("before ['gloo_tcp_loop', 'pt_gloo_runloop'"), lines  # the test sees them
    assert lines[1] == "after []", lines
