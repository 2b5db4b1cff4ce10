from __future__ import annotations

import math

import pytest
import torch

from aha.algos.advantages import (
    ADVANTAGE_ESTIMATORS,
    gae,
    get_advantage_estimator,
    group_advantages,
    register_advantage_estimator,
    zero_variance_groups,
)

SQRT3 = math.sqrt(3.0)


def test_grpo_by_hand():
    # group [1, 0, 0]: mean 1/3, deviations [2/3, -1/3, -1/3],
    # unbiased var = (4/9 + 1/9 + 1/9) / 2 = 1/3, std = 1/sqrt(3)
    # -> [2/3 * sqrt(3), -1/3 * sqrt(3), -1/3 * sqrt(3)] = [1.1547, -0.5774, -0.5774]
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0]), 3, eps=0.0)
    torch.testing.assert_close(adv, torch.tensor([2 * SQRT3 / 3, -SQRT3 / 3, -SQRT3 / 3]))


def test_grpo_two_groups_and_eps():
    # group 0 [1, 0, 0, 1]: mean 0.5, unbiased std = sqrt(4 * 0.25 / 3) = 1/sqrt(3)
    #   -> +-0.5 * sqrt(3) = +-0.8660
    # group 1 [2, 2, 2, 2]: zero variance -> 0
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    adv = group_advantages(rewards, 4, eps=0.0)
    h = 0.5 * SQRT3
    torch.testing.assert_close(adv, torch.tensor([h, -h, -h, h, 0.0, 0.0, 0.0, 0.0]))
    # eps is added to the std: 0.5 / (1/sqrt(3) + 0.5) = 0.4641
    adv_eps = group_advantages(rewards, 4, eps=0.5)
    e = 0.5 / (1 / SQRT3 + 0.5)
    torch.testing.assert_close(adv_eps[:4], torch.tensor([e, -e, -e, e]))


def test_grpo_matches_torch_std_reference():
    g = torch.Generator().manual_seed(0)
    rewards = torch.rand(5 * 6, generator=g)
    grouped = rewards.view(5, 6)
    expected = (grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-6)
    torch.testing.assert_close(get_advantage_estimator("grpo")(rewards, 6), expected.reshape(-1))


def test_dr_grpo_no_scaling():
    # [1, 0, 0] - 1/3 = [2/3, -1/3, -1/3]
    adv = get_advantage_estimator("dr_grpo")(torch.tensor([1.0, 0.0, 0.0]), 3)
    torch.testing.assert_close(adv, torch.tensor([2 / 3, -1 / 3, -1 / 3]))


def test_rloo_by_hand():
    # r0 - mean(r1, r2) = 1 - 0 = 1; r1 - mean(r0, r2) = 0 - 0.5 = -0.5; same for r2
    adv = get_advantage_estimator("rloo")(torch.tensor([1.0, 0.0, 0.0]), 3)
    torch.testing.assert_close(adv, torch.tensor([1.0, -0.5, -0.5]))


def test_rloo_matches_direct_leave_one_out_formula():
    g = torch.Generator().manual_seed(1)
    group_size = 5
    rewards = torch.randn(4 * group_size, generator=g, dtype=torch.float64)
    expected = torch.empty_like(rewards)
    for start in range(0, rewards.numel(), group_size):
        group = rewards[start : start + group_size].tolist()
        for i, r in enumerate(group):
            others = group[:i] + group[i + 1 :]
            expected[start + i] = r - sum(others) / len(others)
    torch.testing.assert_close(group_advantages(rewards, group_size, baseline="loo", scale="none"), expected)


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo"])
def test_zero_variance_group_is_exactly_zero(name):
    # 0.1 is not exact in binary: mean(0.1, 0.1, 0.1) - 0.1 may be a tiny non-zero without the guard,
    # and std == 0 would divide 0 by eps; both must give exactly 0.
    rewards = torch.tensor([0.1, 0.1, 0.1, 1.0, 0.0, 1.0])
    adv = get_advantage_estimator(name)(rewards, 3)
    assert adv[:3].tolist() == [0.0, 0.0, 0.0]
    assert not torch.isnan(adv).any()
    assert (adv[3:] != 0).all()


def test_group_size_one_gives_zero_not_nan():
    # unbiased std of one sample is NaN in torch; a single completion has no group signal.
    adv = group_advantages(torch.tensor([0.3, 1.0]), 1)
    assert adv.tolist() == [0.0, 0.0]


def test_zero_variance_groups():
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.0, 0.0, 0.0])
    assert zero_variance_groups(rewards, 3).tolist() == [False, True, True]


def test_integer_rewards_accepted():
    adv = group_advantages(torch.tensor([1, 0]), 2, scale="none")
    assert adv.dtype.is_floating_point
    assert adv.tolist() == [0.5, -0.5]  # [1 - 0.5, 0 - 0.5]


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match=r"not a multiple of group_size \(4\)"):
        group_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError, match="loo"):
        group_advantages(torch.zeros(3), 1, baseline="loo")
    with pytest.raises(ValueError, match="unknown baseline"):
        group_advantages(torch.zeros(4), 2, baseline="median")
    with pytest.raises(ValueError, match="unknown scale"):
        group_advantages(torch.zeros(4), 2, scale="mad")
    with pytest.raises(ValueError, match="1-D"):
        group_advantages(torch.zeros(2, 2), 2)


def test_registry_lookup_and_errors():
    assert {"grpo", "dr_grpo", "rloo"} <= set(ADVANTAGE_ESTIMATORS)
    with pytest.raises(ValueError, match=r"unknown advantage estimator 'ppo'; known: dr_grpo, grpo, rloo"):
        get_advantage_estimator("ppo")


def test_register_custom_estimator():
    @register_advantage_estimator("test_raw")
    def raw(rewards, group_size, eps=1e-6):
        return rewards.float()

    try:
        assert get_advantage_estimator("test_raw") is raw
        with pytest.raises(ValueError, match="already registered"):
            register_advantage_estimator("test_raw")(raw)
    finally:
        ADVANTAGE_ESTIMATORS.pop("test_raw")


# ---- GAE ------------------------------------------------------------------------------------------

# rewards [0, 0, 1], values [0.5, 0.6, 0.7], gamma 0.9, lam 0.8 (gamma * lam = 0.72):
# t=2: delta = 1 + 0.9*0 - 0.7 = 0.3                 A2 = 0.3
# t=1: delta = 0 + 0.9*0.7 - 0.6 = 0.03              A1 = 0.03 + 0.72*0.3 = 0.246
# t=0: delta = 0 + 0.9*0.6 - 0.5 = 0.04              A0 = 0.04 + 0.72*0.246 = 0.21712
# returns = A + V = [0.71712, 0.846, 1.0]
GAE_ADV = [0.21712, 0.246, 0.3]
GAE_RET = [0.71712, 0.846, 1.0]


def test_gae_by_hand():
    adv, ret = gae(
        torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.6, 0.7]]), torch.ones(1, 3), 0.9, 0.8
    )
    torch.testing.assert_close(adv, torch.tensor([GAE_ADV]))
    torch.testing.assert_close(ret, torch.tensor([GAE_RET]))


def test_gae_ignores_padding():
    # Row 0: the same 3 tokens followed by 2 pads holding garbage (the value after the last real
    # token must be treated as 0, not 5.0). Row 1: a pad in the middle is skipped by the recursion.
    rewards = torch.tensor([[0.0, 0.0, 1.0, 7.0, 7.0], [0.0, 9.0, 0.0, 1.0, 0.0]])
    values = torch.tensor([[0.5, 0.6, 0.7, 5.0, 5.0], [0.5, 3.0, 0.6, 0.7, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 1, 1, 0]])
    adv, ret = gae(rewards, values, mask, 0.9, 0.8)
    torch.testing.assert_close(adv[0], torch.tensor([*GAE_ADV, 0.0, 0.0]))
    torch.testing.assert_close(ret[0], torch.tensor([*GAE_RET, 0.0, 0.0]))
    torch.testing.assert_close(adv[1], torch.tensor([GAE_ADV[0], 0.0, GAE_ADV[1], GAE_ADV[2], 0.0]))


def test_gae_lambda_one_is_monte_carlo():
    # gamma = lam = 1: A_t = (sum of rewards from t on) - V_t, so returns = reward-to-go.
    g = torch.Generator().manual_seed(0)
    rewards = torch.randn(3, 6, generator=g, dtype=torch.float64)
    values = torch.randn(3, 6, generator=g, dtype=torch.float64)
    adv, ret = gae(rewards, values, torch.ones(3, 6), 1.0, 1.0)
    reward_to_go = rewards.flip(-1).cumsum(-1).flip(-1)
    torch.testing.assert_close(ret, reward_to_go)
    torch.testing.assert_close(adv, reward_to_go - values)


def test_gae_lambda_zero_is_one_step_td():
    # lam = 0: A_t = r_t + gamma * V_{t+1} - V_t (V after the last token = 0)
    # [0 + 0.9*0.6 - 0.5, 0 + 0.9*0.7 - 0.6, 1 - 0.7] = [0.04, 0.03, 0.3]
    adv, _ = gae(torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.6, 0.7]]), torch.ones(1, 3), 0.9, 0.0)
    torch.testing.assert_close(adv, torch.tensor([[0.04, 0.03, 0.3]]))


def test_gae_shape_mismatch_raises():
    with pytest.raises(ValueError, match=r"\[N, T\]"):
        gae(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3), 1.0, 1.0)


def _slow_gae(rewards, values, mask, gamma, lam):
    """Reference GAE in plain Python floats, one row at a time over that row's real tokens only."""
    adv = [[0.0] * len(row) for row in rewards]
    for i, row_mask in enumerate(mask):
        real = [t for t, m in enumerate(row_mask) if m]
        next_value, next_adv = 0.0, 0.0
        for t in reversed(real):
            delta = rewards[i][t] + gamma * next_value - values[i][t]
            next_adv = delta + gamma * lam * next_adv
            next_value = values[i][t]
            adv[i][t] = next_adv
    ret = [
        [(a + v) if m else 0.0 for a, v, m in zip(*row, strict=True)]
        for row in zip(adv, values, mask, strict=True)
    ]
    return adv, ret


@pytest.mark.parametrize("seed", range(5))
def test_gae_equals_slow_reference_on_random_inputs(seed):
    # Random rewards/values (garbage in the padding), random lengths (right padding, including empty
    # rows and full rows) and random holes inside rows; float64, so agreement to 1e-12 is only
    # summation-order rounding over at most 12 steps.
    g = torch.Generator().manual_seed(seed)
    n, t_len = 7, 12
    gamma, lam = torch.rand(2, generator=g, dtype=torch.float64).tolist()
    rewards = torch.randn(n, t_len, generator=g, dtype=torch.float64)
    values = torch.randn(n, t_len, generator=g, dtype=torch.float64)
    lengths = torch.randint(0, t_len + 1, (n,), generator=g)
    lengths[0], lengths[1] = 0, t_len
    holes = torch.rand(n, t_len, generator=g) < 0.2
    mask = (torch.arange(t_len)[None] < lengths[:, None]) & ~holes
    adv, ret = gae(rewards, values, mask, gamma, lam)
    ref_adv, ref_ret = _slow_gae(rewards.tolist(), values.tolist(), mask.tolist(), gamma, lam)
    torch.testing.assert_close(adv, torch.tensor(ref_adv, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ret, torch.tensor(ref_ret, dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_gae_rejects_out_of_range_gamma_lambda():
    with pytest.raises(ValueError, match="gamma and lam"):
        gae(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2), 1.1, 0.95)
    with pytest.raises(ValueError, match="gamma and lam"):
        gae(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2), 1.0, -0.1)
