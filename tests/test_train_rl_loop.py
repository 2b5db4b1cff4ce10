"""The shared RL loop: named models in checkpoints, and a run that stops early (`stop_reason`) saves a
checkpoint and resumes to exactly the weights of the run that never stopped, a reward model's running
normalisation included."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.rl_configs import tiny_rl_overrides
from safetensors.torch import load_file

from aha.config import load_config
from aha.models.reward_scorer import TextFormat, write_meta
from aha.models.scalar_head import load_scalar_model
from aha.models.tiny import create_tiny_model
from aha.train.checkpoint import load_checkpoint, save_checkpoint
from aha.train.grpo import GRPO, PLOT_KEYS, GRPORunConfig, run_grpo
from aha.train.optim import build_optimizer, build_scheduler
from aha.train.rl_loop import run_rl

HELPERS = Path(__file__).parent / "helpers"
CLOCK_KEYS = ("time/", "throughput/", "memory/")  # wall-clock and memory readings differ run to run


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return create_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(autouse=True)
def _toy_rewards_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(HELPERS))


def _config(tiny_dir: Path, out: Path, *overrides: str) -> GRPORunConfig:
    base = [
        *tiny_rl_overrides(tiny_dir, out, group_size=4, prompts_per_step=4, train_size=64, eval_size=8),
        "eval.every=0",
        "track.sample_every=0",
        "track.plot=false",
        "train.steps=4",
        # the reference moves every step: a resume that did not restore it would train differently
        "algo.beta=0.1",
        "algo.ref_sync_every=1",
    ]
    return load_config(GRPORunConfig, overrides=[*base, *overrides])


def _stop_after(step: int):
    """An `on_session` hook that asks the run to stop once `step` has been logged."""

    def hook(session):
        log = session.log

        def log_then_stop(s: int, metrics: dict) -> None:
            log(s, metrics)
            if s == step:
                session.stop_reason = f"test: stop after step {step}"

        session.log = log_then_stop

    return hook


def test_stop_reason_saves_and_resume_matches_the_uninterrupted_run(tiny_dir, tmp_path):
    run_grpo(_config(tiny_dir, tmp_path / "straight"))
    cfg = _config(tiny_dir, tmp_path / "stopped", "run.save_every=0")
    stopped = run_rl(cfg, GRPO, plot_keys=PLOT_KEYS, on_session=_stop_after(2))
    assert stopped.stop_reason == "test: stop after step 2" and stopped.final_eval is None
    assert [row["step"] for row in stopped.history] == [0, 1, 2]
    ckpt = tmp_path / "stopped/checkpoints/step-00000002"  # save_every=0: written only because it stopped
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["stop_reason"] == "test: stop after step 2"
    assert (ckpt / "reference" / "model.safetensors").exists()
    resumed = run_grpo(cfg, resume=True)
    assert resumed.stop_reason is None and resumed.final_eval is not None
    a = load_file(tmp_path / "straight/checkpoints/step-00000004/model.safetensors")
    b = load_file(tmp_path / "stopped/checkpoints/step-00000004/model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory) -> Path:
    """A reward model on the tiny model's tokenizer, its score head drawn large enough to spread scores."""
    path = create_tiny_model(tmp_path_factory.mktemp("rm") / "model", seed=1)
    model = load_scalar_model(str(path))
    torch.manual_seed(0)
    torch.nn.init.normal_(model.score.weight, std=1.0)
    model.save_pretrained(path)
    write_meta(path, TextFormat(), mean=0.0, std=1.0)
    return path


def test_a_reward_models_running_normalisation_resumes_where_it_stopped(tiny_dir, rm_dir, tmp_path):
    """normalize=running, as a reward (next to the digit fraction, so its scale moves the update) and as
    a monitor: the statistics of the scores seen before the stop are in the checkpoint, and the resumed
    run's rewards, monitor values and weights are the uninterrupted run's, bit for bit."""
    running = f"{{path: {rm_dir}, device: cpu, normalize: running}}"
    rm_overrides = (
        "rewards.functions=[reward_model, toy_rewards:digit_fraction]",
        f"rewards.options={{reward_model: {running}}}",
        "rewards.monitors=[reward_model]",
        f"rewards.monitor_options={{reward_model: {running}}}",
        "track.hacking.patience=0",  # monitors logged only (the watch needs evaluations every few steps)
    )
    straight = run_grpo(_config(tiny_dir, tmp_path / "straight", *rm_overrides))
    cfg = _config(tiny_dir, tmp_path / "stopped", "run.save_every=0", *rm_overrides)
    run_rl(cfg, GRPO, plot_keys=PLOT_KEYS, on_session=_stop_after(2))
    extra = torch.load(tmp_path / "stopped/checkpoints/step-00000002/extra.pt", weights_only=True)
    # steps 1 and 2 (16 completions each) counted; step 0's evaluation of 8 prompts scored but not counted
    assert extra["reward_state"]["reward_model"]["running"]["count"] == 2 * 16
    assert extra["monitor_reward_state"]["reward_model"]["running"]["count"] == 2 * 16
    resumed = run_grpo(cfg, resume=True)
    rows = [
        [{k: v for k, v in r.items() if not k.startswith(CLOCK_KEYS)} for r in run.history]
        for run in (straight, resumed)
    ]
    assert [r["step"] for r in rows[1]] == [0, 1, 2, 3, 4]
    assert rows[0] == rows[1]
    a = load_file(tmp_path / "straight/checkpoints/step-00000004/model.safetensors")
    b = load_file(tmp_path / "stopped/checkpoints/step-00000004/model.safetensors")
    for name in a:
        assert torch.equal(a[name], b[name]), name


def _trained(tiny_dir: Path, lr: float):
    from aha.models.loading import load_model

    model = load_model(str(tiny_dir))
    optimizer = build_optimizer(model, lr=lr, weight_decay=0.0)
    scheduler = build_scheduler(optimizer, warmup_steps=1, total_steps=10)
    ids = torch.tensor([[1, 20, 21, 22, 2]])
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    scheduler.step()
    return model, optimizer, scheduler


def test_named_models_round_trip_with_their_optimizers(tiny_dir, tmp_path):
    policy, critic = _trained(tiny_dir, 1e-2), _trained(tiny_dir, 1e-1)
    save_checkpoint(tmp_path, 1, *policy[:1], None, *policy[1:], models={"critic": critic})
    into_policy, into_critic = _trained(tiny_dir, 1e-3), _trained(tiny_dir, 1e-3)
    ckpt = tmp_path / "checkpoints/step-00000001"
    load_checkpoint(ckpt, *into_policy, models={"critic": into_critic})
    for saved, loaded in ((policy, into_policy), (critic, into_critic)):
        for (name, a), b in zip(saved[0].state_dict().items(), loaded[0].state_dict().values(), strict=True):
            assert torch.equal(a, b), name
        exp_avg = [s["exp_avg"] for s in saved[1].state_dict()["state"].values()]
        got = [s["exp_avg"] for s in loaded[1].state_dict()["state"].values()]
        assert all(torch.equal(x, y) for x, y in zip(exp_avg, got, strict=True))
        assert loaded[2].state_dict() == saved[2].state_dict()
    assert not torch.equal(policy[0].model.embed_tokens.weight, critic[0].model.embed_tokens.weight)
