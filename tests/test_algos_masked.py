from __future__ import annotations

import math

import pytest
import torch

from aha.algos.masked import (
    explained_variance,
    masked_mean,
    masked_sum,
    masked_summary,
    masked_var,
    masked_whiten,
)

X = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = torch.tensor([[1, 1, 0], [1, 0, 0]])


def test_masked_sum_by_hand():
    # real tokens: 1, 2 (row 0) and 4 (row 1)
    assert masked_sum(X, MASK).item() == 7.0  # 1 + 2 + 4
    assert masked_sum(X, MASK, dim=-1).tolist() == [3.0, 4.0]  # [1 + 2, 4]
    assert masked_sum(X, MASK, dim=0).tolist() == [5.0, 2.0, 0.0]  # [1 + 4, 2, nothing]


def test_masked_mean_by_hand():
    assert masked_mean(X, MASK).item() == pytest.approx(7.0 / 3.0)  # (1 + 2 + 4) / 3
    assert masked_mean(X, MASK, dim=-1).tolist() == [1.5, 4.0]  # [(1 + 2) / 2, 4 / 1]


@pytest.mark.parametrize("dtype", [torch.bool, torch.int64, torch.int32, torch.float32])
def test_mask_dtypes_agree(dtype):
    assert masked_mean(X, MASK.to(dtype)).item() == pytest.approx(7.0 / 3.0)


def test_padding_values_change_nothing():
    # inf / NaN in padding (e.g. log-probs of pad tokens) must not leak: inf * 0 would be NaN.
    noisy = X.clone()
    noisy[0, 2] = float("inf")
    noisy[1, 1] = float("nan")
    noisy[1, 2] = -1e30
    assert masked_sum(noisy, MASK).item() == 7.0
    assert masked_mean(noisy, MASK, dim=-1).tolist() == [1.5, 4.0]
    assert torch.equal(masked_whiten(noisy, MASK), masked_whiten(X, MASK))


def test_empty_mask_gives_zero_not_nan():
    empty_row = torch.tensor([[0, 0, 0], [1, 1, 0]])
    assert masked_mean(X, empty_row, dim=-1).tolist() == [0.0, 4.5]  # row 1: (4 + 5) / 2
    assert masked_mean(X, torch.zeros_like(MASK)).item() == 0.0
    assert masked_var(X, torch.zeros_like(MASK)).item() == 0.0


def test_masked_mean_gradient_only_on_real_tokens():
    x = X.clone().requires_grad_(True)
    masked_mean(x, MASK).backward()
    # d/dx of (x00 + x01 + x10) / 3
    torch.testing.assert_close(x.grad, torch.tensor([[1 / 3, 1 / 3, 0.0], [1 / 3, 0.0, 0.0]]))


def test_masked_whiten_by_hand():
    x = torch.tensor([[2.0, 4.0, 6.0, 99.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    # mean = 4, unbiased var = (4 + 0 + 4) / 2 = 4, std = 2 -> [-1, 0, 1]; padding -> 0
    out = masked_whiten(x, mask, eps=0.0)
    assert out.tolist() == [[-1.0, 0.0, 1.0, 0.0]]
    # shift_mean=False adds the mean back: [-1 + 4, 0 + 4, 1 + 4]
    assert masked_whiten(x, mask, shift_mean=False, eps=0.0).tolist() == [[3.0, 4.0, 5.0, 0.0]]


def test_masked_whiten_matches_reference_on_selected_values():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 9, generator=g)
    mask = torch.rand(4, 9, generator=g) > 0.4
    real = x[mask]
    expected = (real - real.mean()) / torch.sqrt(real.var(unbiased=True) + 1e-8)
    out = masked_whiten(x, mask)
    torch.testing.assert_close(out[mask], expected)
    assert torch.all(out[~mask] == 0)


def test_masked_var_single_element_is_zero():
    # Bessel's correction with one element would divide by 0: defined as 0 instead.
    v = masked_var(torch.tensor([3.0, 5.0]), torch.tensor([1, 0]))
    assert v.item() == 0.0 and not math.isnan(v.item())


def test_bad_mask_shape_raises():
    with pytest.raises(ValueError, match="does not broadcast"):
        masked_mean(X, torch.ones(3, 2))


def test_explained_variance_by_hand():
    # real tokens: returns [1, 2, 3, 4] (var 5/3), padding holds garbage.
    returns = torch.tensor([[1.0, 2.0, 99.0], [3.0, 4.0, -99.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    # perfect critic: residuals 0 -> 1
    assert explained_variance(returns, returns, mask).item() == 1.0
    # constant critic V = 2.5: residuals [-1.5, -0.5, 0.5, 1.5], var = 5/3 -> 1 - 1 = 0
    assert explained_variance(torch.full_like(returns, 2.5), returns, mask).item() == pytest.approx(0.0)
    # V = [1, 1, 3, 3]: residuals [0, 1, 0, 1], mean 0.5, var (4 * 0.25) / 3 = 1/3 -> 1 - (1/3) / (5/3) = 0.8
    values = torch.tensor([[1.0, 1.0, 0.0], [3.0, 3.0, 0.0]])
    assert explained_variance(values, returns, mask).item() == pytest.approx(0.8)
    # constant returns: undefined -> NaN
    assert torch.isnan(explained_variance(values, torch.ones(2, 3), mask))


def test_masked_summary_by_hand():
    # real values [1, 2, 3, 6]: mean 3, unbiased var ((4 + 1 + 0 + 9) / 3) = 14/3, min 1, max 6
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 6.0, -100.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    s = masked_summary(x, mask)
    assert s["mean"].item() == pytest.approx(3.0)
    assert s["std"].item() == pytest.approx(math.sqrt(14 / 3))
    assert (s["min"].item(), s["max"].item()) == (1.0, 6.0)
    assert all(v.item() == 0.0 for v in masked_summary(x, torch.zeros_like(mask)).values())
