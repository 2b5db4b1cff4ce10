"""track.report_to: TensorBoard and W&B receive what metrics.jsonl / samples.jsonl get, for every stage;
a missing package fails at config load naming the extra; only rank 0 writes."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from aha.config import ConfigError, load_config
from aha.models.tiny import create_tiny_model
from aha.track.metrics import read_metrics
from aha.track.samples import read_samples
from aha.track.trackers import MAX_SAMPLE_ROWS, open_trackers
from aha.train.grpo import GRPORunConfig, run_grpo
from aha.train.reward_model import RMRunConfig, run_rm
from aha.train.sft import SFTRunConfig, run_sft

HELPERS = Path(__file__).parent / "helpers"
HH_RLHF = Path(__file__).parent / "data" / "hh-rlhf" / "helpful-base-edge-cases.jsonl"
needs_tensorboard = pytest.mark.skipif(
    importlib.util.find_spec("tensorboard") is None,
    reason="tensorboard not installed (pip install 'aha[tensorboard]')",
)
needs_wandb = pytest.mark.skipif(
    importlib.util.find_spec("wandb") is None, reason="wandb not installed (pip install 'aha[wandb]')"
)
# TensorBoard stores scalars as float32: a value read back is the logged float64 rounded to 24 bits,
# a relative error of at most 2**-24 (~6e-8).
F32_REL = 2.0**-24


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return create_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(autouse=True)
def _toy_rewards_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(HELPERS))


def _grpo(tiny_dir: Path, out: Path, *overrides: str) -> GRPORunConfig:
    base = [
        f"model.path={tiny_dir}",
        f"run.output_dir={out}",
        "run.progress=false",
        "rewards.functions=[toy_rewards:digit_fraction]",
        "rollout.max_new_tokens=6",
        "rollout.group_size=4",
        "train.prompts_per_step=4",
        "optim.lr=3e-3",
        "data.arithmetic_train_size=64",
        "data.arithmetic_eval_size=8",
        "eval.num_prompts=8",
        "eval.every=2",
        "track.sample_every=2",
        "track.plot=false",
        "train.steps=4",
    ]
    return load_config(GRPORunConfig, overrides=[*base, *overrides])


def _scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _texts(log_dir: Path, tag: str) -> list[tuple[int, str]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return [
        (e.step, b"".join(e.tensor_proto.string_val).decode()) for e in acc.Tensors(f"{tag}/text_summary")
    ]


def _assert_scalars_match_jsonl(run_dir: Path) -> None:
    """Every number of metrics.jsonl is in the event file under its own name and step, and nothing else."""
    scalars = _scalars(run_dir / "tensorboard")
    expected: dict[str, list[tuple[int, float]]] = {}
    for row in read_metrics(run_dir):
        for key, value in row.items():
            if key != "step":
                expected.setdefault(key, []).append((row["step"], value))
    assert set(scalars) == set(expected)
    for key, points in expected.items():
        assert [s for s, _ in scalars[key]] == [s for s, _ in points], key
        assert [v for _, v in scalars[key]] == pytest.approx([v for _, v in points], rel=F32_REL, nan_ok=True)


@needs_tensorboard
def test_grpo_tensorboard_holds_the_scalars_config_and_samples(tiny_dir, tmp_path):
    run_dir = tmp_path / "run"
    run_grpo(_grpo(tiny_dir, run_dir, "track.report_to=[jsonl,tensorboard]"))
    _assert_scalars_match_jsonl(run_dir)
    assert {"reward/mean", "eval/accuracy", "kl", "time/step_s"} <= set(_scalars(run_dir / "tensorboard"))
    (config_step, config_text), *_ = _texts(run_dir / "tensorboard", "config")
    assert config_step == 0 and f"path: {tiny_dir}" in config_text
    samples = _texts(run_dir / "tensorboard", "samples")
    assert [step for step, _ in samples] == [2, 4]
    logged = [row for row in read_samples(run_dir) if row["step"] == 2]
    table = samples[0][1].splitlines()
    assert table[0] == "| prompt | completion | reward | advantage |"
    assert len(table) == 2 + min(len(logged), MAX_SAMPLE_ROWS)
    first = logged[0]
    assert table[2].startswith("| " + first["prompt"].replace("|", "\\|") + " |")


@needs_tensorboard
def test_resumed_run_hides_what_the_interrupted_run_logged_after_the_checkpoint(tiny_dir, tmp_path):
    run_dir = tmp_path / "run"
    cfg = _grpo(tiny_dir, run_dir, "track.report_to=[tensorboard]", "run.save_every=2")
    run_grpo(cfg)
    shutil.rmtree(run_dir / "checkpoints" / "step-00000004")  # as if killed after logging steps 3 and 4
    run_grpo(cfg, resume=True)
    scalars = _scalars(run_dir / "tensorboard")
    assert [s for s, _ in scalars["reward/mean"]] == [1, 2, 3, 4]  # steps 3 and 4 once, from the resumed run
    _assert_scalars_match_jsonl(run_dir)


@needs_tensorboard
def test_sft_and_reward_model_report_to_tensorboard(tiny_dir, tmp_path):
    """The fan-out sits in TrainingSession: the other stages get it without code of their own."""
    rows = [{"prompt": f"{a}+{a}=", "completion": str(2 * a)} for a in range(40)]
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    sft_cfg = load_config(
        SFTRunConfig,
        overrides=[
            f"model.path={tiny_dir}",
            f"data.train_file={data}",
            f"run.output_dir={tmp_path / 'sft'}",
            "run.progress=false",
            "train.steps=3",
            "train.batch_size=8",
            "optim.warmup_steps=0",
            "track.report_to=[tensorboard]",
        ],
    )
    run_sft(sft_cfg)
    _assert_scalars_match_jsonl(tmp_path / "sft")
    rm_cfg = load_config(
        RMRunConfig,
        overrides=[
            f"model.path={tiny_dir}",
            "model.lean_activations=false",
            f"data.train_file={HH_RLHF}",
            "data.format=hh-rlhf",
            "data.max_length=64",
            f"run.output_dir={tmp_path / 'rm'}",
            "run.progress=false",
            "train.steps=2",
            "train.batch_size=4",
            "track.report_to=[tensorboard]",
        ],
    )
    run_rm(rm_cfg)
    _assert_scalars_match_jsonl(tmp_path / "rm")
    assert "eval/accuracy" in _scalars(tmp_path / "rm" / "tensorboard")


@needs_wandb
def test_wandb_offline_run_directory_holds_the_history_config_and_samples(tiny_dir, tmp_path, monkeypatch):
    from wandb_log import config, history, wait_until_complete

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "run"
    run_grpo(_grpo(tiny_dir, run_dir, "track.report_to=[jsonl,wandb]", "track.wandb_project=aha-test"))
    (log,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    wait_until_complete(log)
    rows = history(log)
    by_step = {row["_step"]: row for row in rows}
    for row in read_metrics(run_dir):
        logged = by_step[row["step"]]
        for key, value in row.items():
            if key != "step":
                assert logged[key] == pytest.approx(value, nan_ok=True), (row["step"], key)
    tables = {row["_step"]: row for row in rows if row.get("samples/_type") == "table-file"}
    assert sorted(tables) == [2, 4]
    table_file = log.parent / "files" / tables[2]["samples/path"]
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["prompt", "completion", "reward", "advantage"]
    logged = [row for row in read_samples(run_dir) if row["step"] == 2]
    assert [r[1] for r in table["data"]] == [row["completion"] for row in logged[:MAX_SAMPLE_ROWS]]
    cfg = config(log)
    assert cfg["model"]["path"] == str(tiny_dir) and cfg["track"]["report_to"] == ["jsonl", "wandb"]


@pytest.mark.parametrize("config_cls", [GRPORunConfig, SFTRunConfig, RMRunConfig])
def test_missing_package_or_unknown_tracker_fails_at_load_naming_the_fix(config_cls, monkeypatch):
    with pytest.raises(
        ConfigError, match=r"track\.report_to: 'mlflow' is not one of: jsonl, tensorboard, wandb"
    ):
        load_config(config_cls, overrides=["track.report_to=[mlflow]"])
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real_find_spec(name, *a)
    )
    with pytest.raises(
        ConfigError, match=r"track: report_to: wandb needs the wandb package: pip install 'aha\[wandb\]'"
    ):
        load_config(config_cls, overrides=["track.report_to=[jsonl,wandb]"])
    assert load_config(config_cls).track.report_to == ["jsonl"]  # the default needs nothing


def test_only_rank_zero_opens_trackers(tmp_path, monkeypatch):
    """A distributed run's other ranks write no TensorBoard / W&B (they would log every step N times)."""
    if importlib.util.find_spec("tensorboard") is None:
        pytest.skip("tensorboard not installed (pip install 'aha[tensorboard]')")
    monkeypatch.setenv("RANK", "1")
    assert open_trackers(["tensorboard"], tmp_path, {}, "", "aha").backends == []
    assert not (tmp_path / "tensorboard").exists()
    monkeypatch.setenv("RANK", "0")
    trackers = open_trackers(["tensorboard"], tmp_path, {}, "", "aha")
    trackers.close()
    assert len(trackers.backends) == 1 and any((tmp_path / "tensorboard").iterdir())
