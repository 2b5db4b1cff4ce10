"""A full disk or an I/O error while a run writes: the run stops with one line naming the file and what is
intact, the last checkpoint loads, and resuming ends exactly where an uninterrupted run ends.

Faults are injected where the bytes go: the metrics/sample/calibration file objects (a disk that fills up
part-way through a line, ENOSPC) and torch.save inside a checkpoint (EIO, ENOSPC), in GRPO, SFT, PPO and
the reward model. A power cut cannot be injected; what a test can check is the order that makes one
harmless: the JSON-lines rows a checkpoint counts are fsynced before the checkpoint is renamed into place.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from aha.cli import main
from aha.demo.hacking_task import write_task_files
from aha.models.loading import load_model, load_tokenizer, save_model_atomically
from aha.models.tiny import create_tiny_model
from aha.track import jsonl
from aha.train.checkpoint import latest_checkpoint
from aha.write_errors import WriteFailed

HELPERS = Path(__file__).parent / "helpers"
STEPS = 4
CLOCK_KEYS = ("time/", "throughput/", "memory/")  # wall-clock and memory readings differ run to run


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


# ---------------------------------------------------------------------------------------------------------
# Power cuts: the JSON-lines rows a checkpoint counts are fsynced before the checkpoint is committed.


def record_syncs_and_commits(monkeypatch, run_dir: Path, names: tuple[str, ...]) -> list[tuple]:
    """Events in order: ("sync", file name, the last step its lines hold on disk) for each os.fsync of one
    of run_dir's `names`, ("commit", step) for each checkpoint renamed into place."""
    events: list[tuple] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        real_fsync(fd)
        stat = os.fstat(fd)
        for name in names:
            path = run_dir / name
            if path.exists() and (os.stat(path).st_ino, os.stat(path).st_dev) == (stat.st_ino, stat.st_dev):
                lines = path.read_text().splitlines()
                events.append(("sync", name, json.loads(lines[-1])["step"] if lines else None))

    def replace(src, dst):
        real_replace(src, dst)
        if Path(dst).parent == run_dir / "checkpoints" and Path(dst).name.startswith("step-"):
            events.append(("commit", int(Path(dst).name[len("step-") :])))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def assert_rows_synced_before_each_commit(events: list[tuple], names: tuple[str, ...], steps) -> None:
    commits = [i for i, e in enumerate(events) if e[0] == "commit"]
    assert [events[i][1] for i in commits] == list(steps)
    for i in commits:
        step = events[i][1]
        for name in names:
            synced = [e[2] for e in events[:i] if e[:2] == ("sync", name)]
            assert synced and synced[-1] == step, (name, step, events[: i + 1])


def test_metrics_and_samples_are_fsynced_before_each_checkpoint(tiny_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    names = ("metrics.jsonl", "samples.jsonl")
    events = record_syncs_and_commits(monkeypatch, out, names)
    assert main(grpo_args(tiny_dir, out)) == 0
    assert_rows_synced_before_each_commit(events, names, range(1, STEPS + 1))


# ---------------------------------------------------------------------------------------------------------
# The other stages: a failed checkpoint write (ENOSPC / EIO) in SFT, the reward model and PPO, and a full
# disk while the reward model writes calibration.jsonl.


def stage_args(stage: str, tiny_dir: Path, data: Path, out: Path) -> list[str]:
    common = [f"run.output_dir={out}", "run.progress=false", "run.save_every=1", f"train.steps={STEPS}"]
    if stage == "sft":
        return [
            "sft",
            f"model.path={tiny_dir}",
            f"data.train_file={data / 'sft.jsonl'}",
            "train.batch_size=8",
            "eval.every=0",
            "optim.lr=3e-3",
            "optim.warmup_steps=1",
            *common,
        ]
    if stage == "rm":
        return [
            "rm",
            f"model.path={tiny_dir}",
            "model.lean_activations=false",
            f"data.train_file={data / 'pairs.jsonl'}",
            "data.held_out_fraction=0.25",
            "train.batch_size=8",
            "eval.every=1",
            "optim.lr=3e-3",
            "optim.warmup_steps=1",
            *common,
        ]
    return ["ppo", *grpo_args(tiny_dir, out)[1:], "critic.lr=3e-3"]


@pytest.fixture(scope="module")
def stage_data(tmp_path_factory) -> Path:
    import random

    from test_train_reward_model import synthetic_pairs

    data = tmp_path_factory.mktemp("data")
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijkl") for _ in range(3)) for _ in range(64)]
    (data / "sft.jsonl").write_text(
        "".join(json.dumps({"prompt": f"{w}=", "completion": w}) + "\n" for w in words)
    )
    (data / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in synthetic_pairs(64, seed=1)))
    return data


@pytest.fixture(scope="module")
def straight_runs(tiny_dir, stage_data, tmp_path_factory) -> dict[str, Path]:
    """Each stage's uninterrupted run, made when a test first asks for it."""
    runs: dict[str, Path] = {}

    def get(stage: str) -> Path:
        if stage not in runs:
            out = tmp_path_factory.mktemp(f"straight-{stage}") / "run"
            assert main(stage_args(stage, tiny_dir, stage_data, out)) == 0
            runs[stage] = out
        return runs[stage]

    return get


def assert_stage_resumes_exactly(stage: str, args: list[str], out: Path, straight: Path) -> None:
    """Resume to the end: every weights file of the last checkpoint (a critic's too) and every metrics
    and calibration row but clock readings equal the uninterrupted run's."""
    assert main([*args, "--resume"]) == 0
    last = f"checkpoints/step-{STEPS:08d}"
    files = sorted(p.relative_to(straight / last) for p in (straight / last).rglob("*.safetensors"))
    assert files == sorted(p.relative_to(out / last) for p in (out / last).rglob("*.safetensors"))
    for name in files:
        a, b = load_file(straight / last / name), load_file(out / last / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    for name in ("metrics.jsonl", "calibration.jsonl"):
        if (straight / name).exists():
            rows = [
                [
                    {k: v for k, v in json.loads(line).items() if not k.startswith(CLOCK_KEYS)}
                    for line in (run / name).read_text().splitlines()
                ]
                for run in (straight, out)
            ]
            assert rows[0] == rows[1], name


@pytest.mark.parametrize(
    ("stage", "failing_file", "fault"),
    [
        ("sft", "optimizer.pt", (errno.ENOSPC, "No space left on device")),
        ("rm", "scheduler.pt", (errno.EIO, "Input/output error")),
        ("ppo", "critic/optimizer.pt", (errno.ENOSPC, "No space left on device")),
    ],
)
def test_a_failed_checkpoint_write_in_each_stage(
    stage, failing_file, fault, tiny_dir, stage_data, straight_runs, tmp_path, monkeypatch, capsys
):
    straight = straight_runs(stage)
    out = tmp_path / "run"
    args = stage_args(stage, tiny_dir, stage_data, out)
    real_save = torch.save

    def failing_save(obj, f, *a, **kw):
        if "step-00000003" in str(f) and str(f).endswith(failing_file):
            raise OSError(*fault)
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", failing_save)
    assert main(args) == 1
    message = capsys.readouterr().err
    assert f"step-00000003: {fault[1]} (errno {fault[0]})" in message
    assert "step-00000002 is intact" in message and "Traceback" not in message
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000001", "step-00000002"]
    monkeypatch.undo()
    assert_stage_resumes_exactly(stage, args, out, straight)


def test_a_full_disk_while_writing_calibration(
    tiny_dir, stage_data, straight_runs, tmp_path, monkeypatch, capsys
):
    """The reward model's calibration.jsonl goes through the same writer as metrics.jsonl (it was opened
    and written directly, so a full disk there was a raw traceback), and its rows are fsynced before
    each checkpoint too."""
    straight = straight_runs("rm")
    out = tmp_path / "run"
    args = stage_args("rm", tiny_dir, stage_data, out)
    events = record_syncs_and_commits(monkeypatch, out, ("metrics.jsonl", "calibration.jsonl"))
    fill_disk_after(monkeypatch, "calibration.jsonl", records=3)  # steps 0, 1, 2 written; step 3 is cut
    assert main(args) == 1
    message = capsys.readouterr().err
    assert f"could not write {out / 'calibration.jsonl'}: No space left on device (errno 28)" in message
    assert latest_checkpoint(out).name == "step-00000002"
    assert_rows_synced_before_each_commit(events, ("metrics.jsonl", "calibration.jsonl"), [1, 2])
    monkeypatch.undo()
    assert_stage_resumes_exactly("rm", args, out, straight)


def test_pipeline_json_is_fsynced_before_and_after_its_rename(tiny_dir, tmp_path, monkeypatch):
    """`aha rlhf` records each finished stage in pipeline.json by a temp file renamed into place; the
    temp file's bytes are fsynced before the rename and the directory after it, so a power cut keeps
    the record of a stage whose later stage has started (a spy on `os.fsync` and `os.replace`)."""
    files = write_task_files(tmp_path / "data", seed=0, demos=32, pairs=32, heldout=4)
    out = tmp_path / "pipe"
    tmp, final = out / "pipeline.json.tmp", out / "pipeline.json"
    events: list[tuple] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        real_fsync(fd)
        stat = os.fstat(fd)
        if tmp.exists() and (os.stat(tmp).st_ino, os.stat(tmp).st_dev) == (stat.st_ino, stat.st_dev):
            events.append(("sync", sorted(json.loads(tmp.read_text()))))
        elif (os.stat(out).st_ino, os.stat(out).st_dev) == (stat.st_ino, stat.st_dev):
            events.append(("sync dir", sorted(json.loads(final.read_text())) if final.exists() else None))

    def replace(src, dst):
        if Path(dst) == final:
            events.append(("rename", sorted(json.loads(Path(src).read_text()))))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    common = ["run.progress=false", "train.steps=2"]
    argv = [
        "rlhf",
        f"pipeline.output_dir={out}",
        "pipeline.until=rm",
        f"sft.model.path={tiny_dir}",
        f"sft.data.train_file={files.sft}",
        "sft.optim.warmup_steps=0",
        *(f"sft.{o}" for o in common),
        f"rm.data.train_file={files.preferences}",
        "rm.model.lean_activations=false",
        *(f"rm.{o}" for o in common),
        "grpo.rewards.functions=[reward_model]",  # checked even when the pipeline stops before it
    ]
    assert main(argv) == 0
    assert events == [
        ("sync", ["sft"]),
        ("rename", ["sft"]),
        ("sync dir", ["sft"]),
        ("sync", ["rm", "sft"]),
        ("rename", ["rm", "sft"]),
        ("sync dir", ["rm", "sft"]),
    ]
