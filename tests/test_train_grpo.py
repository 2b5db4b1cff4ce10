"""GRPO end to end on the built-in tiny model: it learns, writes its run directory, and resumes exactly."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers.rl_configs import tiny_rl_overrides
from safetensors.torch import load_file

from aha.config import ConfigError, load_config
from aha.models.tiny import create_tiny_model
from aha.train.grpo import GRPORunConfig, run_grpo
from aha.train.session import RunDirectoryError

HELPERS = Path(__file__).parent / "helpers"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return create_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(autouse=True)
def _toy_rewards_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(HELPERS))


def _config(tiny_dir: Path, out: Path, *overrides: str) -> GRPORunConfig:
    base = [
        *tiny_rl_overrides(tiny_dir, out, group_size=8, prompts_per_step=8, train_size=200, eval_size=16),
        "eval.every=0",
        "track.sample_every=5",
    ]
    return load_config(GRPORunConfig, overrides=[*base, *overrides])


def test_grpo_learns_a_learnable_reward(tiny_dir, tmp_path):
    """Mean reward (fraction of digit characters) rises well above the random model's ~0.1."""
    cfg = _config(tiny_dir, tmp_path / "run", "train.steps=20", "algo.beta=0.01")
    result = run_grpo(cfg)
    rewards = [row["reward/mean"] for row in result.history if "reward/mean" in row]
    assert len(rewards) == 20
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert first < 0.3, f"the random model already scores {first:.2f}; the test would prove nothing"
    assert last > first + 0.3, f"mean reward went from {first:.2f} to {last:.2f}"
    assert result.final_eval.reward_mean > 0.5


def test_run_directory_contents(tiny_dir, tmp_path):
    out = tmp_path / "run"
    cfg = _config(tiny_dir, out, "train.steps=5", "algo.mu=2", "algo.minibatches=2")
    run_grpo(cfg)
    assert (out / "config.yaml").exists() and (out / "plots.png").exists()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4, 5]
    for key in (
        "reward/mean",
        "reward/std",
        "kl",
        "clip_frac",
        "entropy",
        "completion/length_mean",
        "completion/truncated_frac",
        "throughput/tokens_per_s",
        "time/step_s",
        "lr",
    ):
        assert key in rows[-1], key
    assert "eval/accuracy" in rows[0] and "eval/accuracy" in rows[-1]
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert {s["step"] for s in samples} == {5} and len(samples) == 64
    ckpt = out / "checkpoints" / "step-00000005"
    assert (ckpt / "model.safetensors").exists() and (ckpt / "optimizer.pt").exists()
    # The saved config reloads to the config that ran (overrides and defaults included).
    assert load_config(GRPORunConfig, out / "config.yaml") == cfg


def test_resume_continues_exactly(tiny_dir, tmp_path):
    """4 steps in one go == 2 steps, stop, resume to 4: same weights, bit for bit."""
    straight = _config(tiny_dir, tmp_path / "straight", "train.steps=4")
    run_grpo(straight)
    split = replace(_config(tiny_dir, tmp_path / "split", "train.steps=4"))
    run_grpo(replace(split, train=replace(split.train, steps=2)))
    with pytest.raises(RunDirectoryError):
        run_grpo(split)  # the directory holds a run: silently overwriting it would lose work
    run_grpo(split, resume=True)
    a = load_file(tmp_path / "straight/checkpoints/step-00000004/model.safetensors")
    b = load_file(tmp_path / "split/checkpoints/step-00000004/model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    steps = [json.loads(line)["step"] for line in (tmp_path / "split/metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3, 4]


def test_resume_after_a_torn_metrics_line(tiny_dir, tmp_path):
    """A crash mid-write leaves half a line at the end of metrics.jsonl: resume drops it and the
    finished file is clean, one whole record per step."""
    cfg = _config(tiny_dir, tmp_path / "run", "train.steps=3", "track.plot=true")
    run_grpo(replace(cfg, train=replace(cfg.train, steps=2)))
    path = tmp_path / "run" / "metrics.jsonl"
    with path.open("a") as f:
        f.write('{"step": 3, "reward/mean": 0.2')
    run_grpo(cfg, resume=True)
    lines = path.read_text().splitlines()
    assert path.read_text().endswith("\n")
    assert [json.loads(line)["step"] for line in lines] == [0, 1, 2, 3]
    assert (tmp_path / "run" / "plots.png").stat().st_size > 0


def test_an_engine_that_does_not_exist_is_refused_at_start_up(tiny_dir, tmp_path):
    """Before any model loads, with the reason; no vLLM engine is written yet."""
    with pytest.raises(ConfigError, match="rollout: engine='vllm': aha has no vLLM engine yet"):
        _config(tiny_dir, tmp_path / "x", "rollout.engine=vllm")
    with pytest.raises(ConfigError, match="not one of: native, hf"):
        _config(tiny_dir, tmp_path / "x", "rollout.engine=fast")


def test_batch_must_split_into_whole_groups(tiny_dir, tmp_path):
    with pytest.raises(ConfigError, match="minibatches"):
        _config(tiny_dir, tmp_path / "x", "train.prompts_per_step=3", "algo.minibatches=2")


def test_gradient_checkpointing_takes_the_same_first_step(tiny_dir, tmp_path):
    """train.gradient_checkpointing changes memory, not the update: the first step's loss, KL, entropy
    and gradient norm equal the run without it (the same rollouts: sampling runs without gradients)."""

    def first_step(name: str, *overrides: str) -> dict:
        cfg = _config(tiny_dir, tmp_path / name, "train.steps=1", "eval.num_prompts=4", *overrides)
        return next(row for row in run_grpo(cfg).history if row["step"] == 1)

    plain = first_step("plain")
    checkpointed = first_step("checkpointed", "train.gradient_checkpointing=true")
    assert checkpointed["reward/mean"] == plain["reward/mean"]  # identical samples
    for key in ("loss", "kl", "entropy", "grad_norm"):
        # float32 rounding (the gradient pass runs every row's prompt instead of sharing it): 1e-4 relative
        assert checkpointed[key] == pytest.approx(plain[key], rel=1e-4, abs=1e-7), key


def test_sequence_importance_ratio_takes_the_same_first_step_on_policy(tiny_dir, tmp_path):
    """algo.importance_ratio=sequence (GSPO) runs end to end; with mu = minibatches = 1 the batch is
    used once (old == current, every ratio 1 and d ratio / d logprob 1 either way), so the first
    step's loss and gradient norm equal the token ratio's."""

    def first_step(name: str, *overrides: str) -> dict:
        cfg = _config(tiny_dir, tmp_path / name, "train.steps=1", "eval.num_prompts=4", *overrides)
        return next(row for row in run_grpo(cfg).history if row["step"] == 1)

    token = first_step("token")
    sequence = first_step("sequence", "algo.importance_ratio=sequence")
    assert sequence["reward/mean"] == token["reward/mean"]  # identical samples
    assert token["grad_norm"] > 0  # the comparison is not vacuous
    for key in ("loss", "grad_norm", "ratio_mean"):
        # float32: the sequence path adds logp - sg(logp) + mean(0), exact zeros, so 1e-6 relative is ample
        assert sequence[key] == pytest.approx(token[key], rel=1e-6, abs=1e-8), key
