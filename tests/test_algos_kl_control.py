from __future__ import annotations

import pytest

from aha.algos.kl_control import AdaptiveKLController, FixedKLController


def test_adaptive_kl_by_hand():
    ctl = AdaptiveKLController(init_kl_coef=0.2, target=6.0, horizon=10000)
    # KL 7.2: error 7.2 / 6 - 1 = 0.2 (at the clip) -> 0.2 * (1 + 0.2 * 128 / 10000) = 0.2 * 1.00256 = 0.200512
    assert ctl.update(7.2, n_steps=128) == pytest.approx(0.200512)
    # KL 60: error 9 clipped to 0.2 -> the same factor again: 0.200512 * 1.00256 = 0.20102531
    assert ctl.update(60.0, n_steps=128) == pytest.approx(0.200512 * 1.00256)
    # KL 0: error -1 clipped to -0.2 -> factor 1 - 0.2 * 5000 / 10000 = 0.9
    assert ctl.update(0.0, n_steps=5000) == pytest.approx(0.200512 * 1.00256 * 0.9)
    # KL on target: error 0, unchanged
    before = ctl.value
    assert ctl.update(6.0, n_steps=5000) == before


def test_adaptive_kl_resumes_from_state_dict():
    a = AdaptiveKLController(0.1, target=1.0, horizon=100)
    a.update(2.0, 10)
    b = AdaptiveKLController(0.1, target=1.0, horizon=100)
    b.load_state_dict(a.state_dict())
    assert b.value == a.value
    assert b.update(0.5, 10) == a.update(0.5, 10)


def test_fixed_kl_never_moves():
    ctl = FixedKLController(0.05)
    assert ctl.update(100.0, 1000) == 0.05
    assert ctl.state_dict() == {"value": 0.05}


def test_controller_checks():
    with pytest.raises(ValueError, match="init_kl_coef"):
        AdaptiveKLController(0.0, 1.0, 10)
    with pytest.raises(ValueError, match="horizon"):
        AdaptiveKLController(0.1, 1.0, 0)
    with pytest.raises(ValueError, match="kl_coef"):
        FixedKLController(-1.0)
