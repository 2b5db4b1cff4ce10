"""Two CPU processes (gloo) give the one-process PPO update: on a global batch split across 2 ranks by
whole groups, with the policy and the critic each wrapped by DDP or FSDP2, the critic's values, the
targets (KL-shaped rewards, GAE, whitened advantages) with their logged statistics, and one policy
update and one critic update leave the same policy AND critic weights and log the same numbers as one
process on the whole batch.

The batch makes every cross-rank statistic matter: the ranks hold 7 and 21 completion tokens, so
whitening each rank's advantages by its own mean and variance, or weighting each rank's value loss
equally, gives other numbers (checked below for the whitening). Old log-probs and old values sit away
from the current ones so that the policy's ratio and the value clip bind. SGD, so equal weights mean
equal gradients; the tolerance is `forward_atol` of the step's size, as in tests/test_dist_update.py
(the ranks only sum the same float32 terms in another order).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers.dist_workers import ppo_worker, spawn_workers
from helpers.tolerances import forward_atol
from test_dist_update import COMPLETION, GROUP, GROUPS, make_batch

from aha.algos.masked import masked_whiten
from aha.models.critic import build_critic
from aha.models.loading import load_model
from aha.train.critic_update import ValueTargets, critic_update
from aha.train.nonfinite import NonFiniteGuard
from aha.train.policy_update import PolicyLossSettings, UpdateBatch, policy_update
from aha.train.ppo import critic_values, ppo_targets
from aha.train.ppo_config import PPOAlgoConfig
from aha.train.precision import Precision

LR = 0.5
KL_COEF = 0.1
STRATEGIES = ["ddp", "fsdp2"]


def _settings(loss_agg: str, beta: float, norm_constant: float) -> PolicyLossSettings:
    return PolicyLossSettings(
        clip_low=0.2,
        clip_high=0.28,
        beta=beta,
        kl_estimator="k1",
        loss_agg=loss_agg,
        temperature=1.0,
        norm_constant=norm_constant,
    )


# name -> (algo section, micro-batch size); token-mean also accumulates over micro-batches
CASES = {
    "token-mean": (PPOAlgoConfig(loss_agg="token-mean", kl_placement="reward"), GROUP),
    "seq-mean-token-mean": (PPOAlgoConfig(loss_agg="seq-mean-token-mean", kl_placement="loss"), 0),
    "seq-mean-token-sum-norm": (PPOAlgoConfig(loss_agg="seq-mean-token-sum-norm", lam=1.0), 0),
}


def ppo_batch(model_dir) -> tuple[UpdateBatch, torch.Tensor, torch.Tensor]:
    """tests/test_dist_update.py's batch (unequal token counts per rank, old and reference log-probs
    away from the current ones), each completion's score, and the noise that moves the old values
    away from the current ones (the same on every rank: seeded)."""
    batch = make_batch(load_model(str(model_dir)))
    g = torch.Generator().manual_seed(4)
    scores = torch.rand(batch.input_ids.shape[0], generator=g)
    return batch, scores, 0.3 * torch.randn(batch.completion_mask.shape, generator=g)


def ppo_critic(model_dir):
    torch.manual_seed(0)  # the fresh value head: the same draw in every process
    return build_critic(str(model_dir), "cpu")


def sgd(model) -> torch.optim.SGD:
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR)


def ppo_update(policy, critic, batch: UpdateBatch, scores, noise, algo: PPOAlgoConfig, micro: int):
    """What one PPO step does after sampling, on this process's share of the batch: the critic's values,
    the targets and their metrics, then one policy and one critic update (SGD, one pass)."""
    fp32 = Precision("fp32")
    norm_constant = float(GROUPS * GROUP * COMPLETION)  # the global batch's, on every rank (as PPO's)
    values = critic_values(critic, batch, fp32)
    batch.advantages, returns, metrics = ppo_targets(scores, values, batch, algo, KL_COEF)
    beta = KL_COEF if algo.kl_placement == "loss" else 0.0
    common = dict(passes=1, minibatches=1, group_size=GROUP, grad_clip=1e9, micro_batch_size=micro)
    policy_metrics = policy_update(
        policy,
        sgd(policy),
        batch,
        _settings(algo.loss_agg, beta, norm_constant),
        generator=torch.Generator().manual_seed(0),
        precision=fp32,
        **common,
    )
    critic_metrics = critic_update(
        critic,
        sgd(critic),
        batch,
        ValueTargets(values + noise, returns),  # old values away from the current: the clip binds
        clip=algo.value_clip,
        loss_agg=algo.loss_agg,
        norm_constant=norm_constant,
        generator=torch.Generator().manual_seed(1),
        precision=fp32,
        guard=NonFiniteGuard("stop"),
        **common,
    )
    return {**metrics, **policy_metrics, **critic_metrics}, batch.advantages


@pytest.fixture(scope="module")
def two_ranks(tiny_varied_model_dir, tmp_path_factory):
    """What 2 gloo processes leave, for each strategy and case: both models' weights and the metrics."""
    out = tmp_path_factory.mktemp("ppo") / "results.pt"
    spawn_workers(ppo_worker, 2, str(tiny_varied_model_dir), STRATEGIES, list(CASES), str(out))
    return torch.load(out, weights_only=True)


def _assert_same_weights(config, base: dict, one: dict, two: dict, what: tuple) -> None:
    step = max((one[k] - base[k]).abs().max().item() for k in one)
    assert step > 1e-3, what  # the update moved the weights: the comparison is not vacuous
    atol = forward_atol(config, step)
    assert one.keys() == two.keys()
    for k in one:
        assert (two[k] - one[k]).abs().max().item() <= atol, (*what, k)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("name", list(CASES))
def test_ppo_update_on_two_ranks_equals_one_process(tiny_varied_model_dir, two_ranks, strategy, name):
    algo, micro = CASES[name]
    policy, critic = load_model(str(tiny_varied_model_dir)), ppo_critic(tiny_varied_model_dir)
    starts = [{k: v.clone() for k, v in m.state_dict().items()} for m in (policy, critic)]
    batch, scores, noise = ppo_batch(tiny_varied_model_dir)
    unwhitened = dataclasses.replace(algo, whiten_advantages=False)
    raw, _, _ = ppo_targets(
        scores, critic_values(critic, batch, Precision("fp32")), batch, unwhitened, KL_COEF
    )
    metrics, advantages = ppo_update(policy, critic, batch, scores, noise, algo, micro)
    two = two_ranks[strategy][name]
    for model, start, which in zip((policy, critic), starts, ("policy", "critic"), strict=True):
        _assert_same_weights(model.config, start, model.state_dict(), two[which], (strategy, name, which))
    assert metrics["clip_frac"] > 0 and metrics["critic/value_clip_frac"] > 0  # both clips bind
    assert metrics["kl_per_completion"] != 0 and metrics["advantages/std"] > 0
    assert two["metrics"].keys() == metrics.keys()
    for k, v in metrics.items():  # the whole batch's numbers on every rank, not rank 0's
        assert two["metrics"][k] == pytest.approx(v, rel=1e-5, abs=1e-6), (strategy, name, k)
    # rank 0 whitening its own share alone would have trained on other advantages
    half = batch.input_ids.shape[0] // 2
    alone = masked_whiten(raw[:half], batch.completion_mask[:half])
    assert (alone - advantages[:half]).abs().max() > 0.1
