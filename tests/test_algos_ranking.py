"""Ranking losses and calibration against values computed by hand (log(1 + e^-x) per pair)."""

import math

import pytest
import torch

from aha.algos.calibration import calibration_bins, expected_calibration_error, pairwise_accuracy
from aha.algos.ranking import bradley_terry_loss, centering_loss, kwise_ranking_loss

# float32 arithmetic on O(1) values: a few ulps (~1e-7 each) of error; 1e-6 leaves room and still
# catches any wrong pair or weight (those change the result in the first or second decimal).
TOL = 1e-6


def nll(d: float) -> float:
    """-log sigmoid(d), by hand."""
    return math.log1p(math.exp(-d))


def test_bradley_terry_by_hand():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 0.0])
    assert float(bradley_terry_loss(chosen, rejected)) == pytest.approx((nll(2) + nll(0)) / 2, abs=TOL)
    margin = torch.tensor([1.0, 0.0])
    assert float(bradley_terry_loss(chosen, rejected, margin)) == pytest.approx(
        (nll(1) + nll(0)) / 2, abs=TOL
    )


def test_bradley_terry_finite_in_half_precision_for_huge_gaps():
    # -log(sigmoid(d)) computed naively is log(0) = inf in fp16 for d = -30; logsigmoid in float32 is not
    chosen = torch.tensor([-30.0, 30.0], dtype=torch.float16)
    rejected = torch.zeros(2, dtype=torch.float16)
    loss = bradley_terry_loss(chosen, rejected)
    assert torch.isfinite(loss)
    assert float(loss) == pytest.approx((30 + nll(30)) / 2, abs=1e-4)  # nll(-30) = 30 + log1p(e^-30)


def test_kwise_each_ranking_weighs_one_example():
    scores = torch.tensor([[3.0, 1.0, 0.0], [0.0, 1.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])  # second ranking has 2 replies; 9.0 is padding
    three = (nll(2) + nll(3) + nll(1)) / 3  # the 3 pairs of the first ranking, averaged
    two = nll(-1)  # its single pair: the better reply scores lower
    assert float(kwise_ranking_loss(scores, mask)) == pytest.approx((three + two) / 2, abs=TOL)


def test_kwise_ties_form_no_pair():
    scores = torch.tensor([[1.0, 1.0, 0.0]])
    ties = torch.tensor([[0, 0, 1]])  # first two tied, both beat the third
    loss = kwise_ranking_loss(scores, torch.ones(1, 3), ties)
    assert float(loss) == pytest.approx(nll(1), abs=TOL)


def test_kwise_of_two_equals_bradley_terry():
    chosen, rejected = torch.tensor([0.3, -1.2]), torch.tensor([0.9, -2.0])
    k = kwise_ranking_loss(torch.stack([chosen, rejected], 1), torch.ones(2, 2))
    assert float(k) == pytest.approx(float(bradley_terry_loss(chosen, rejected)), abs=TOL)


def test_centering_is_mean_square_of_real_scores():
    assert float(centering_loss(torch.tensor([1.0, -3.0]))) == pytest.approx(5.0, abs=TOL)
    masked = centering_loss(torch.tensor([[1.0, -3.0, 100.0]]), torch.tensor([[1, 1, 0]]))
    assert float(masked) == pytest.approx(5.0, abs=TOL)


def test_accuracy_and_ece_by_hand():
    chosen, rejected = torch.tensor([2.0, 0.0, -1.0]), torch.zeros(3)
    assert pairwise_accuracy(chosen, rejected) == pytest.approx(0.5)  # win, tie (half), loss
    s2, s1 = 1 / (1 + math.exp(-2)), 1 / (1 + math.exp(1))
    bins = calibration_bins(chosen, rejected, n_bins=10)
    # claims (both orders): s2, .5, s1 observed 1; 1-s2, .5, 1-s1 observed 0 -> bins 1, 2, 5, 5, 7, 8
    assert [b["count"] for b in bins] == [1, 1, 2, 1, 1]
    assert bins[2]["observed"] == 0.5 and bins[2]["claimed"] == pytest.approx(0.5)
    # bin 5 holds .5 (observed 1) and .5 (observed 0): claim .5, rate .5, no error; each other bin has one
    # claim c: error 1 - c where observed 1 (s2, s1), c where observed 0 (1 - s2, 1 - s1)
    by_hand = (2 * (1 - s2) + 2 * (1 - s1)) / 6
    assert expected_calibration_error(bins) == pytest.approx(by_hand, abs=1e-9)


def test_perfectly_calibrated_bins_have_zero_ece():
    bins = [{"count": 4, "claimed": 0.75, "observed": 0.75}, {"count": 2, "claimed": 0.5, "observed": 0.5}]
    assert expected_calibration_error(bins) == 0.0
