from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from aha.models.loading import load_model, load_tokenizer
from aha.models.tiny import TinyModelSpec, create_tiny_model
from aha.train.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from aha.train.optim import build_optimizer, build_scheduler

SPEC = TinyModelSpec(
    hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_position_embeddings=64
)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return str(create_tiny_model(tmp_path_factory.mktemp("tiny"), SPEC, seed=0))


def trained(tiny_dir, steps=3):
    """A model, optimizer and scheduler that have taken a few steps (so Adam moments are non-zero)."""
    model = load_model(tiny_dir)
    optimizer = build_optimizer(model, lr=1e-2, weight_decay=0.1)
    scheduler = build_scheduler(optimizer, warmup_steps=1, total_steps=10)
    ids = torch.tensor([[1, 20, 21, 22, 2]])
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    return model, optimizer, scheduler


def fresh(tiny_dir):
    model = load_model(tiny_dir)
    optimizer = build_optimizer(model, lr=1e-2, weight_decay=0.1)
    return model, optimizer, build_scheduler(optimizer, warmup_steps=1, total_steps=10)


def assert_same_tensors(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_save_then_load_restores_everything(tiny_dir, tmp_path):
    model, optimizer, scheduler = trained(tiny_dir)
    tokenizer = load_tokenizer(tiny_dir)
    sampler_state = {"epoch": 1, "position": 3, "seed": 0, "fingerprint": "10:abc"}
    path = save_checkpoint(
        tmp_path, 3, model, tokenizer, optimizer, scheduler,
        trainer_state={"stage": "grpo", "best": 0.5}, extra_state={"sampler": sampler_state, "ref": model.state_dict()},
    )  # fmt: skip
    assert path == tmp_path / "checkpoints" / "step-00000003"
    names = {p.name for p in path.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "optimizer.pt", "scheduler.pt"} <= names
    assert {"trainer_state.json", "rng.pt", "extra.pt"} <= names
    assert json.loads((path / "trainer_state.json").read_text()) == {"step": 3, "stage": "grpo", "best": 0.5}

    model2, optimizer2, scheduler2 = fresh(tiny_dir)
    state = load_checkpoint(path, model2, optimizer2, scheduler2)
    assert state["step"] == 3 and state["stage"] == "grpo" and state["best"] == 0.5
    assert state["extra"]["sampler"] == sampler_state
    assert_same_tensors(state["extra"]["ref"], model.state_dict())
    assert_same_tensors(model2.state_dict(), model.state_dict())
    assert scheduler2.state_dict() == scheduler.state_dict()
    s1, s2 = optimizer.state_dict(), optimizer2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for pid in s1["state"]:
        assert_same_tensors(s1["state"][pid], s2["state"][pid])
    # The saved directory is an ordinary HF model directory.
    assert_same_tensors(load_model(str(path)).state_dict(), model.state_dict())
    assert load_tokenizer(str(path)).encode("1+2=") == tokenizer.encode("1+2=")


def test_training_continues_identically_after_resume(tiny_dir, tmp_path):
    model, optimizer, scheduler = trained(tiny_dir, steps=2)
    save_checkpoint(tmp_path, 2, model, None, optimizer, scheduler)
    ids = torch.tensor([[1, 30, 31, 2]])

    def one_step(m, opt, sched):
        m(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()

    one_step(model, optimizer, scheduler)
    model2, optimizer2, scheduler2 = fresh(tiny_dir)
    load_checkpoint(latest_checkpoint(tmp_path), model2, optimizer2, scheduler2)
    one_step(model2, optimizer2, scheduler2)
    assert_same_tensors(model2.state_dict(), model.state_dict())


def test_rng_states_are_restored(tiny_dir, tmp_path):
    model, _, _ = fresh(tiny_dir)
    torch.manual_seed(123)
    random.seed(5)
    np.random.seed(7)
    np.random.standard_normal()  # exercise numpy's cached-gaussian fields
    path = save_checkpoint(tmp_path, 1, model, None)
    expected = (torch.rand(4), random.random(), np.random.standard_normal(3))
    torch.manual_seed(0), random.seed(0), np.random.seed(0)
    load_checkpoint(path, model)
    got = (torch.rand(4), random.random(), np.random.standard_normal(3))
    assert torch.equal(got[0], expected[0]) and got[1] == expected[1] and np.array_equal(got[2], expected[2])
    torch.manual_seed(0)
    load_checkpoint(path, model, restore_rng=False)
    assert not torch.equal(torch.rand(4), expected[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_rng_state_is_restored(tiny_dir, tmp_path):
    model, _, _ = fresh(tiny_dir)
    torch.cuda.manual_seed_all(11)
    path = save_checkpoint(tmp_path, 1, model, None)
    expected = torch.rand(4, device="cuda")
    torch.cuda.manual_seed_all(0)
    load_checkpoint(path, model)
    assert torch.equal(torch.rand(4, device="cuda"), expected)


def test_crash_during_write_keeps_previous_checkpoint(tiny_dir, tmp_path, monkeypatch):
    model, optimizer, scheduler = trained(tiny_dir, steps=1)
    first = save_checkpoint(tmp_path, 1, model, None, optimizer, scheduler)
    weights_at_1 = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)

    real_save = torch.save

    def crash_on_scheduler(obj, f, *args, **kwargs):
        if str(f).endswith("scheduler.pt"):  # model, tokenizer and optimizer are already written
            raise OSError("disk full")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", crash_on_scheduler)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, 2, model, None, optimizer, scheduler)
    monkeypatch.undo()

    assert latest_checkpoint(tmp_path) == first
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000001"]
    model2, optimizer2, scheduler2 = fresh(tiny_dir)
    assert load_checkpoint(first, model2, optimizer2, scheduler2)["step"] == 1
    assert_same_tensors(model2.state_dict(), weights_at_1)


def test_leftover_temp_dir_is_ignored_then_cleaned(tiny_dir, tmp_path):
    model, _, _ = fresh(tiny_dir)
    first = save_checkpoint(tmp_path, 1, model, None)
    stale = tmp_path / "checkpoints" / ".tmp-step-00000002-killed"  # what a SIGKILL mid-save leaves
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    (stale / "trainer_state.json").write_text('{"step": 2}')
    assert latest_checkpoint(tmp_path) == first
    save_checkpoint(tmp_path, 3, model, None)
    assert not stale.exists()


def test_prune_keeps_newest(tiny_dir, tmp_path):
    model, _, _ = fresh(tiny_dir)
    for step in (5, 10, 15, 20):
        save_checkpoint(tmp_path, step, model, None, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000015", "step-00000020"]
    save_checkpoint(tmp_path, 25, model, None, keep_last=None)
    assert len(list_checkpoints(tmp_path)) == 3
    save_checkpoint(tmp_path, 30, model, None, keep_last=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000030"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000030"]


def test_resaving_a_step_replaces_it(tiny_dir, tmp_path):
    model, _, _ = fresh(tiny_dir)
    save_checkpoint(tmp_path, 4, model, None, trainer_state={"v": 1})
    path = save_checkpoint(tmp_path, 4, model, None, trainer_state={"v": 2})
    assert json.loads((path / "trainer_state.json").read_text())["v"] == 2
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000004"]


def test_latest_checkpoint_orders_by_step_not_name(tiny_dir, tmp_path):
    assert latest_checkpoint(tmp_path) is None
    model, _, _ = fresh(tiny_dir)
    save_checkpoint(tmp_path, 99_999_999, model, None, keep_last=None)
    big = save_checkpoint(tmp_path, 100_000_000, model, None, keep_last=None)  # 9 digits
    assert latest_checkpoint(tmp_path) == big


def test_bad_state_is_rejected_before_writing(tiny_dir, tmp_path):
    model, _, _ = fresh(tiny_dir)
    with pytest.raises(TypeError, match="JSON-serialisable"):
        save_checkpoint(tmp_path, 1, model, None, trainer_state={"t": torch.zeros(1)})
    with pytest.raises(TypeError, match=r"extra_state\['a'\]\[1\] is a ndarray"):
        save_checkpoint(tmp_path, 1, model, None, extra_state={"a": [1, np.zeros(2)]})
    with pytest.raises(ValueError, match="reserved keys"):
        save_checkpoint(tmp_path, 1, model, None, trainer_state={"step": 3})
    assert latest_checkpoint(tmp_path) is None


def test_load_errors(tiny_dir, tmp_path):
    model, optimizer, _ = fresh(tiny_dir)
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        load_checkpoint(tmp_path, model)
    path = save_checkpoint(tmp_path, 1, model, None)
    with pytest.raises(CheckpointError, match="has no optimizer.pt"):
        load_checkpoint(path, model, optimizer)
    other = torch.nn.Linear(2, 2)
    with pytest.raises(CheckpointError, match="has weights the model lacks"):
        load_checkpoint(path, other)


KILLED_WRITER = textwrap.dedent(
    """
    import sys
    import torch
    from safetensors.torch import save_file
    from aha.train.checkpoint import save_checkpoint

    class Net(torch.nn.Linear):  # a save_pretrained stand-in: the subprocess need not import transformers
        def save_pretrained(self, directory):
            save_file(self.state_dict(), f"{directory}/model.safetensors")

    torch.manual_seed(0)
    model = Net(256, 256)
    step = 0
    while True:
        step += 1
        save_checkpoint(sys.argv[1], step, model, None, torch.optim.AdamW(model.parameters()), keep_last=3)
    """
)


def test_sigkill_mid_save_leaves_loadable_checkpoints(tmp_path):
    """A real crash: kill -9 a process that saves in a loop while a temp dir is being written."""
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(tmp_path)])
    root = tmp_path / "checkpoints"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if len(list_checkpoints(tmp_path)) >= 2 and any(
                p.name.startswith(".tmp-step") for p in root.iterdir()
            ):
                break
            time.sleep(0.002)
        else:
            pytest.fail("the writer never saved two checkpoints")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    torch.manual_seed(0)
    expected = torch.nn.Linear(256, 256)
    for path in list_checkpoints(tmp_path):
        model = torch.nn.Linear(256, 256)
        optimizer = torch.optim.AdamW(model.parameters())
        assert load_checkpoint(path, model, optimizer)["step"] == int(path.name.split("-")[1])
        assert_same_tensors(model.state_dict(), expected.state_dict())
