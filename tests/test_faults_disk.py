"""A full disk or an I/O error while a run writes: the run stops with one line naming the file and what is
intact, the last checkpoint loads, and resuming ends exactly where an uninterrupted run ends.

Faults are injected where the bytes go: the metrics/sample file objects (a disk that fills up part-way
through a line, ENOSPC) and torch.save inside a checkpoint (EIO).
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from aha.cli import main
from aha.models.loading import load_model, load_tokenizer, save_model_atomically
from aha.models.tiny import create_tiny_model
from aha.track import jsonl
from aha.train.checkpoint import latest_checkpoint
from aha.write_errors import WriteFailed

HELPERS = Path(__file__).parent / "helpers"
STEPS = 4


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return create_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="module", autouse=True)
def _toy_rewards_importable():
    with pytest.MonkeyPatch.context() as patch:  # module-wide: the tests' own monkeypatch is undone mid-test
        patch.syspath_prepend(str(HELPERS))
        yield


def grpo_args(tiny_dir: Path, out: Path) -> list[str]:
    return [
        "grpo",
        f"model.path={tiny_dir}",
        f"run.output_dir={out}",
        "run.progress=false",
        "run.save_every=1",
        "rewards.functions=[toy_rewards:digit_fraction]",
        "rollout.max_new_tokens=6",
        "rollout.group_size=4",
        "train.prompts_per_step=4",
        f"train.steps={STEPS}",
        "data.arithmetic_train_size=64",
        "data.arithmetic_eval_size=8",
        "eval.num_prompts=8",
        "eval.every=0",
        "track.sample_every=1",
        "track.plot=false",
    ]


@pytest.fixture(scope="module")
def uninterrupted(tiny_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight") / "run"
    assert main(grpo_args(tiny_dir, out)) == 0
    return out


class FillingDisk:
    """A file whose disk fills up after `room` more bytes: the write that crosses it is cut short (the
    bytes that fit reach the file) and raises ENOSPC, as a real full disk does."""

    def __init__(self, file, room: int):
        self.file, self.room = file, room

    def write(self, text: str) -> int:
        if len(text) > self.room:
            self.file.write(text[: self.room])
            self.file.flush()
            self.room = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(text)
        return self.file.write(text)

    def __getattr__(self, name):
        return getattr(self.file, name)


def fill_disk_after(monkeypatch, file_name: str, records: int) -> None:
    """The disk fills while the (records + 1)-th record is written to run_dir/`file_name`."""
    real_init = jsonl.JsonlAppender.__init__

    def init(self, path):
        real_init(self, path)
        if self.path.name == file_name:
            existing = self.path.read_text().splitlines()
            self._file = FillingDisk(self._file, room=10**9)
            self._records_left = records - len(existing)

    real_write = jsonl.JsonlAppender.write

    def write(self, record):
        if isinstance(self._file, FillingDisk) and hasattr(self, "_records_left"):
            if self._records_left == 0:
                self._file.room = 7  # 7 bytes of the next line fit
            self._records_left -= 1
        return real_write(self, record)

    monkeypatch.setattr(jsonl.JsonlAppender, "__init__", init)
    monkeypatch.setattr(jsonl.JsonlAppender, "write", write)


def assert_resume_matches(tiny_dir: Path, out: Path, uninterrupted: Path) -> None:
    assert main([*grpo_args(tiny_dir, out), "--resume"]) == 0
    final = f"checkpoints/step-{STEPS:08d}/model.safetensors"
    a, b = load_file(uninterrupted / final), load_file(out / final)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(STEPS + 1))


def test_a_full_disk_while_writing_metrics(tiny_dir, tmp_path, monkeypatch, capsys, uninterrupted):
    out = tmp_path / "run"
    fill_disk_after(monkeypatch, "metrics.jsonl", records=3)  # steps 0, 1, 2 written; step 3 is cut
    assert main(grpo_args(tiny_dir, out)) == 1
    message = capsys.readouterr().err
    assert f"could not write {out / 'metrics.jsonl'}: No space left on device (errno 28)" in message
    assert "torn last line is dropped on resume" in message
    assert (out / "metrics.jsonl").read_text().endswith('{"step"')  # the torn line really is there
    assert latest_checkpoint(out).name == "step-00000002"
    monkeypatch.undo()
    assert_resume_matches(tiny_dir, out, uninterrupted)


def test_a_full_disk_while_writing_samples(tiny_dir, tmp_path, monkeypatch, capsys, uninterrupted):
    out = tmp_path / "run"
    fill_disk_after(monkeypatch, "samples.jsonl", records=2 * 16)  # one record per completion: steps 1 and 2
    assert main(grpo_args(tiny_dir, out)) == 1
    assert f"could not write {out / 'samples.jsonl'}: No space left on device" in capsys.readouterr().err
    assert latest_checkpoint(out).name == "step-00000002"
    monkeypatch.undo()
    assert_resume_matches(tiny_dir, out, uninterrupted)


def test_an_io_error_while_writing_a_checkpoint(tiny_dir, tmp_path, monkeypatch, capsys, uninterrupted):
    out = tmp_path / "run"
    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        if "step-00000003" in str(f) and str(f).endswith("optimizer.pt"):
            raise OSError(errno.EIO, "Input/output error")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    assert main(grpo_args(tiny_dir, out)) == 1
    message = capsys.readouterr().err
    assert "step-00000003: Input/output error (errno 5)" in message
    assert "step-00000002 is intact" in message
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000001", "step-00000002"]
    monkeypatch.undo()
    assert_resume_matches(tiny_dir, out, uninterrupted)


def test_a_failed_model_export_leaves_the_previous_one(tiny_dir, tmp_path, monkeypatch):
    model, tokenizer = load_model(tiny_dir, "float32", "cpu"), load_tokenizer(tiny_dir)
    out = save_model_atomically(model, tokenizer, tmp_path / "final")
    before = load_file(out / "model.safetensors")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(type(tokenizer), "save_pretrained", full_disk)  # the weights are written already
    with pytest.raises(WriteFailed, match="final: No space left on device .* is as it was"):
        save_model_atomically(model, tokenizer, out)
    after = load_file(out / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [p.name for p in tmp_path.iterdir()] == ["final"]  # no temp directory left behind
