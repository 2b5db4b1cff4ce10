"""A NaN/inf loss, gradient norm or total reward, injected: stop names the step and the quantity and
leaves parameters, optimizer state and checkpoints as they were; skip carries on and counts the skip.
A NaN/inf held-out reward, loss or reward-model score: stop raises before the step is logged or checkpointed; skip warns and
logs it as null."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from aha.config import load_config
from aha.models.tiny import create_tiny_model
from aha.train import policy_update as policy_update_module
from aha.train import reward_model as rm_module
from aha.train import sft as sft_module
from aha.train.grpo import GRPORunConfig, run_grpo
from aha.train.nonfinite import NonFiniteError, NonFiniteGuard
from aha.train.precision import Precision
from aha.train.reward_model import RMRunConfig, run_rm
from aha.train.session import TrainingSession
from aha.train.sft import SFTRunConfig, run_sft

HELPERS = Path(__file__).parent / "helpers"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return create_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(autouse=True)
def _toy_rewards_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(HELPERS))


@pytest.fixture
def sessions(monkeypatch) -> list[TrainingSession]:
    """Every TrainingSession a run starts, so a test can inspect its model and optimizer after a raise."""
    started: list[TrainingSession] = []
    original = TrainingSession.start.__func__

    def start(cls, *args, **kwargs):
        started.append(original(cls, *args, **kwargs))
        return started[-1]

    monkeypatch.setattr(TrainingSession, "start", classmethod(start))
    return started


def _grpo(tiny_dir: Path, out: Path, *overrides: str) -> GRPORunConfig:
    base = [
        f"model.path={tiny_dir}",
        f"run.output_dir={out}",
        "run.progress=false",
        "run.save_every=1",
        "run.keep_checkpoints=5",
        "rewards.functions=[toy_rewards:digit_fraction]",
        "rollout.max_new_tokens=4",
        "rollout.group_size=4",
        "train.prompts_per_step=2",
        "train.steps=3",
        "data.arithmetic_train_size=20",
        "data.arithmetic_eval_size=4",
        "eval.num_prompts=4",
        "track.sample_every=0",
        "track.plot=false",
    ]
    return load_config(GRPORunConfig, overrides=[*base, *overrides])


def _sft(tiny_dir: Path, tmp_path: Path, *overrides: str) -> SFTRunConfig:
    train = tmp_path / "train.jsonl"
    train.write_text(
        "".join(json.dumps({"prompt": f"{i}+1=", "completion": str(i + 1)}) + "\n" for i in range(16))
    )
    base = [
        f"model.path={tiny_dir}",
        f"data.train_file={train}",
        f"run.output_dir={tmp_path / 'run'}",
        "run.progress=false",
        "run.save_every=1",
        "run.keep_checkpoints=5",
        "train.batch_size=4",
        "train.steps=3",
        "optim.warmup_steps=0",
    ]
    return load_config(SFTRunConfig, overrides=[*base, *overrides])


def _rm(tiny_dir: Path, tmp_path: Path, *overrides: str) -> RMRunConfig:
    from test_train_reward_model import synthetic_pairs

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in synthetic_pairs(64, seed=1)))
    base = [
        f"model.path={tiny_dir}",
        "model.lean_activations=false",
        f"data.train_file={pairs}",
        "data.held_out_fraction=0.25",
        f"run.output_dir={tmp_path / 'run'}",
        "run.progress=false",
        "run.save_every=1",
        "run.keep_checkpoints=5",
        "train.steps=3",
        "train.batch_size=8",
        "optim.warmup_steps=0",
    ]
    return load_config(RMRunConfig, overrides=[*base, *overrides])


def _snapshot(session: TrainingSession) -> tuple[dict, dict]:
    return copy.deepcopy(session.model.state_dict()), copy.deepcopy(session.optimizer.state_dict())


def _assert_same(a, b) -> None:
    """Bitwise equality of nested state dicts (tensors compared with torch.equal)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same(x, y)
    else:
        assert a == b


def _checkpoints(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").glob("step-*"))


def _nan_loss_at_call(monkeypatch, module, name: str, bad_call: int, sessions, snapshots: list) -> None:
    """Make `module.name` (a loss function) return NaN on its `bad_call`-th call, after snapshotting the
    run's model and optimizer: the state the bad step starts from."""
    original = getattr(module, name)
    calls = [0]

    def patched(*args, **kwargs):
        out = original(*args, **kwargs)
        calls[0] += 1
        if calls[0] != bad_call:
            return out
        snapshots.append(_snapshot(sessions[-1]))
        loss = out[0] if isinstance(out, tuple) else out
        bad = loss * math.nan
        return (bad, *out[1:]) if isinstance(out, tuple) else bad

    monkeypatch.setattr(module, name, patched)


def test_sft_nan_loss_stops_before_the_step_and_the_checkpoint(tiny_dir, tmp_path, monkeypatch, sessions):
    snapshots: list = []
    _nan_loss_at_call(monkeypatch, sft_module, "completion_nll", 2, sessions, snapshots)
    with pytest.raises(NonFiniteError, match=r"step 2: loss is nan"):
        run_sft(_sft(tiny_dir, tmp_path))
    model_before, optim_before = snapshots[0]
    _assert_same(model_before, sessions[-1].model.state_dict())
    _assert_same(optim_before, sessions[-1].optimizer.state_dict())
    assert _checkpoints(tmp_path / "run") == ["step-00000001"]


def test_sft_nan_gradient_stops_naming_the_gradient_norm(tiny_dir, tmp_path, monkeypatch, sessions):
    original = Precision.backward
    calls = [0]
    snapshots: list = []

    def backward(self, loss):
        original(self, loss)
        calls[0] += 1
        if calls[0] == 2:  # a finite loss whose gradient is not
            snapshots.append(_snapshot(sessions[-1]))
            next(p for p in sessions[-1].model.parameters() if p.grad is not None).grad.fill_(math.inf)

    monkeypatch.setattr(Precision, "backward", backward)
    with pytest.raises(NonFiniteError, match=r"step 2: gradient norm is (inf|nan)"):
        run_sft(_sft(tiny_dir, tmp_path))
    model_before, optim_before = snapshots[0]
    _assert_same(model_before, sessions[-1].model.state_dict())
    _assert_same(optim_before, sessions[-1].optimizer.state_dict())
    assert _checkpoints(tmp_path / "run") == ["step-00000001"]


def test_sft_skip_mode_leaves_the_step_out_and_continues(tiny_dir, tmp_path, monkeypatch, sessions):
    snapshots: list = []
    _nan_loss_at_call(monkeypatch, sft_module, "completion_nll", 2, sessions, snapshots)
    result = run_sft(_sft(tiny_dir, tmp_path, "train.on_nonfinite=skip"))
    assert [r["update/nonfinite_skipped"] for r in result.history] == [0.0, 1.0, 0.0]
    assert "loss" not in result.history[1] and "loss" in result.history[2]
    ckpt = tmp_path / "run" / "checkpoints"
    step1, step2 = (load_file(ckpt / f"step-0000000{i}" / "model.safetensors") for i in (1, 2))
    _assert_same(step1, step2)  # the skipped step moved no weight
    # nor any Adam moment or step count (the lr in param_groups follows the schedule, which advances)
    optim1, optim2 = (torch.load(ckpt / f"step-0000000{i}" / "optimizer.pt")["state"] for i in (1, 2))
    _assert_same(optim1, optim2)


def test_grpo_nan_loss_stops_naming_step_and_loss(tiny_dir, tmp_path, monkeypatch, sessions):
    snapshots: list = []
    # one minibatch_loss call per optimizer step here (mu = minibatches = 1, no micro-batching)
    _nan_loss_at_call(monkeypatch, policy_update_module, "minibatch_loss", 2, sessions, snapshots)
    with pytest.raises(NonFiniteError, match=r"step 2, pass 1, optimizer step 1 of the update: loss is nan"):
        run_grpo(_grpo(tiny_dir, tmp_path / "run"))
    model_before, optim_before = snapshots[0]
    _assert_same(model_before, sessions[-1].model.state_dict())
    _assert_same(optim_before, sessions[-1].optimizer.state_dict())
    assert _checkpoints(tmp_path / "run") == ["step-00000001"]


def test_grpo_overflowing_reward_stops_before_the_advantages(tiny_dir, tmp_path, sessions):
    # overflowing on training batches only: on the step-0 evaluation too it would stop there (below)
    cfg = _grpo(tiny_dir, tmp_path / "run", "rewards.functions=[toy_rewards:float32_overflow_in_training]")
    with pytest.raises(
        NonFiniteError, match=r"step 1, weighted sum of the reward functions: total reward is inf"
    ):
        run_grpo(cfg)
    assert sessions[-1].optimizer.state == {}  # never stepped
    initial = load_file(tiny_dir / "model.safetensors")
    _assert_same(initial, {k: v for k, v in sessions[-1].model.state_dict().items() if k in initial})
    assert not (tmp_path / "run" / "checkpoints").exists() or _checkpoints(tmp_path / "run") == []


def test_grpo_skip_mode_skips_overflowing_rewards_and_finishes(tiny_dir, tmp_path):
    cfg = _grpo(
        tiny_dir,
        tmp_path / "run",
        "rewards.functions=[toy_rewards:float32_overflow]",
        "train.on_nonfinite=skip",
    )
    result = run_grpo(cfg)
    rows = [r for r in result.history if r["step"] > 0]
    assert [r["update/nonfinite_skipped"] for r in rows] == [1.0, 1.0, 1.0]
    initial = load_file(tiny_dir / "model.safetensors")
    final = load_file(tmp_path / "run" / "checkpoints" / "step-00000003" / "model.safetensors")
    _assert_same(initial, {k: v for k, v in final.items() if k in initial})


def test_grpo_held_out_reward_overflow_stops_before_the_step_is_logged(tiny_dir, tmp_path):
    cfg = _grpo(tiny_dir, tmp_path / "run", "rewards.functions=[toy_rewards:float32_overflow_held_out]")
    with pytest.raises(NonFiniteError, match=r"step 0, held-out evaluation: reward mean is inf"):
        run_grpo(cfg)
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == ""
    assert not (tmp_path / "run" / "checkpoints").exists() or _checkpoints(tmp_path / "run") == []


def test_grpo_held_out_reward_overflow_in_skip_mode_warns_and_logs_null(tiny_dir, tmp_path, capsys):
    cfg = _grpo(
        tiny_dir,
        tmp_path / "run",
        "rewards.functions=[toy_rewards:float32_overflow_held_out]",
        "train.on_nonfinite=skip",
        "eval.every=2",
    )
    run_grpo(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evaluated = [r for r in rows if "eval/reward_mean" in r]
    assert [r["step"] for r in evaluated] == [0, 2, 3]
    assert all(r["eval/reward_mean"] is None for r in evaluated)
    assert all(r["update/nonfinite_skipped"] == 0.0 for r in rows if r["step"] > 0)  # training unaffected
    err = capsys.readouterr().err
    for step in (0, 2, 3):
        assert f"warning: step {step}, held-out evaluation: reward mean is inf; logged as null" in err


def test_sft_nan_held_out_loss_stops_before_the_step_is_logged(tiny_dir, tmp_path, monkeypatch):
    """A NaN held-out loss at step 2's evaluation: the step is neither logged nor checkpointed."""
    original, calls = sft_module.heldout_loss, [0]

    def heldout_loss(*args, **kwargs):
        calls[0] += 1  # call 1: step 0, call 2: step 2
        return math.nan if calls[0] == 2 else original(*args, **kwargs)

    monkeypatch.setattr(sft_module, "heldout_loss", heldout_loss)
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text(
        "".join(json.dumps({"prompt": f"{i}+2=", "completion": str(i + 2)}) + "\n" for i in range(4))
    )
    cfg = _sft(tiny_dir, tmp_path, f"data.eval_file={held_out}", "eval.every=2")
    with pytest.raises(NonFiniteError, match=r"step 2, held-out evaluation: loss is nan"):
        run_sft(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1]
    assert _checkpoints(tmp_path / "run") == ["step-00000001"]


def test_rm_nan_loss_stops_before_the_step_and_the_checkpoint(tiny_dir, tmp_path, monkeypatch, sessions):
    snapshots: list = []
    _nan_loss_at_call(monkeypatch, rm_module, "ranking_terms", 2, sessions, snapshots)
    with pytest.raises(NonFiniteError, match=r"step 2: loss is nan"):
        run_rm(_rm(tiny_dir, tmp_path, "eval.at_start=false"))
    model_before, optim_before = snapshots[0]
    _assert_same(model_before, sessions[-1].model.state_dict())
    _assert_same(optim_before, sessions[-1].optimizer.state_dict())
    assert _checkpoints(tmp_path / "run") == ["step-00000001"]


def test_rm_skip_mode_leaves_the_step_out_and_continues(tiny_dir, tmp_path, monkeypatch, sessions):
    snapshots: list = []
    _nan_loss_at_call(monkeypatch, rm_module, "ranking_terms", 2, sessions, snapshots)
    result = run_rm(_rm(tiny_dir, tmp_path, "eval.at_start=false", "train.on_nonfinite=skip"))
    assert [r["update/nonfinite_skipped"] for r in result.history] == [0.0, 1.0, 0.0]
    assert "loss" not in result.history[1] and "loss" in result.history[2]
    ckpt = tmp_path / "run" / "checkpoints"
    step1, step2 = (load_file(ckpt / f"step-0000000{i}" / "model.safetensors") for i in (1, 2))
    _assert_same(step1, step2)  # the skipped step moved no weight


def test_rm_nan_held_out_score_stops_before_the_step_is_logged(tiny_dir, tmp_path, monkeypatch):
    """A reward model whose held-out scores overflow at step 2's evaluation: the step is neither logged
    nor checkpointed."""
    original, calls = rm_module.evaluate_rankings, [0]

    def evaluate_rankings(*args, **kwargs):
        metrics, calib, scores = original(*args, **kwargs)
        calls[0] += 1  # call 1: step 0, call 2: step 2
        return ({**metrics, "eval/score_mean": math.inf} if calls[0] == 2 else metrics), calib, scores

    monkeypatch.setattr(rm_module, "evaluate_rankings", evaluate_rankings)
    with pytest.raises(NonFiniteError, match=r"step 2, held-out evaluation: score mean is inf"):
        run_rm(_rm(tiny_dir, tmp_path, "eval.every=2"))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1]
    assert _checkpoints(tmp_path / "run") == ["step-00000001"]


def test_fp16_loss_scaler_overflow_is_not_a_fault():
    """Under fp16-mixed an inf gradient is the scaler's business: it skips the step and lowers the
    scale; the guard (in stop mode) must not raise."""
    layer = torch.nn.Linear(2, 2)
    precision = Precision("fp16-mixed", "cpu")
    optimizer = torch.optim.AdamW(layer.parameters())
    precision.backward(layer(torch.ones(1, 2)).sum())
    layer.weight.grad.fill_(math.inf)
    before = copy.deepcopy(layer.state_dict())
    result = precision.step(optimizer, 1.0, NonFiniteGuard("stop", step=1))
    assert result.skipped and not result.nonfinite
    _assert_same(before, layer.state_dict())
