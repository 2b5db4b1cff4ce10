from __future__ import annotations

import math

import pytest
import torch

from aha.algos.advantages import gae
from aha.algos.reward_shaping import (
    kl_shaped_rewards,
    last_token_index,
    sequence_rewards_to_tokens,
    soft_overlong_penalty,
    truncation_penalty,
)

NAN = float("nan")


def test_sequence_reward_on_last_real_token():
    # row 0 ends at column 1 (right padding), row 1 fills the row, row 2 has a hole at column 1 and
    # ends at column 2: the reward goes on the last real token, never on padding.
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 1, 0]])
    assert last_token_index(mask).tolist() == [1, 3, 2]
    out = sequence_rewards_to_tokens(torch.tensor([2.0, -1.0, 0.5]), mask)
    expected = [[0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 0.0, -1.0], [0.0, 0.0, 0.5, 0.0]]
    assert out.tolist() == expected
    # clamp to (-0.5, 1): 2 -> 1, -1 -> -0.5, 0.5 unchanged
    clamped = sequence_rewards_to_tokens(torch.tensor([2.0, -1.0, 0.5]), mask, clamp=(-0.5, 1.0))
    assert clamped.sum(-1).tolist() == [1.0, -0.5, 0.5]


def test_sequence_reward_rejects_empty_rows_and_bad_shapes():
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        sequence_rewards_to_tokens(torch.ones(2), torch.tensor([[1, 0], [0, 0]]))
    with pytest.raises(ValueError, match=r"\[N\]"):
        sequence_rewards_to_tokens(torch.ones(3), torch.ones(2, 2))
    with pytest.raises(ValueError, match="low <= high"):
        sequence_rewards_to_tokens(torch.ones(1), torch.ones(1, 2), clamp=(1.0, -1.0))


def test_kl_shaped_rewards_by_hand():
    # k1 = logp - ref: [-1 - -1.5, -2 - -2, -1 - -0.5] = [0.5, 0, -0.5]; padding holds NaN / -inf.
    # rewards = r - 0.1 * kl = [0 - 0.05, 0, 1 + 0.05] = [-0.05, 0, 1.05], 0 on the padding.
    logprobs = torch.tensor([[-1.0, -2.0, -1.0, NAN]])
    ref = torch.tensor([[-1.5, -2.0, -0.5, -math.inf]])
    mask = torch.tensor([[1, 1, 1, 0]])
    token_rewards = sequence_rewards_to_tokens(torch.tensor([1.0]), mask)
    rewards, kl = kl_shaped_rewards(token_rewards, logprobs, ref, mask, kl_coef=0.1)
    torch.testing.assert_close(kl, torch.tensor([[0.5, 0.0, -0.5, 0.0]]))
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, 0.0, 1.05, 0.0]]))
    # k3 = exp(ref - logp) - (ref - logp) - 1: token 0 e^-0.5 + 0.5 - 1 = 0.106531, token 2 e^0.5 - 0.5 - 1
    # = 0.148721; rewards [-0.0106531, 0, 1 - 0.0148721]
    rewards, kl = kl_shaped_rewards(token_rewards, logprobs, ref, mask, kl_coef=0.1, estimator="k3")
    k3 = [math.exp(-0.5) + 0.5 - 1, 0.0, math.exp(0.5) - 0.5 - 1, 0.0]
    torch.testing.assert_close(kl, torch.tensor([k3]))
    torch.testing.assert_close(rewards, torch.tensor([[-0.1 * k3[0], 0.0, 1 - 0.1 * k3[2], 0.0]]))


def test_kl_shaped_rewards_then_gae_by_hand():
    # The PPO-RLHF pipeline on the row above, gamma = lam = 1 (verl / OpenRLHF defaults): returns are
    # the reward-to-go of [-0.05, 0, 1.05] = [1.0, 1.05, 1.05]; with V = 0.5 on every real token the
    # advantages are [0.5, 0.55, 0.55]. The padded column (V = 9) stays 0.
    mask = torch.tensor([[1, 1, 1, 0]])
    rewards, _ = kl_shaped_rewards(
        sequence_rewards_to_tokens(torch.tensor([1.0]), mask),
        torch.tensor([[-1.0, -2.0, -1.0, NAN]]),
        torch.tensor([[-1.5, -2.0, -0.5, NAN]]),
        mask,
        kl_coef=0.1,
    )
    adv, ret = gae(rewards, torch.tensor([[0.5, 0.5, 0.5, 9.0]]), mask, gamma=1.0, lam=1.0)
    torch.testing.assert_close(ret, torch.tensor([[1.0, 1.05, 1.05, 0.0]]))
    torch.testing.assert_close(adv, torch.tensor([[0.5, 0.55, 0.55, 0.0]]))


def test_kl_shaped_rewards_checks():
    z = torch.zeros(1, 2)
    with pytest.raises(ValueError, match=r"\[N, T\]"):
        kl_shaped_rewards(z, z, torch.zeros(1, 3), torch.ones(1, 2), 0.1)
    with pytest.raises(ValueError, match="kl_coef"):
        kl_shaped_rewards(z, z, z, torch.ones(1, 2), -0.1)


def test_truncation_penalty_by_hand():
    # only the truncated completion (row 1) loses 0.5: [1, 0 - 0.5, -1]
    out = truncation_penalty(torch.tensor([1.0, 0.0, -1.0]), torch.tensor([False, True, False]), 0.5)
    assert out.tolist() == [1.0, -0.5, -1.0]
    with pytest.raises(ValueError, match="penalty"):
        truncation_penalty(torch.zeros(1), torch.zeros(1, dtype=torch.bool), -1.0)


def test_soft_overlong_penalty_by_hand():
    # max_len 10, buffer 4: free up to 6 tokens, then -(L - 6) / 4 * 0.5: L=7 -> -0.125, L=8 -> -0.25,
    # L=10 -> -0.5 (the full factor at the limit), L=12 -> capped at -0.5.
    lengths = torch.tensor([3, 6, 7, 8, 10, 12])
    out = soft_overlong_penalty(lengths, max_len=10, buffer=4, factor=0.5)
    torch.testing.assert_close(out, torch.tensor([0.0, 0.0, -0.125, -0.25, -0.5, -0.5]))
    with pytest.raises(ValueError, match="buffer"):
        soft_overlong_penalty(lengths, max_len=10, buffer=0)
