"""`aha eval`: a run's checkpoint evaluated again reproduces the run's own evaluation, shows what training
gained, writes every completion, and takes the run's settings unless told otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.rl_configs import tiny_rl_overrides

from aha.cli import main
from aha.config import ConfigError, load_config
from aha.evaluation.config import EvalCommand
from aha.evaluation.run import run_eval
from aha.models.tiny import create_tiny_model
from aha.train.grpo import GRPORunConfig, run_grpo

HELPERS = Path(__file__).parent / "helpers"
EVAL_SIZE = 32


@pytest.fixture(autouse=True)
def _toy_rewards_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(HELPERS))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> tuple[Path, Path]:
    """The tiny model and a 10-step GRPO run on it (digit fraction rewarded; a completion counts as correct
    from half digits up; sampled evaluations; a stateful monitor), checkpoints at steps 5 and 10."""
    root = tmp_path_factory.mktemp("eval")
    model = create_tiny_model(root / "model", seed=0)
    run = root / "run"
    overrides = [
        *tiny_rl_overrides(model, run, group_size=8, prompts_per_step=8, train_size=200, eval_size=EVAL_SIZE),
        "train.steps=10",
        "run.save_every=5",
        "algo.beta=0.01",
        "eval.every=0",
        "eval.greedy=false",
        "eval.success_threshold=0.5",
        "rewards.monitors=[toy_rewards:SeenCount]",
        "track.hacking.patience=0",
    ]
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(HELPERS))
        run_grpo(load_config(GRPORunConfig, overrides=overrides))
    return model, run


def _last_eval(run: Path) -> dict:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {k: v for k, v in rows[-1].items() if k.startswith("eval/")}


def test_a_checkpoint_evaluated_again_gives_the_runs_own_final_evaluation(trained_run, capsys):
    """`aha eval RUN_DIR`: the latest checkpoint, the run's prompts, rewards, sampling and seed, and the
    monitor's state from the checkpoint (without it the count would restart at 0)."""
    _, run = trained_run
    assert main(["eval", str(run), "run.progress=false"]) == 0
    out = run / "eval" / "step-00000010"
    assert str(out / "eval.json") in capsys.readouterr().err
    results = json.loads((out / "eval.json").read_text())
    logged = _last_eval(run)
    assert results["model"] == str(run / "checkpoints" / "step-00000010")
    assert results["prompts"] == EVAL_SIZE and results["completions"] == EVAL_SIZE
    assert results["accuracy"] == logged["eval/accuracy"]
    assert results["reward_mean"] == pytest.approx(logged["eval/reward_mean"], rel=1e-6)
    assert results["length_mean"] == logged["eval/length_mean"]
    assert results["monitors"]["SeenCount"] == logged["eval/monitor/SeenCount"] == 10 * 64 + EVAL_SIZE
    assert 0.0 < logged["eval/reward_mean"] < 1.0, "a degenerate evaluation would prove little"


def test_the_trained_checkpoint_beats_the_model_it_started_from(trained_run, tmp_path):
    """pass@k over 8 samples per prompt, for the initial model (its own settings given by hand) and the
    run's checkpoint (settings from the run): training raised the reward and every pass@k."""
    model, run = trained_run
    common = ["eval.samples=8", "eval.pass_k=[1,2,8]", "rollout.temperature=1.0", "run.progress=false"]
    trained = run_eval(load_config(EvalCommand, overrides=[f"from_run={run}", *common])).results
    before = run_eval(
        load_config(
            EvalCommand,
            overrides=[
                f"model.path={model}",
                "rewards.functions=[toy_rewards:digit_fraction]",
                "rollout.max_new_tokens=8",
                "data.arithmetic_train_size=200",
                f"data.arithmetic_eval_size={EVAL_SIZE}",
                "eval.success_threshold=0.5",
                f"run.output_dir={tmp_path / 'before'}",
                *common,
            ],
        )
    ).results
    assert trained["reward_mean"] > before["reward_mean"] + 0.2, (
        before["reward_mean"],
        trained["reward_mean"],
    )
    for k in ("1", "2", "8"):
        assert trained["pass@k"][k] > before["pass@k"][k], (k, before["pass@k"], trained["pass@k"])
    assert trained["pass@k"]["1"] == pytest.approx(trained["accuracy"])  # pass@1 is the mean accuracy
    assert trained["pass@k"]["1"] <= trained["pass@k"]["2"] <= trained["pass@k"]["8"]


def test_completions_file_holds_every_sample_and_recomputes_the_results(trained_run, tmp_path):
    _, run = trained_run
    out = tmp_path / "out"
    report = run_eval(
        load_config(
            EvalCommand,
            overrides=[
                f"from_run={run}",
                "eval.samples=3",
                "rollout.temperature=1.0",
                "eval.vote=text",
                f"run.output_dir={out}",
                "run.progress=false",
            ],
        )
    )
    records = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    assert records == json.loads(json.dumps(report.completions))
    assert sorted((r["prompt_index"], r["sample"]) for r in records) == [
        (i, s) for i in range(EVAL_SIZE) for s in range(3)
    ]
    for r in records:
        assert r["correct"] == (r["reward"] >= 0.5) and r["answer"] == (r["completion"].strip() or None)
    results = json.loads((out / "eval.json").read_text())
    assert results["accuracy"] == sum(r["correct"] for r in records) / len(records)
    assert "maj@3" in results and results["config"]["eval"]["samples"] == 3


def test_given_options_win_over_the_runs_and_step_picks_an_older_checkpoint(trained_run):
    _, run = trained_run
    cfg = load_config(EvalCommand, overrides=[f"from_run={run}", "step=5", "rollout.max_new_tokens=3"])
    assert cfg.model.path == str(run / "checkpoints" / "step-00000005")
    assert cfg.rollout.max_new_tokens == 3 and cfg.rollout.temperature == 1.0  # the run sampled its evals
    assert cfg.rewards.functions == ["toy_rewards:digit_fraction"] and cfg.eval.num_prompts == EVAL_SIZE
    assert cfg.run.output_dir == str(run / "eval" / "step-00000005")
    with pytest.raises(
        ConfigError, match=r"no checkpoint of step 7 \(it has: step-00000005, step-00000010\)"
    ):
        load_config(EvalCommand, overrides=[f"from_run={run}", "step=7"])


def test_what_cannot_be_evaluated_is_refused_with_the_fix(trained_run, tmp_path):
    _, run = trained_run
    cases = [
        ([], "model.path: no model to evaluate; give model.path=DIR, or a run directory"),
        ([f"from_run={run}", "eval.samples=4", "rollout.temperature=0"], "gives the same completion n times"),
        ([f"from_run={run}", "eval.pass_k=[1,4]"], r"pass_k: \[4\] outside 1..samples=1"),
        ([f"from_run={tmp_path}"], "is not a run directory"),
        (["model.path=x", "step=2"], "step picks a checkpoint of from_run"),
    ]
    for overrides, message in cases:
        with pytest.raises(ConfigError, match=message):
            load_config(EvalCommand, overrides=overrides)
    not_rl = tmp_path / "sft"
    not_rl.mkdir()
    (not_rl / "config.yaml").write_text("model: {path: m}\ndata: {train_file: x.jsonl}\n")
    with pytest.raises(ConfigError, match="not a GRPO or PPO run's config .* give model.path"):
        load_config(EvalCommand, overrides=[f"from_run={not_rl}"])
