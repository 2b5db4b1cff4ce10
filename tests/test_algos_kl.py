from __future__ import annotations

import math

import pytest
import torch

from aha.algos.kl import KL_ESTIMATORS, kl_penalty

LOGP = torch.tensor([[-1.0, -2.0]])
REF = torch.tensor([[-1.5, -1.0]])
# log-ratio x = logp - ref = [0.5, -1.0]


def test_k1_by_hand():
    torch.testing.assert_close(kl_penalty(LOGP, REF, "k1"), torch.tensor([[0.5, -1.0]]))


def test_k2_by_hand():
    # 0.5 * x^2 = [0.5 * 0.25, 0.5 * 1] = [0.125, 0.5]
    torch.testing.assert_close(kl_penalty(LOGP, REF, "k2"), torch.tensor([[0.125, 0.5]]))


def test_k3_by_hand():
    # ref - logp = [-0.5, 1.0]: exp(-0.5) + 0.5 - 1 = 0.106531; exp(1) - 1 - 1 = 0.718282
    expected = torch.tensor([[math.exp(-0.5) + 0.5 - 1, math.e - 2]])
    torch.testing.assert_close(kl_penalty(LOGP, REF, "k3"), expected)


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_unbiased_estimators_average_to_exact_kl(estimator):
    # Expectation under pi over the whole vocabulary, computed exactly (no sampling):
    # sum_a pi(a) k(a) must equal KL(pi || ref) = sum_a pi(a) (log pi(a) - log ref(a)).
    g = torch.Generator().manual_seed(0)
    logp = torch.log_softmax(torch.randn(1, 7, generator=g, dtype=torch.float64), -1)
    ref = torch.log_softmax(torch.randn(1, 7, generator=g, dtype=torch.float64), -1)
    exact_kl = (logp.exp() * (logp - ref)).sum()
    expected_estimate = (logp.exp() * kl_penalty(logp, ref, estimator)).sum()
    torch.testing.assert_close(expected_estimate, exact_kl)
    assert exact_kl > 0


def test_k2_k3_nonnegative_and_zero_at_equality():
    g = torch.Generator().manual_seed(1)
    logp, ref = -torch.rand(4, 5, generator=g) * 5, -torch.rand(4, 5, generator=g) * 5
    for est in ("k2", "k3"):
        assert (kl_penalty(logp, ref, est) >= 0).all()
    for est in KL_ESTIMATORS:
        assert torch.equal(kl_penalty(logp, logp, est), torch.zeros(4, 5))


def test_k3_clamp_keeps_values_and_gradients_finite():
    # ref - logp = +1000 and -1000, clamped to +-20:
    #   +20: e^20 - 20 - 1 = 485165174.4;  -20: e^-20 + 20 - 1 = 19.000000002
    logp = torch.tensor([[-1000.0, 0.0]], requires_grad=True)
    ref = torch.tensor([[0.0, -1000.0]])
    kl = kl_penalty(logp, ref, "k3")
    torch.testing.assert_close(kl, torch.tensor([[math.exp(20) - 21, math.exp(-20) + 19]]))
    kl.sum().backward()
    assert torch.isfinite(logp.grad).all()


def test_k3_gradient_inside_clamp():
    # d/d logp [exp(ref - logp) - (ref - logp) - 1] = -exp(ref - logp) + 1 -> at ref - logp = 1: 1 - e
    logp = torch.tensor([[-2.0]], requires_grad=True)
    kl_penalty(logp, torch.tensor([[-1.0]]), "k3").sum().backward()
    assert logp.grad.item() == pytest.approx(1 - math.e)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="k1"):
        kl_penalty(LOGP, REF, "k4")
    with pytest.raises(ValueError, match="shape"):
        kl_penalty(LOGP, REF[:, :1], "k1")
