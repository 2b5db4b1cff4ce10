"""Truncated importance weights and the rollout/trainer mismatch metrics, against values worked by hand."""

from __future__ import annotations

import math

import pytest
import torch

from aha.algos.rollout_correction import rollout_mismatch_metrics, truncated_importance_weights

# Log-probs chosen so the ratios are round numbers: train - rollout = log 0.5, 0, log 1.5, log 3.
ROLLOUT = torch.tensor([[-1.0, -2.0, -0.5, -3.0]])
TRAIN = ROLLOUT + torch.tensor([[math.log(0.5), 0.0, math.log(1.5), math.log(3.0)]])


def test_weights_are_the_ratio_truncated_at_the_cap():
    weights = truncated_importance_weights(TRAIN, ROLLOUT, cap=2.0)
    # ratios 0.5, 1, 1.5, 3 -> the last one is truncated to C = 2; nothing below C changes.
    # float32 exp/log round-trips within a few ulps of 1: 1e-6 absolute.
    torch.testing.assert_close(weights, torch.tensor([[0.5, 1.0, 1.5, 2.0]]), atol=1e-6, rtol=0)


def test_weights_carry_no_gradient():
    train = TRAIN.clone().requires_grad_(True)
    weights = truncated_importance_weights(train, ROLLOUT)
    assert not weights.requires_grad


def test_a_huge_ratio_stays_finite_and_capped():
    weights = truncated_importance_weights(torch.tensor([[0.0]]), torch.tensor([[-1000.0]]), cap=3.0)
    assert weights.item() == 3.0


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="differ in shape"):
        truncated_importance_weights(TRAIN, ROLLOUT[:, :2])
    with pytest.raises(ValueError, match="cap must be > 0"):
        truncated_importance_weights(TRAIN, ROLLOUT, cap=0.0)


def test_mismatch_metrics_by_hand():
    # The last token is masked out: only ratios 0.5, 1, 1.5 count.
    mask = torch.tensor([[1, 1, 1, 0]])
    metrics = rollout_mismatch_metrics(TRAIN, ROLLOUT, mask, cap=2.0)
    logs = [math.log(0.5), 0.0, math.log(1.5)]
    # k3 of KL(rollout || train) per token: w - log w - 1 with w = train / rollout.
    k3 = [w - math.log(w) - 1 for w in (0.5, 1.0, 1.5)]
    assert metrics["abs_log_ratio_mean"] == pytest.approx(sum(abs(x) for x in logs) / 3, abs=1e-6)
    assert metrics["abs_log_ratio_max"] == pytest.approx(math.log(2.0), abs=1e-6)
    assert metrics["kl"] == pytest.approx(sum(k3) / 3, abs=1e-6)
    assert metrics["capped_frac"] == 0.0
    full = rollout_mismatch_metrics(TRAIN, ROLLOUT, torch.ones(1, 4), cap=2.0)
    assert full["capped_frac"] == pytest.approx(0.25)
    assert full["abs_log_ratio_max"] == pytest.approx(math.log(3.0), abs=1e-6)


def test_identical_policies_have_no_mismatch():
    metrics = rollout_mismatch_metrics(ROLLOUT, ROLLOUT, torch.ones(1, 4))
    assert metrics == {"abs_log_ratio_mean": 0.0, "abs_log_ratio_max": 0.0, "kl": 0.0, "capped_frac": 0.0}
