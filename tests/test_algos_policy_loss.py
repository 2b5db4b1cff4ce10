from __future__ import annotations

import math

import pytest
import torch

from aha.algos.policy_loss import (
    LOSS_AGG_MODES,
    aggregate_loss,
    clipped_surrogate,
    entropy_bonus,
    micro_batch_weight,
    value_loss,
)


def surrogate_one(ratio: float, adv: float, clip_low: float = 0.2, clip_high: float = 0.2):
    """Loss, stats and d loss / d logprob for one token with the given ratio (old logprob 0)."""
    logprobs = torch.tensor([[math.log(ratio)]], dtype=torch.float64, requires_grad=True)
    loss, stats = clipped_surrogate(
        logprobs,
        torch.zeros(1, 1, dtype=torch.float64),
        torch.tensor([adv]),
        torch.ones(1, 1),
        clip_low,
        clip_high,
    )
    loss.sum().backward()
    return loss.item(), {k: v.item() for k, v in stats.items()}, logprobs.grad.item()


# (ratio, A, expected loss = -min(ratio * A, clip(ratio, 0.8, 1.2) * A), clipped branch active?)
CASES = [
    (1.1, 1.0, -1.1, False),  # inside the band
    (1.5, 1.0, -1.2, True),  # A > 0 above 1 + eps: -min(1.5, 1.2) = -1.2, clip_frac_high
    (0.5, 1.0, -0.5, False),  # A > 0 below 1 - eps: -min(0.5, 0.8) = -0.5, unclipped (gradient flows)
    (0.5, -1.0, 0.8, True),  # A < 0 below 1 - eps: -min(-0.5, -0.8) = 0.8, clip_frac_low
    (1.5, -1.0, 1.5, False),  # A < 0 above 1 + eps: -min(-1.5, -1.2) = 1.5, unclipped
    (0.9, -2.0, 1.8, False),  # inside: -(0.9 * -2)
]


@pytest.mark.parametrize(("ratio", "adv", "expected", "clipped"), CASES)
def test_clip_cases_by_hand(ratio, adv, expected, clipped):
    loss, stats, grad = surrogate_one(ratio, adv)
    assert loss == pytest.approx(expected)
    assert stats["clip_frac"] == float(clipped)
    assert stats["clip_frac_high"] == float(clipped and adv > 0)
    assert stats["clip_frac_low"] == float(clipped and adv < 0)
    # d(-A * exp(lp)) / d lp = -A * ratio when unclipped; 0 when the constant clipped branch is active
    assert grad == pytest.approx(0.0 if clipped else -adv * ratio)


def exact_ratio_and_logprob(value: float) -> tuple[float, torch.Tensor]:
    """A logprob whose exp() (as computed in float32) is known exactly, so boundaries can be hit exactly."""
    lp = torch.tensor([[math.log(value)]])
    return torch.exp(lp).item(), lp


@pytest.mark.parametrize("adv", [1.0, -1.0])
def test_ratio_exactly_at_and_around_the_boundary(adv):
    zero, mask = torch.zeros(1, 1), torch.ones(1, 1)
    a = torch.tensor([adv])
    if adv > 0:
        r, lp = exact_ratio_and_logprob(1.2)
        at_eps = r - 1.0  # 1 + clip_high == ratio exactly
        kwargs = {"at": {"clip_high": at_eps}, "inside": {"clip_high": at_eps + 1e-3}}
        kwargs["outside"] = {"clip_high": at_eps - 1e-3}
    else:
        r, lp = exact_ratio_and_logprob(0.8)
        at_eps = 1.0 - r  # 1 - clip_low == ratio exactly
        kwargs = {"at": {"clip_low": at_eps}, "inside": {"clip_low": at_eps + 1e-3}}
        kwargs["outside"] = {"clip_low": at_eps - 1e-3}
    for where in ("at", "inside"):
        loss, stats = clipped_surrogate(lp, zero, a, mask, **kwargs[where])
        assert loss.item() == pytest.approx(-adv * r, abs=1e-7), where  # both branches equal -> -A * ratio
        assert stats["clip_frac"].item() == 0.0, where  # strict inequality: the boundary is not clipped
    loss, stats = clipped_surrogate(lp, zero, a, mask, **kwargs["outside"])
    bound = 1 + kwargs["outside"]["clip_high"] if adv > 0 else 1 - kwargs["outside"]["clip_low"]
    # A > 0: -min(r, r - 1e-3) = -(r - 1e-3); A < 0: -min(-r, -(r + 1e-3)) = r + 1e-3; both -A * bound
    assert loss.item() == pytest.approx(-adv * bound, abs=1e-6)
    assert stats["clip_frac"].item() == 1.0


def test_asymmetric_clip_higher():
    # DAPO clip-higher: clip_low 0.2, clip_high 0.28.
    # ratio 1.25, A = +1: inside [0.8, 1.28] -> -1.25, not clipped (it would be with clip_high 0.2)
    loss, stats, _ = surrogate_one(1.25, 1.0, clip_low=0.2, clip_high=0.28)
    assert loss == pytest.approx(-1.25) and stats["clip_frac"] == 0.0
    loss, stats, _ = surrogate_one(1.25, 1.0, clip_low=0.2, clip_high=0.2)
    assert loss == pytest.approx(-1.2) and stats["clip_frac_high"] == 1.0
    # ratio 1.3, A = +1: above 1.28 -> -1.28
    loss, stats, _ = surrogate_one(1.3, 1.0, clip_low=0.2, clip_high=0.28)
    assert loss == pytest.approx(-1.28) and stats["clip_frac_high"] == 1.0
    # ratio 0.75, A = -1: below 0.8 -> -min(-0.75, -0.8) = 0.8, the low side still uses 0.2
    loss, stats, _ = surrogate_one(0.75, -1.0, clip_low=0.2, clip_high=0.28)
    assert loss == pytest.approx(0.8) and stats["clip_frac_low"] == 1.0


def test_batch_stats_and_padding():
    # row 0: ratios [1.5, 1.0, pad], A = +1 -> losses [-1.2, -1.0], one clipped high
    # row 1: ratios [0.5, 1.1, 1.0], A = -1 -> losses [0.8, 1.1, 1.0], one clipped low
    # 5 real tokens: clip_frac_high 1/5, clip_frac_low 1/5, clip_frac 2/5
    # ratio_mean = (1.5 + 1 + 0.5 + 1.1 + 1) / 5 = 1.02, ratio_max = 1.5 (the pad's ratio e^20 ignored)
    logprobs = torch.log(torch.tensor([[1.5, 1.0, 1.0], [0.5, 1.1, 1.0]]))
    logprobs[0, 2] = 50.0  # garbage in the padding
    old = torch.zeros(2, 3)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    loss, stats = clipped_surrogate(logprobs, old, torch.tensor([1.0, -1.0]), mask)
    torch.testing.assert_close(loss, torch.tensor([[-1.2, -1.0, 0.0], [0.8, 1.1, 1.0]]))
    assert stats["clip_frac_high"].item() == pytest.approx(0.2)
    assert stats["clip_frac_low"].item() == pytest.approx(0.2)
    assert stats["clip_frac"].item() == pytest.approx(0.4)
    assert stats["ratio_mean"].item() == pytest.approx(1.02)
    assert stats["ratio_max"].item() == pytest.approx(1.5)
    assert all(v.dim() == 0 and not v.requires_grad for v in stats.values())


def test_per_token_advantages_equal_broadcast():
    g = torch.Generator().manual_seed(0)
    logprobs, old = -torch.rand(3, 4, generator=g), -torch.rand(3, 4, generator=g)
    adv = torch.randn(3, generator=g)
    mask = torch.ones(3, 4)
    a, _ = clipped_surrogate(logprobs, old, adv, mask)
    b, _ = clipped_surrogate(logprobs, old, adv[:, None].expand(3, 4), mask)
    torch.testing.assert_close(a, b)


def test_padding_gets_no_gradient_and_no_nan():
    logprobs = torch.tensor([[-1.0, 1e4]], requires_grad=True)  # pad holds an absurd value
    loss, _ = clipped_surrogate(
        logprobs, torch.tensor([[-1.0, -1e4]]), torch.tensor([1.0]), torch.tensor([[1, 0]])
    )
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(logprobs.grad).all()
    assert logprobs.grad[0, 1].item() == 0.0


def test_surrogate_bad_shapes_raise():
    with pytest.raises(ValueError, match=r"\[N, T\]"):
        clipped_surrogate(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2), torch.ones(2, 3))
    with pytest.raises(ValueError, match="advantages"):
        clipped_surrogate(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3), torch.ones(2, 3))


# ---- aggregation ----------------------------------------------------------------------------------

# ragged batch: row 0 has 4 real tokens [1, 2, 3, 4], row 1 has 2 [5, 6] then padding (100s)
PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 100.0, 100.0]])
RAGGED_MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])


def test_aggregation_modes_by_hand():
    # seq-mean-token-mean: mean(2.5, 5.5) = 4.0
    assert aggregate_loss(PER_TOKEN, RAGGED_MASK, "seq-mean-token-mean").item() == pytest.approx(4.0)
    # token-mean: (1 + 2 + 3 + 4 + 5 + 6) / 6 = 3.5
    assert aggregate_loss(PER_TOKEN, RAGGED_MASK, "token-mean").item() == pytest.approx(3.5)
    # seq-mean-token-sum-norm: 21 / (N * T) = 21 / 8 = 2.625; with norm_constant 10: 2.1
    assert aggregate_loss(PER_TOKEN, RAGGED_MASK, "seq-mean-token-sum-norm").item() == pytest.approx(2.625)
    assert aggregate_loss(PER_TOKEN, RAGGED_MASK, "seq-mean-token-sum-norm", 10).item() == pytest.approx(2.1)


def test_aggregation_token_weights():
    # gradients show how each mode weighs tokens
    x = PER_TOKEN.clone().requires_grad_(True)
    aggregate_loss(x, RAGGED_MASK, "seq-mean-token-mean").backward()
    # row 0 tokens: 1/2 * 1/4 = 0.125, row 1 tokens: 1/2 * 1/2 = 0.25
    torch.testing.assert_close(x.grad, torch.tensor([[0.125] * 4, [0.25, 0.25, 0.0, 0.0]]))
    x.grad = None
    aggregate_loss(x, RAGGED_MASK, "token-mean").backward()
    torch.testing.assert_close(x.grad, torch.tensor([[1 / 6] * 4, [1 / 6, 1 / 6, 0.0, 0.0]]))


def test_aggregation_with_an_empty_sequence():
    per_token = torch.cat([PER_TOKEN, torch.full((1, 4), 7.0)])
    mask = torch.cat([RAGGED_MASK, torch.zeros(1, 4, dtype=torch.long)])
    # the empty row is left out of the sequence mean: still mean(2.5, 5.5) = 4.0
    assert aggregate_loss(per_token, mask, "seq-mean-token-mean").item() == pytest.approx(4.0)
    assert aggregate_loss(per_token, mask, "token-mean").item() == pytest.approx(3.5)
    # the constant still counts the row: 21 / (3 * 4) = 1.75
    assert aggregate_loss(per_token, mask, "seq-mean-token-sum-norm").item() == pytest.approx(1.75)
    for mode in LOSS_AGG_MODES:
        assert aggregate_loss(per_token, torch.zeros_like(mask), mode).item() == 0.0


def test_aggregation_unknown_mode():
    with pytest.raises(ValueError, match="seq-mean-token-sum-norm"):
        aggregate_loss(PER_TOKEN, RAGGED_MASK, "sum")


# ---- value loss -----------------------------------------------------------------------------------


def test_micro_batch_weights_by_hand():
    full = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [0, 0, 0]])
    first, second = full[:2], full[2:]
    # 6 real tokens: 4 in the first two rows; 3 rows with tokens: 2 of them in the first two rows.
    assert micro_batch_weight(first, full, "token-mean") == pytest.approx(4 / 6)
    assert micro_batch_weight(second, full, "token-mean") == pytest.approx(2 / 6)
    assert micro_batch_weight(first, full, "seq-mean-token-mean") == pytest.approx(2 / 3)
    assert micro_batch_weight(second, full, "seq-mean-token-mean") == pytest.approx(1 / 3)
    assert micro_batch_weight(first, full, "seq-mean-token-sum-norm") == 1.0


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_weighted_micro_batch_losses_add_up_to_the_full_loss(mode):
    g = torch.Generator().manual_seed(0)
    per_token = torch.randn(7, 5, generator=g)
    lengths = torch.tensor([5, 1, 3, 0, 2, 5, 4])
    mask = (torch.arange(5)[None] < lengths[:, None]).long()
    norm = 12.0
    full = aggregate_loss(per_token, mask, mode, norm)
    parts = [(0, 3), (3, 4), (4, 7)]  # uneven, one part holding only an empty sequence
    total = sum(
        micro_batch_weight(mask[a:b], mask, mode) * aggregate_loss(per_token[a:b], mask[a:b], mode, norm)
        for a, b in parts
    )
    assert float(total) == pytest.approx(float(full), rel=1e-6)


def test_value_loss_by_hand():
    # token 0: V=1, Vold=0, R=2: unclipped (1-2)^2 = 1; clipped V = 0 + clamp(1, +-0.5) = 0.5 -> 2.25
    #          max = 2.25 (clip active)
    # token 1: V=2, Vold=2, R=0: both (2-0)^2 = 4 (not active)
    # token 2: padding with garbage
    # loss = 0.5 * mean(2.25, 4) = 1.5625
    values = torch.tensor([[1.0, 2.0, 50.0]], requires_grad=True)
    old, returns = torch.tensor([[0.0, 2.0, -50.0]]), torch.tensor([[2.0, 0.0, 9.0]])
    mask = torch.tensor([[1, 1, 0]])
    loss, stats = value_loss(values, old, returns, mask, clip=0.5)
    assert loss.item() == pytest.approx(1.5625)
    assert stats["clip_frac"].item() == pytest.approx(0.5)
    assert stats["values_mean"].item() == pytest.approx(1.5)
    assert stats["returns_mean"].item() == pytest.approx(1.0)
    assert stats["mse"].item() == pytest.approx(2.5)  # mean(1, 4)
    loss.backward()
    # token 0: clipped branch is constant in V -> 0; token 1: 0.5 * 2(V-R) / 2 = (2 - 0) / 2 = 1
    torch.testing.assert_close(values.grad, torch.tensor([[0.0, 1.0, 0.0]]))
    # no clipping: 0.5 * mean(1, 4) = 1.25
    loss, stats = value_loss(values, old, returns, mask, clip=None)
    assert loss.item() == pytest.approx(1.25) and stats["clip_frac"].item() == 0.0


# GSPO by hand (old log-probs 0, so log-ratio = logprobs; column 2 is padding holding NaN):
# row 0: log-ratios [ln 2, 0] -> s0 = exp(ln 2 / 2) = sqrt(2) = 1.41421 > 1.2, A0 = +1: the clipped
#        branch wins on both tokens, loss -1.2 per token, gradient 0.
# row 1: log-ratios [0.1, -0.1] -> s1 = exp(0) = 1, A1 = -2: loss -(-2) * 1 = 2 per token, and
#        d loss / d logprob_t = -A1 * s1 = 2 (GSPO-token: d ratio_t / d logprob_t = s_i).
# The token ratio instead gives row 1 [2 e^0.1, 2 e^-0.1] = [2.21034, 1.80967], row 0 [-1.2, -1].
GSPO_LOGPROBS = [[math.log(2.0), 0.0, float("nan")], [0.1, -0.1, float("nan")]]
GSPO_MASK = [[1, 1, 0], [1, 1, 0]]


def _gspo(importance_ratio: str):
    logprobs = torch.tensor(GSPO_LOGPROBS, dtype=torch.float64, requires_grad=True)
    per_token, stats = clipped_surrogate(
        logprobs,
        torch.zeros(2, 3, dtype=torch.float64),
        torch.tensor([1.0, -2.0], dtype=torch.float64),
        torch.tensor(GSPO_MASK),
        importance_ratio=importance_ratio,
    )
    per_token.sum().backward()
    return per_token.detach(), stats, logprobs.grad


def test_sequence_ratio_by_hand():
    per_token, stats, grad = _gspo("sequence")
    torch.testing.assert_close(
        per_token, torch.tensor([[-1.2, -1.2, 0.0], [2.0, 2.0, 0.0]], dtype=torch.float64)
    )
    torch.testing.assert_close(grad, torch.tensor([[0.0, 0.0, 0.0], [2.0, 2.0, 0.0]], dtype=torch.float64))
    # clip_frac_high: 2 of the 4 real tokens (row 0); ratio_mean (2 sqrt 2 + 2) / 4 = 1.20711
    assert stats["clip_frac_high"].item() == pytest.approx(0.5)
    assert stats["clip_frac_low"].item() == 0.0
    assert stats["ratio_mean"].item() == pytest.approx((2 * math.sqrt(2) + 2) / 4)
    assert stats["ratio_max"].item() == pytest.approx(math.sqrt(2))
    # seq-mean-token-mean (GSPO's aggregation): mean(-1.2, 2) = 0.4
    assert aggregate_loss(per_token, torch.tensor(GSPO_MASK), "seq-mean-token-mean").item() == pytest.approx(
        0.4
    )


def test_token_ratio_differs_on_the_same_input():
    per_token, _, _ = _gspo("token")
    torch.testing.assert_close(
        per_token,
        torch.tensor([[-1.2, -1.0, 0.0], [2 * math.exp(0.1), 2 * math.exp(-0.1), 0.0]], dtype=torch.float64),
    )


def test_sequence_ratio_equals_token_ratio_on_policy():
    # old == current: both ratios are 1 everywhere and d ratio / d logprob = 1, so loss and gradient agree.
    g = torch.Generator().manual_seed(3)
    base = torch.randn(4, 6, generator=g, dtype=torch.float64)
    adv = torch.randn(4, generator=g, dtype=torch.float64)
    mask = (torch.arange(6)[None] < torch.tensor([[6], [3], [1], [5]])).long()
    out = {}
    for mode in ("token", "sequence"):
        lp = base.clone().requires_grad_(True)
        per_token, _ = clipped_surrogate(lp, base, adv, mask, importance_ratio=mode)
        aggregate_loss(per_token, mask, "seq-mean-token-mean").backward()
        out[mode] = (per_token.detach(), lp.grad)
    torch.testing.assert_close(out["token"][0], out["sequence"][0])
    torch.testing.assert_close(out["token"][1], out["sequence"][1])


def test_unknown_importance_ratio_raises():
    with pytest.raises(ValueError, match="importance_ratio"):
        clipped_surrogate(
            torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1), torch.ones(1, 2), importance_ratio="seq"
        )


def test_value_loss_aggregation_and_checks():
    # seq-mean-token-mean: row 0 per-token [2.25, 4] (test above) -> 3.125; row 1 one token V=0, R=1,
    # Vold=0 -> (0-1)^2 = 1 both ways -> 1. loss = 0.5 * mean(3.125, 1) = 1.03125.
    # token-mean instead: 0.5 * (2.25 + 4 + 1) / 3 = 1.208333
    values = torch.tensor([[1.0, 2.0], [0.0, 7.0]])
    old, returns = torch.tensor([[0.0, 2.0], [0.0, 0.0]]), torch.tensor([[2.0, 0.0], [1.0, 0.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    loss, _ = value_loss(values, old, returns, mask, clip=0.5, loss_agg="seq-mean-token-mean")
    assert loss.item() == pytest.approx(1.03125)
    loss, _ = value_loss(values, old, returns, mask, clip=0.5)
    assert loss.item() == pytest.approx(7.25 / 6)
    with pytest.raises(ValueError, match=r"\[N, T\]"):
        value_loss(values, old[:, :1], returns, mask, clip=0.5)
    with pytest.raises(ValueError, match="clip"):
        value_loss(values, old, returns, mask, clip=0.0)


def test_entropy_bonus_by_hand():
    # token-mean of entropies over real tokens: (1 + 2 + 3) / 3 = 2 -> bonus term -0.01 * 2 = -0.02;
    # gradient -0.01 / 3 per real token, 0 on the padding (which holds NaN).
    entropy = torch.tensor([[1.0, 2.0], [3.0, float("nan")]], requires_grad=True)
    mask = torch.tensor([[1, 1], [1, 0]])
    bonus = entropy_bonus(entropy, mask, coef=0.01)
    assert bonus.item() == pytest.approx(-0.02)
    bonus.backward()
    torch.testing.assert_close(entropy.grad, torch.tensor([[-0.01 / 3, -0.01 / 3], [-0.01 / 3, 0.0]]))
    # seq-mean-token-mean: mean(1.5, 3) = 2.25 -> -0.0225
    assert entropy_bonus(entropy, mask, 0.01, "seq-mean-token-mean").item() == pytest.approx(-0.0225)
    with pytest.raises(ValueError, match="coef"):
        entropy_bonus(entropy, mask, coef=-1.0)
