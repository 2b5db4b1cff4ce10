"""The `reward_model` reward: stored vs running vs no normalisation, prompt_field, clear errors."""

import json
import math

import pytest
import torch

from aha.models.reward_scorer import RewardScorer, RunningNorm, TextFormat, write_meta
from aha.models.scalar_head import load_scalar_model
from aha.models.tiny import TinyModelSpec, create_tiny_model
from aha.rewards.base import RewardConfigError, make_reward_specs


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    path = create_tiny_model(
        tmp_path_factory.mktemp("rm"), TinyModelSpec(hidden_size=32, num_layers=1, intermediate_size=64)
    )
    model = load_scalar_model(str(path))
    torch.manual_seed(0)
    torch.nn.init.normal_(model.score.weight, std=1.0)
    model.save_pretrained(path)
    write_meta(path, TextFormat("Q: {prompt}\nA:", 64), mean=0.5, std=2.0)
    return path


def reward(rm_dir, **options):
    (spec,) = make_reward_specs(
        [{"fn": "reward_model", "options": {"path": str(rm_dir), "device": "cpu", **options}}]
    )
    return spec.fn


PROMPTS, REPLIES = ["1+1", "2+2", "3+3"], [" 2", " 5", " six"]


def test_stored_statistics_and_template(rm_dir):
    scorer = RewardScorer(rm_dir)
    raw = scorer.raw(PROMPTS, REPLIES)
    assert raw.std() > 1e-3
    stored = reward(rm_dir)(PROMPTS, REPLIES)
    # (raw - 0.5) / 2.0 in float32: a few ulps of O(1) values
    torch.testing.assert_close(torch.tensor(stored), (raw - 0.5) / 2.0, atol=1e-6, rtol=0)
    assert reward(rm_dir, normalize="none")(PROMPTS, REPLIES) == raw.tolist()
    # the stored template is applied: scoring the bare text differs
    from aha.models.reward_scorer import score_texts

    bare = score_texts(scorer.model, scorer.tokenizer, PROMPTS, REPLIES, TextFormat("{prompt}", 64), 8, "cpu")
    assert not torch.allclose(bare, raw)


def test_running_normalisation_uses_all_scores_seen(rm_dir):
    fn = reward(rm_dir, normalize="running")
    raw = RewardScorer(rm_dir).raw(PROMPTS, REPLIES)
    first = torch.tensor(fn(PROMPTS, REPLIES))
    mean, std = raw.mean(), raw.std(unbiased=False)
    torch.testing.assert_close(first, (raw - mean) / std, atol=1e-5, rtol=0)
    second = torch.tensor(fn(PROMPTS[:1], REPLIES[:1]))  # stats now over 4 scores
    four = torch.cat([raw, raw[:1]])
    torch.testing.assert_close(second, (raw[:1] - four.mean()) / four.std(unbiased=False), atol=1e-5, rtol=0)


def test_running_normalisation_is_refused_under_several_processes(rm_dir, monkeypatch):
    """Each torchrun rank scores its own share of the batch: running statistics would differ by rank."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RewardConfigError, match="normalize=running gives each torchrun process its own"):
        reward(rm_dir, normalize="running")
    reward(rm_dir)  # stored: the one scale saved with the model, the same on every rank


def test_prompt_field_scores_that_column(rm_dir):
    by_field = reward(rm_dir, prompt_field="question")(["<rendered>"] * 3, REPLIES, question=PROMPTS)
    assert by_field == reward(rm_dir)(PROMPTS, REPLIES)
    with pytest.raises(RewardConfigError, match="prompt_field"):
        reward(rm_dir, prompt_field="nope")(PROMPTS, REPLIES)


def test_errors(tmp_path, rm_dir):
    with pytest.raises(RewardConfigError, match="normalize"):
        reward(rm_dir, normalize="zscore")
    with pytest.raises(RewardConfigError, match="reward_model.json"):
        reward(tmp_path)(PROMPTS, REPLIES)


def test_running_norm_matches_population_statistics():
    norm = RunningNorm()
    norm.update([1.0, 2.0])
    norm.update([6.0])
    assert norm.mean == pytest.approx(3.0) and norm.std == pytest.approx(math.sqrt(14 / 3))


def test_running_statistics_round_trip_through_a_checkpoint(rm_dir, tmp_path):
    """normalize=running keeps the statistics of every score seen: restored from its state_dict (saved
    as a checkpoint saves it, torch.save read back with weights_only=True), a fresh reward scores the
    next batch exactly as the one that saw the earlier batches; without it, differently."""
    seen = reward(rm_dir, normalize="running")
    seen(PROMPTS, REPLIES)
    torch.save(seen.state_dict(), tmp_path / "extra.pt")
    state = torch.load(tmp_path / "extra.pt", weights_only=True)
    assert state == json.loads(json.dumps(state)) and state["running"]["count"] == len(PROMPTS)
    restored, fresh = reward(rm_dir, normalize="running"), reward(rm_dir, normalize="running")
    restored.load_state_dict(state)
    expected = seen(PROMPTS[:2], REPLIES[:2])
    assert restored(PROMPTS[:2], REPLIES[:2]) == expected
    assert fresh(PROMPTS[:2], REPLIES[:2]) != expected
    assert restored.state_dict() == seen.state_dict()


def test_only_running_normalisation_keeps_state(rm_dir):
    assert reward(rm_dir).state_dict() == {} and reward(rm_dir, normalize="none").state_dict() == {}
    assert reward(rm_dir, normalize="running").state_dict() == {
        "running": {"count": 0, "mean": 0.0, "m2": 0.0}
    }
