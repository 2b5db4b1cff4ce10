"""`aha rm` end to end on a tiny Llama: it learns a synthetic preference, resumes, and its saved model
scores like the trainer's own evaluation through the `reward_model` reward."""

import json
import math
import random
import shutil

import pytest
import torch

from aha.cli import main
from aha.config import ConfigError, load_config
from aha.models.reward_scorer import META_FILE, RewardScorer
from aha.models.tiny import TinyModelSpec, create_tiny_model
from aha.train.reward_model import RMRunConfig, run_rm


def synthetic_pairs(n: int, seed: int) -> list[dict]:
    """The preferred reply has more 'y' than 'n' among 7 letters; the prompt is an unrelated question.
    Length carries no signal (both replies have 7 letters), so only content can be learned."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):

        def reply(majority_y: bool) -> str:
            ys = rng.randint(4, 7) if majority_y else rng.randint(0, 3)
            letters = ["y"] * ys + ["n"] * (7 - ys)
            rng.shuffle(letters)
            return " " + "".join(letters)

        rows.append({"prompt": f"q{i % 50}:", "chosen": reply(True), "rejected": reply(False)})
    return rows


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    spec = TinyModelSpec(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128)
    return str(create_tiny_model(tmp_path_factory.mktemp("tiny"), spec))


def make_cfg(tmp_path, tiny_path, *overrides):
    data = tmp_path / "pairs.jsonl"
    if not data.exists():
        data.write_text("".join(json.dumps(r) + "\n" for r in synthetic_pairs(600, seed=1)))
    base = [
        f"model.path={tiny_path}",
        "model.lean_activations=false",
        f"data.train_file={data}",
        "data.held_out_fraction=0.25",
        f"run.output_dir={tmp_path / 'run'}",
        "run.progress=false",
        "train.steps=120",
        "train.batch_size=16",
        "optim.lr=3e-3",
        "optim.schedule=constant",
    ]
    return load_config(RMRunConfig, None, [*base, *overrides])


def test_learns_synthetic_preference_and_scores_like_the_trainer(tmp_path, tiny_path):
    result = run_rm(make_cfg(tmp_path, tiny_path))
    start = result.history[0]["eval/accuracy"]
    end = result.final_eval["eval/accuracy"]
    # 600 pairs, 25% of the 50 prompts held out (by prompt: q0..q49): ~150 held-out pairs
    assert result.final_eval["eval/pairs"] >= 50
    assert end >= 0.9, (start, end)
    assert result.final_eval["eval/margin"] > 0
    assert 0 <= result.final_eval["eval/ece"] <= 1
    calib = [json.loads(line) for line in (result.run_dir / "calibration.jsonl").read_text().splitlines()]
    assert [c["step"] for c in calib] == [0, 120]

    # the saved model, through the reward, scores the held-out responses exactly as the trainer did
    meta = json.loads((result.final_dir / META_FILE).read_text())
    assert meta["held_out"]["eval/accuracy"] == end
    from aha.data.preferences import load_pairs, split_by_prompt
    from aha.rewards.base import make_reward_specs

    _, held = split_by_prompt(load_pairs(tmp_path / "pairs.jsonl"), 0.25, seed=0)
    prompts = [r.prompt for r in held for _ in r.responses]
    replies = [x for r in held for x in r.responses]
    scorer = RewardScorer(result.final_dir)
    raw = scorer.raw(prompts, replies)
    # mean/std stored by the trainer are those of exactly these scores (same order, same batching rules):
    # float32 sums of ~300 O(1) values agree to ~1e-6
    assert float(raw.mean()) == pytest.approx(meta["normalization"]["mean"], abs=1e-5)
    assert float(raw.std()) == pytest.approx(meta["normalization"]["std"], abs=1e-5)
    (spec,) = make_reward_specs(
        [{"fn": "reward_model", "options": {"path": str(result.final_dir), "device": "cpu"}}]
    )
    rewards = spec.fn(prompts, replies)
    expected = (raw - meta["normalization"]["mean"]) / meta["normalization"]["std"]
    torch.testing.assert_close(torch.tensor(rewards), expected, atol=1e-6, rtol=0)
    better = torch.tensor(rewards[0::2]) > torch.tensor(rewards[1::2])
    assert float(better.float().mean()) == pytest.approx(end, abs=1e-9)


def test_resume_continues_to_the_same_end(tmp_path, tiny_path):
    cfg = make_cfg(tmp_path, tiny_path, "train.steps=8", "run.save_every=4", "eval.every=4")
    straight = run_rm(cfg)
    import shutil

    ckpts = sorted((straight.run_dir / "checkpoints").iterdir())
    shutil.rmtree(ckpts[-1])  # as if the run died after step 4
    resumed = run_rm(cfg, resume=True)
    assert [r["step"] for r in resumed.history] == [0, 1, 2, 3, 4, 5, 6, 7, 8]
    a = straight.history[-1]
    b = resumed.history[-1]
    # same batches, same RNG state, same float32 ops: identical up to summation order (1e-5 slack)
    assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)
    assert b["eval/accuracy"] == pytest.approx(a["eval/accuracy"], abs=1e-9)


def test_resume_keeps_one_calibration_row_per_evaluation(tmp_path, tiny_path):
    """Resuming a finished run adds no second row for its last evaluation (it did, found by the rlhf
    kill test); a run killed mid-way through writing a row drops that torn row and redoes it."""
    cfg = make_cfg(tmp_path, tiny_path, "train.steps=8", "run.save_every=4", "eval.every=4")
    calib = tmp_path / "run" / "calibration.jsonl"
    run_rm(cfg)
    straight = calib.read_text()
    assert [json.loads(line)["step"] for line in straight.splitlines()] == [0, 4, 8]
    run_rm(cfg, resume=True)  # finished: nothing to train
    assert calib.read_text() == straight
    ckpts = sorted((tmp_path / "run" / "checkpoints").iterdir())
    shutil.rmtree(ckpts[-1])  # as if killed while writing step 8's calibration row, before its checkpoint
    rows = straight.splitlines()
    calib.write_text(f"{rows[0]}\n{rows[1]}\n{rows[2][:40]}")
    run_rm(cfg, resume=True)
    assert calib.read_text() == straight


def test_cli_and_config_errors(tmp_path, tiny_path, capsys):
    assert main(["rm", "--help"]) == 0
    assert "data.format" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="held_out_fraction"):
        make_cfg(tmp_path, tiny_path, "data.held_out_fraction=1.5")
    with pytest.raises(ConfigError, match="lean_activations"):
        make_cfg(tmp_path, tiny_path, "model.lean_activations=true")


def test_rankings_and_margins_run_and_count_every_pair(tmp_path, tiny_path):
    ranks = tmp_path / "ranks.jsonl"
    rows = [{"prompt": f"q{i}:", "responses": [" yyy", " yyn", " nnn"], "ties": [0, 1, 1]} for i in range(12)]
    ranks.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = make_cfg(
        tmp_path,
        tiny_path,
        f"data.train_file={ranks}",
        "data.format=rankings",
        f"data.eval_file={ranks}",
        "train.steps=2",
        "train.center_coef=0.1",
    )
    result = run_rm(cfg)
    assert result.final_eval["eval/pairs"] == 12 * 2  # (0,1) and (0,2); the tied (1,2) is no pair
    assert all(math.isfinite(r["loss"]) for r in result.history if "loss" in r)
    pairs = tmp_path / "margins.jsonl"
    pairs.write_text(
        "".join(
            json.dumps({"prompt": "q:", "chosen": " y", "rejected": " n", "margin": 1.0}) + "\n"
            for _ in range(8)
        )
    )
    cfg = make_cfg(
        tmp_path,
        tiny_path,
        f"data.train_file={pairs}",
        f"data.eval_file={pairs}",
        "train.steps=1",
        "optim.lr=1e-9",
        f"run.output_dir={tmp_path / 'm'}",
    )
    result = run_rm(cfg)
    # lr ~0: the step-1 loss is BT with margin 1 at the initial scores: -log sigmoid(d0 - 1), d0 from step 0
    d0 = result.history[0]["eval/margin"]
    assert result.history[1]["loss"] == pytest.approx(math.log1p(math.exp(-(d0 - 1.0))), abs=1e-5)


def test_mean_pooling_and_frozen_layers_train_save_and_score_like_the_trainer(tmp_path, tiny_path):
    """head.pooling=mean and train.freeze_layers: the frozen weights stay as loaded, the readout is
    saved with the model, and the reward still reproduces the trainer's held-out scores."""
    from aha.models.scalar_head import load_scalar_model, pooling_of

    cfg = make_cfg(tmp_path, tiny_path, "head.pooling=mean", "train.freeze_layers=1", "train.steps=6")
    result = run_rm(cfg)
    start, end = load_scalar_model(tiny_path), load_scalar_model(str(result.final_dir))
    assert pooling_of(end) == "mean"
    torch.testing.assert_close(end.model.embed_tokens.weight, start.model.embed_tokens.weight, atol=0, rtol=0)
    torch.testing.assert_close(
        end.model.layers[0].mlp.up_proj.weight, start.model.layers[0].mlp.up_proj.weight, atol=0, rtol=0
    )
    assert not torch.equal(end.model.layers[1].mlp.up_proj.weight, start.model.layers[1].mlp.up_proj.weight)

    from aha.data.preferences import load_pairs, split_by_prompt

    _, held = split_by_prompt(load_pairs(tmp_path / "pairs.jsonl"), 0.25, seed=0)
    raw = RewardScorer(result.final_dir).raw(
        [r.prompt for r in held for _ in r.responses], [x for r in held for x in r.responses]
    )
    # the same model, text and batching rules as the trainer's last evaluation: float32 noise only (1e-6)
    torch.testing.assert_close(raw, result.eval_scores, atol=1e-6, rtol=0)


def test_each_subset_is_reported_separately(tmp_path, tiny_path):
    rows = synthetic_pairs(40, seed=2)
    for i, row in enumerate(rows):
        row["subset"] = "odd" if i % 2 else "even"
    pairs = tmp_path / "tagged.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = make_cfg(
        tmp_path, tiny_path, f"data.train_file={pairs}", f"data.eval_file={pairs}", "train.steps=2"
    )
    result = run_rm(cfg)
    final = result.final_eval
    assert final["eval/pairs/even"] == final["eval/pairs/odd"] == 20
    # each subset's accuracy is its own share of the pairs: the overall accuracy is their pair-weighted mean
    # (accuracies are float32 means of <= 40 values: exact to a few float32 ulps, 1e-6)
    both = (final["eval/accuracy/even"] * 20 + final["eval/accuracy/odd"] * 20) / 40
    assert final["eval/accuracy"] == pytest.approx(both, abs=1e-6)
    # by hand from the scores (ranking-major: chosen, rejected of ranking 0, then of ranking 1, ...)
    chosen, rejected = result.eval_scores[0::2], result.eval_scores[1::2]
    wins = (chosen > rejected).float() + 0.5 * (chosen == rejected).float()
    assert final["eval/accuracy/even"] == pytest.approx(float(wins[0::2].mean()), abs=1e-6)
    assert final["eval/accuracy/odd"] == pytest.approx(float(wins[1::2].mean()), abs=1e-6)


def test_head_and_freeze_config_errors(tmp_path, tiny_path):
    with pytest.raises(ConfigError, match="freeze_layers"):
        make_cfg(tmp_path, tiny_path, "train.freeze_layers=-2")
    with pytest.raises(ConfigError, match="head.pooling"):
        make_cfg(tmp_path, tiny_path, "head.pooling=max")
    with pytest.raises(ConfigError, match="train.freeze_layers: cannot freeze 3"):
        run_rm(make_cfg(tmp_path, tiny_path, "train.freeze_layers=3"))  # the tiny model has 2 blocks


def test_frozen_backbone_caches_features_and_trains_the_same(tmp_path, tiny_path, monkeypatch):
    """train.freeze_layers = every block: the pooled vectors are computed once and only the head runs
    each step. The tiny Llama has no dropout, so this must give the losses of the plain forward pass."""
    import aha.train.reward_model as rm

    overrides = ("head.pooling=mean", "train.freeze_layers=2", "train.steps=5", "optim.lr=3e-2")
    made = []
    real = rm.frozen_features
    monkeypatch.setattr(rm, "frozen_features", lambda *a: made.append(real(*a)) or made[-1])
    cached = run_rm(make_cfg(tmp_path, tiny_path, *overrides, f"run.output_dir={tmp_path / 'a'}"))
    assert made[0] is not None and made[0].shape[1] == 64  # one cached vector per training response
    monkeypatch.setattr(rm, "frozen_features", lambda *a: None)
    plain = run_rm(make_cfg(tmp_path, tiny_path, *overrides, f"run.output_dir={tmp_path / 'b'}"))
    # same weights, batches and ops; the cached vectors come from length-sorted eval batches, the plain
    # pass from training batches: padding changes only the float32 summation order (~1e-7 per score)
    for a, b in zip(cached.history[1:], plain.history[1:], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    assert cached.history[-1]["loss"] < cached.history[1]["loss"]  # the head does learn
    torch.testing.assert_close(cached.eval_scores, plain.eval_scores, atol=1e-5, rtol=0)
