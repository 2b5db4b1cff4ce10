"""`aha demo` end to end (quick preset): RL on the gold checker beats the SFT model it starts from, and
it cannot when the teacher never shows the right behaviour (the limit scenario, the control)."""

from __future__ import annotations

import json

import pytest

from aha.config import ConfigError, load_config
from aha.demo import DemoConfig, run_demo

# Measured on the quick preset (docs/demo.md), 2-core Intel Xeon: held-out greedy accuracy after SFT ->
# after 80 GRPO steps, seeds 0/1/2: 52.0 -> 75.5, 56.5 -> 81.5, 56.0 -> 93.0 (teachers 64.0, 67.0, 66.2).
# Another CPU's rounding gives another sampled trajectory, and from this under-converged SFT model the
# climb varies about as much as between seeds (seed 0 gained 33.5 points in 40 steps on an AMD EPYC,
# 17.0 on the Xeon). The margin is 80% of the smallest gain over the three seeds when it was set (+17.5;
# now +23.5): room for some of that, while a GRPO that learns nothing (+0: greedy evaluation is
# deterministic) or little fails it.
MIN_GAIN = 0.14


def _quick_run(tmp_path_factory, scenario: str):
    out = tmp_path_factory.mktemp(f"demo-{scenario}") / "run"
    overrides = [f"scenario={scenario}", "quick=true", f"output_dir={out}", "progress=false"]
    return run_demo(load_config(DemoConfig, overrides=overrides))


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    return _quick_run(tmp_path_factory, "carry")


def test_rl_beats_sft_on_heldout_problems(quick_demo):
    sft, rl = quick_demo.sft.greedy.accuracy, quick_demo.rl.greedy.accuracy
    assert rl >= sft + MIN_GAIN, f"held-out greedy accuracy: SFT {sft:.3f}, after RL {rl:.3f}"
    assert rl > quick_demo.teacher_accuracy, "RL should end above the teacher it learned from"


def test_run_directory_holds_the_report(quick_demo):
    run_dir = quick_demo.run_dir
    for name in (
        "report.md",
        "demo.png",
        "scores.json",
        "data/heldout.jsonl",
        "sft/final/config.json",
        "sft/report.html",
        "grpo/report.html",
    ):
        assert (run_dir / name).exists(), name
    report = (run_dir / "report.md").read_text()
    assert "| teacher (writes the demonstrations) |" in report and "after SFT" in report
    scores = json.loads((run_dir / "scores.json").read_text())
    assert scores["rl"]["greedy"]["accuracy"] == quick_demo.rl.greedy.accuracy
    heldout = {
        json.loads(line)["prompt"] for line in (run_dir / "data/heldout.jsonl").read_text().splitlines()
    }
    trained = {json.loads(line)["prompt"] for line in (run_dir / "data/sft.jsonl").read_text().splitlines()}
    assert heldout and not heldout & trained


def test_existing_run_directory_is_not_overwritten(quick_demo):
    cfg = load_config(DemoConfig, overrides=["quick=true", f"output_dir={quick_demo.run_dir}"])
    with pytest.raises(ConfigError, match="already holds a demo run"):
        run_demo(cfg)


def test_resume_of_a_finished_demo_reuses_its_models(quick_demo):
    """--resume skips finished stages (no retraining) and measures the same models again."""
    cfg = load_config(
        DemoConfig, overrides=["quick=true", f"output_dir={quick_demo.run_dir}", "progress=false"]
    )
    again = run_demo(cfg, resume=True)
    assert again.rl.greedy.accuracy == quick_demo.rl.greedy.accuracy
    assert again.sft.greedy.completions == quick_demo.sft.greedy.completions


@pytest.fixture(scope="module")
def quick_limit_demo(tmp_path_factory):
    return _quick_run(tmp_path_factory, "limit")


def test_rl_cannot_amplify_what_is_never_sampled(quick_limit_demo):
    """The control for the carry test: the same pipeline, a teacher that never carries. Measured on the quick
    preset, seeds 0/1/2 (Intel Xeon): RL moved held-out greedy accuracy by -0.5, +0.5 and 0.0 points."""
    sft, rl = quick_limit_demo.sft.greedy.accuracy, quick_limit_demo.rl.greedy.accuracy
    assert abs(rl - sft) <= 0.03, f"held-out greedy accuracy: SFT {sft:.3f}, after RL {rl:.3f}"
    assert rl <= quick_limit_demo.teacher_accuracy + 0.03


@pytest.fixture(scope="module")
def quick_cot_demo(tmp_path_factory):
    return _quick_run(tmp_path_factory, "cot")


def test_correctness_reward_alone_makes_the_model_write_its_working(quick_cot_demo):
    """R1-Zero's "thinking longer emerges" on the quick preset (seed 0): the teacher shows the running
    parity 1 time in 4, the direct answer is at chance for this model (bench/demo_cot_capacity.py), and
    the only reward is correctness. Measured on seeds 0-4 (bench/demo_cot_seeds.py --quick, docs/demo.md):
    after SFT the sampled share was 20.6-27.9%, its working right 96.0-100% of the time, its direct
    answers 48.7-53.5%, and greedy decoding answered directly (2 tokens, 44.5-53.5% right); after 30 GRPO
    steps the share was 97.0-98.4%, greedy completions 19 tokens, greedy accuracy 100%. The bounds are issue 21's
    targets, far from both the measured values and from what a GRPO that learns nothing gives."""
    sft, rl = quick_cot_demo.sft, quick_cot_demo.rl
    assert sft.sampled.scratchpad_share <= 0.40, f"SFT share {sft.sampled.scratchpad_share:.3f}"
    assert sft.sampled.scratchpad_accuracy > sft.sampled.direct_accuracy + 0.3, "the working must pay"
    assert rl.sampled.scratchpad_share >= 0.90, f"RL share {rl.sampled.scratchpad_share:.3f}"
    assert rl.greedy.length_mean >= 1.8 * sft.greedy.length_mean, (
        f"greedy length: SFT {sft.greedy.length_mean:.1f}, after RL {rl.greedy.length_mean:.1f}"
    )
    assert rl.greedy.accuracy >= sft.greedy.accuracy + 0.20, (
        f"held-out greedy accuracy: SFT {sft.greedy.accuracy:.3f}, after RL {rl.greedy.accuracy:.3f}"
    )
