"""The hacking watch on hand-made sequences of (proxy, monitor) evaluations."""

from __future__ import annotations

import pytest

from aha.config import ConfigError, load_config
from aha.track.hacking import HackingWatch
from aha.train.grpo import GRPORunConfig


def _feed(watch: HackingWatch, proxies: list[float], monitors: list[float], name: str = "gold"):
    """Evaluations at steps 0, 10, 20, ...; returns (step, update) per evaluation."""
    return [
        (10 * i, watch.update(10 * i, p, {name: m}))
        for i, (p, m) in enumerate(zip(proxies, monitors, strict=True))
    ]


def _fired(updates) -> list[tuple[int, int]]:
    return [(step, a.best_step) for step, u in updates for a in u.alerts]


def test_fires_after_patience_evaluations_of_proxy_up_monitor_down():
    # monitor peaks at step 20 (0.8); the proxy keeps rising; three evaluations later (step 50) it fires
    proxies = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    monitors = [0.5, 0.7, 0.8, 0.75, 0.7, 0.6, 0.5]
    updates = _feed(HackingWatch(patience=3), proxies, monitors)
    assert _fired(updates) == [(50, 20)]
    alert = updates[5][1].alerts[0]
    assert (alert.monitor_best, alert.monitor_now, alert.proxy_at_best, alert.proxy_now) == (
        0.8,
        0.6,
        1.0,
        2.5,
    )
    assert "step 50" in alert.message() and "'gold'" in alert.message()


def test_fires_once_per_monitor():
    proxies = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    monitors = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]
    assert _fired(_feed(HackingWatch(patience=2), proxies, monitors)) == [(20, 0)]


def test_silent_when_both_rise_or_both_fall():
    rising = _feed(HackingWatch(patience=2), [0, 1, 2, 3, 4, 5], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    falling = _feed(HackingWatch(patience=2), [5, 4, 3, 2, 1, 0], [0.6, 0.5, 0.4, 0.3, 0.2, 0.1])
    assert _fired(rising) == [] and _fired(falling) == []


def test_a_new_best_restarts_the_count():
    # the monitor dips twice, then beats its best at step 30: the count restarts there
    proxies = [0, 1, 2, 3, 4, 5, 6]
    monitors = [0.5, 0.4, 0.45, 0.6, 0.55, 0.5, 0.45]
    updates = _feed(HackingWatch(patience=3), proxies, monitors)
    assert [u.improved for _, u in updates] == [["gold"], [], [], ["gold"], [], [], []]
    assert _fired(updates) == [(60, 30)]


def test_margins_ignore_small_moves():
    proxies = [0.0, 1.0, 1.01, 1.02, 1.03]  # the proxy barely moves after the monitor's best at step 10
    monitors = [0.5, 0.8, 0.79, 0.78, 0.5]
    assert _fired(_feed(HackingWatch(patience=2, min_rise=0.1), proxies, monitors)) == []
    # the monitor falls but by less than min_drop until the last evaluation
    proxies = [0.0, 1.0, 2.0, 3.0, 4.0]
    assert _fired(_feed(HackingWatch(patience=2, min_drop=0.1), proxies, monitors)) == [(40, 10)]


def test_each_monitor_has_its_own_track():
    watch = HackingWatch(patience=1)
    watch.update(0, 0.0, {"gold": 1.0, "length": 1.0})
    update = watch.update(10, 1.0, {"gold": 0.5, "length": 2.0})
    assert [a.monitor for a in update.alerts] == ["gold"] and update.improved == ["length"]


def test_state_round_trip_resumes_the_count():
    proxies, monitors = [0, 1, 2, 3, 4], [0.5, 0.9, 0.8, 0.7, 0.6]
    whole = _fired(_feed(HackingWatch(patience=3), proxies, monitors))
    first = HackingWatch(patience=3)
    _feed(first, proxies[:3], monitors[:3])
    second = HackingWatch(patience=3)
    second.load_state_dict(first.state_dict())
    rest = [
        (10 * i, second.update(10 * i, p, {"gold": m}))
        for i, p, m in zip((3, 4), proxies[3:], monitors[3:], strict=True)
    ]
    assert _fired(rest) == whole == [(40, 10)]


def test_patience_must_be_positive():
    with pytest.raises(ValueError, match="patience"):
        HackingWatch(patience=0)


def test_config_refuses_a_watch_that_cannot_watch():
    with pytest.raises(ConfigError, match="track.hacking.stop needs a watch"):
        load_config(GRPORunConfig, overrides=["track.hacking.stop=true"])
    with pytest.raises(ConfigError, match="eval.every"):
        load_config(GRPORunConfig, overrides=["rewards.monitors=[exact_answer]", "eval.every=0"])
    with pytest.raises(ConfigError, match="monitor_options"):
        load_config(GRPORunConfig, overrides=["rewards.monitor_options={exact_answer: {}}"])
    with pytest.raises(ConfigError, match="patience"):
        load_config(GRPORunConfig, overrides=["track.hacking.patience=-1"])
