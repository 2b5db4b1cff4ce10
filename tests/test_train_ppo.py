"""PPO on the built-in tiny model: the critic reads values where the scalar head does, resume is exact
with the critic, a critic starts from a reward model, a head on the policy's backbone leaves the policy
alone, bad settings are refused at start-up, and the critic's update in micro-batches is the whole
batch's."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers.rl_configs import tiny_rl_overrides
from helpers.tolerances import forward_atol
from safetensors.torch import load_file
from test_dist_ppo import KL_COEF, ppo_batch, ppo_critic
from test_dist_ppo import sgd as ppo_sgd
from test_dist_update import COMPLETION, GROUP, GROUPS

from aha.algos.policy_loss import LOSS_AGG_MODES
from aha.config import ConfigError, load_config
from aha.models.critic import build_critic, token_values
from aha.models.loading import load_model
from aha.models.scalar_head import sequence_scores
from aha.models.tiny import create_tiny_model
from aha.train.critic_update import ValueTargets, critic_update
from aha.train.nonfinite import NonFiniteGuard
from aha.train.policy_update import PolicyLossSettings, UpdateBatch, minibatch_loss
from aha.train.ppo import PPORunConfig, critic_values, ppo_targets, run_ppo
from aha.train.ppo_config import PPOAlgoConfig
from aha.train.precision import Precision
from aha.train.reward_model import RMRunConfig, run_rm

ROOT = Path(__file__).resolve().parents[1]
HELPERS = ROOT / "tests" / "helpers"
EDGE = ROOT / "tests" / "data" / "hh-rlhf" / "helpful-base-edge-cases.jsonl"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return create_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(autouse=True)
def _toy_rewards_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(HELPERS))


def _config(tiny_dir: Path, out: Path, *overrides: str) -> PPORunConfig:
    base = [
        *tiny_rl_overrides(tiny_dir, out, group_size=2, prompts_per_step=4, train_size=64, eval_size=8),
        "critic.lr=3e-3",
        "eval.every=0",
        "track.sample_every=0",
        "track.plot=false",
    ]
    return load_config(PPORunConfig, overrides=[*base, *overrides])


def test_values_are_the_scalar_heads_score_of_each_prefix(tiny_dir):
    """V_t (the state before completion token t) == sequence_scores of prompt + completion[:t]."""
    critic = build_critic(str(tiny_dir), "cpu")
    torch.manual_seed(0)
    ids = torch.randint(3, 40, (3, 9))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # left-padded prompts of 4 tokens, completions of 5 (right-padded)
    mask[1, 7:] = 0
    prompt_len, completion_len = 4, 5
    values = token_values(critic, ids, mask, completion_len)
    for t in range(completion_len):
        end = prompt_len + t
        real = mask[:, end].bool()  # a value is only read where completion token t is real
        prefix_scores = sequence_scores(critic, ids[real, :end], mask[real, :end])
        # same weights and tokens, another padding layout: float32 rounding of a few sums (~1e-6)
        torch.testing.assert_close(values[real, t], prefix_scores, rtol=1e-5, atol=1e-5)


def test_resume_with_the_critic_is_exact(tiny_dir, tmp_path):
    """4 steps in one go == 2 steps, stop, resume to 4: policy, critic and adaptive KL bit for bit."""
    extra = ["train.steps=4", "algo.kl_target=0.5", "algo.mu=2", "algo.minibatches=2"]
    run_ppo(_config(tiny_dir, tmp_path / "straight", *extra))
    split = _config(tiny_dir, tmp_path / "split", *extra)
    first = _config(tiny_dir, tmp_path / "split", *extra[1:], "train.steps=2")
    run_ppo(first)
    run_ppo(split, resume=True)
    for part in ("model.safetensors", "critic/model.safetensors"):
        a = load_file(tmp_path / "straight/checkpoints/step-00000004" / part)
        b = load_file(tmp_path / "split/checkpoints/step-00000004" / part)
        assert a.keys() == b.keys()
        for name in a:
            assert torch.equal(a[name], b[name]), (part, name)
    rows = [json.loads(line) for line in (tmp_path / "split/metrics.jsonl").read_text().splitlines()]
    straight = [json.loads(line) for line in (tmp_path / "straight/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]
    assert rows[-1]["kl_coef"] == straight[-1]["kl_coef"] != rows[1]["kl_coef"]  # it moved, then resumed
    for key in ("critic/value_loss", "critic/value_clip_frac", "critic/explained_variance", "returns/mean"):
        assert key in rows[-1], key


def test_critic_starts_from_a_reward_model(tiny_dir, tmp_path):
    rm = run_rm(
        load_config(
            RMRunConfig,
            overrides=[
                f"model.path={tiny_dir}",
                f"data.train_file={EDGE}",
                f"data.eval_file={EDGE}",
                "data.format=hh-rlhf",
                "train.steps=1",
                "optim.lr=1e-2",
                f"run.output_dir={tmp_path / 'rm'}",
                "run.progress=false",
            ],
        )
    )
    head = load_file(rm.final_dir / "model.safetensors")["score.weight"]
    critic = build_critic(str(rm.final_dir), "cpu")
    assert torch.equal(critic.score.weight.detach(), head)
    fresh = build_critic(str(tiny_dir), "cpu")
    assert not torch.equal(fresh.score.weight.detach(), head)  # the RM's head, not a new one
    cfg = _config(tiny_dir, tmp_path / "ppo", "train.steps=1", f"critic.path={rm.final_dir}")
    run_ppo(cfg)
    assert (tmp_path / "ppo/checkpoints/step-00000001/critic/model.safetensors").is_file()


def test_a_critic_with_another_vocabulary_is_refused(tiny_dir, tmp_path):
    other = tmp_path / "other"
    model = load_model(str(tiny_dir))
    model.resize_token_embeddings(model.config.vocab_size + 8)  # another tokenizer's vocabulary
    model.save_pretrained(other)
    with pytest.raises(ConfigError, match="critic.path=.*vocabulary"):
        run_ppo(_config(tiny_dir, tmp_path / "run", "train.steps=1", f"critic.path={other}"))


def test_a_head_on_the_policys_backbone_trains_the_head_only(tiny_dir, tmp_path):
    """With the actor frozen for the critic's warm-up, the value loss must not move the policy."""
    out = tmp_path / "run"
    cfg = _config(tiny_dir, out, "train.steps=2", "critic.shared_backbone=true", "critic.warmup_steps=1")
    cfg.train.steps = 1  # only the warm-up step (validation wants a step left for the policy)
    result = run_ppo(cfg)
    assert result.history[-1]["update/actor_frozen"] == 1.0
    before = load_file(tiny_dir / "model.safetensors")
    after = load_file(out / "checkpoints/step-00000001/model.safetensors")
    for name in before:
        assert torch.equal(before[name], after[name]), name
    critic = load_file(out / "checkpoints/step-00000001/critic/model.safetensors")
    fresh = build_critic(str(tiny_dir), "cpu")
    assert not torch.equal(critic["score.weight"], fresh.score.weight.detach())


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["algo.kl_target=0.1", "algo.kl_placement=loss"], "kl_placement=reward"),
        (["algo.lam=1.5"], "gamma and lam"),
        (["critic.shared_backbone=true", "critic.path=/x"], "shared_backbone"),
        (["critic.warmup_steps=5", "train.steps=5"], "critic.warmup_steps"),
        (["model.precision=fp16-mixed"], "fp16-mixed"),
        (["algo.value_clip=0"], "value_clip"),
        (["algo.minibatches=3"], "minibatches"),
        (["rollout.group_size=0"], "group_size"),
    ],
)
def test_bad_settings_are_refused_at_start_up(tiny_dir, tmp_path, overrides, match):
    with pytest.raises(ConfigError, match=match):
        _config(tiny_dir, tmp_path / "run", *overrides)


def test_entropy_bonus_is_in_the_loss_with_its_gradient(tiny_varied_model_dir):
    """entropy_coef adds -coef * token-mean entropy to the loss, and its gradient: the gradient of that
    term computed here from the full logits is the difference of the two gradients."""
    model = load_model(str(tiny_varied_model_dir))
    g = torch.Generator().manual_seed(0)
    prompts, completions = (
        torch.randint(3, 40, (4, 4), generator=g),
        torch.randint(3, 40, (4, 5), generator=g),
    )
    completion_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 0, 0, 0, 0]])
    batch = UpdateBatch(
        torch.cat([prompts, completions], 1),
        torch.cat([torch.ones_like(prompts), completion_mask], 1),
        completion_mask,
        torch.randn(4, 5, generator=g),  # per-token advantages, as PPO's
    )
    plain = PolicyLossSettings(0.2, 0.2, 0.0, "k3", "token-mean", 1.0)

    def loss_and_grads(settings):
        model.zero_grad(set_to_none=True)
        loss, metrics = minibatch_loss(model, batch, settings, with_entropy=True)
        loss.backward()
        return loss.item(), metrics, [p.grad.clone() for p in model.parameters()]

    l0, m0, g0 = loss_and_grads(plain)
    l1, _, g1 = loss_and_grads(replace(plain, entropy_coef=0.1))
    # one float32 mean over 13 entropies of ~3.6 nats: rounding ~1e-6
    assert l1 - l0 == pytest.approx(-0.1 * m0["entropy"], abs=1e-5)
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, 3:-1]
    logp = torch.log_softmax(logits.float(), -1)
    entropy = -(logp.exp() * logp).sum(-1)
    (-0.1 * entropy[completion_mask.bool()].mean()).backward()
    for a, b, p in zip(g0, g1, model.parameters(), strict=True):
        # float32 gradients of O(1e-2), summed in another order: ~1e-7 apart
        torch.testing.assert_close(b - a, p.grad, rtol=1e-4, atol=1e-6)
    assert any(p.grad.abs().max() > 1e-4 for p in model.parameters())  # the bonus has a gradient at all


def test_configs_ppo_arithmetic_runs(tiny_dir, tmp_path):
    """configs/ppo-arithmetic.yaml loads and runs two steps (KL in the loss here: the other placement)."""
    cfg = load_config(
        PPORunConfig,
        ROOT / "configs" / "ppo-arithmetic.yaml",
        [
            f"model.path={tiny_dir}",
            "train.steps=2",
            "train.prompts_per_step=2",
            "optim.warmup_steps=0",
            "eval.num_prompts=4",
            "algo.kl_placement=loss",
            "algo.kl_estimator=k3",
            f"run.output_dir={tmp_path / 'run'}",
            "run.progress=false",
        ],
    )
    result = run_ppo(cfg)
    last = result.history[-1]
    assert last["kl"] > 0 and "critic/value_loss" in last and "eval/accuracy" in last


@pytest.mark.parametrize("loss_agg", LOSS_AGG_MODES)
def test_critic_update_in_micro_batches_equals_the_whole_batch(tiny_varied_model_dir, loss_agg):
    """Micro-batches of one group add up to the whole minibatch's value-loss gradient (SGD: equal weights
    mean equal gradients), seq-mean-token-sum-norm included: it divides by the policy's constant, not
    by each micro-batch's rows x length."""
    algo = PPOAlgoConfig(loss_agg=loss_agg)
    runs = []
    for micro in (0, GROUP):
        critic = ppo_critic(tiny_varied_model_dir)
        start = {k: v.clone() for k, v in critic.state_dict().items()}
        batch, scores, noise = ppo_batch(tiny_varied_model_dir)
        values = critic_values(critic, batch, Precision("fp32"))
        _, returns, _ = ppo_targets(scores, values, batch, algo, KL_COEF)
        metrics = critic_update(
            critic,
            ppo_sgd(critic),
            batch,
            ValueTargets(values + noise, returns),
            clip=algo.value_clip,
            loss_agg=loss_agg,
            norm_constant=float(GROUPS * GROUP * COMPLETION),
            passes=1,
            minibatches=1,
            group_size=GROUP,
            grad_clip=1e9,
            generator=torch.Generator().manual_seed(0),
            precision=Precision("fp32"),
            guard=NonFiniteGuard("stop"),
            micro_batch_size=micro,
        )
        runs.append((critic.state_dict(), metrics))
    (whole, whole_metrics), (micro, micro_metrics) = runs
    step = max((whole[k] - start[k]).abs().max().item() for k in whole)
    assert step > 1e-3  # the step moved the weights: the comparison is not vacuous
    atol = forward_atol(load_model(str(tiny_varied_model_dir)).config, step)
    for k in whole:
        assert (micro[k] - whole[k]).abs().max().item() <= atol, k
    for k, v in whole_metrics.items():
        assert micro_metrics[k] == pytest.approx(v, rel=1e-5), k
