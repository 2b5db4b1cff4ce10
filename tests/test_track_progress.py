from __future__ import annotations

import pytest
import torch

from aha.track.progress import Progress, format_duration, format_number


def test_disabled_prints_nothing(capsys):
    with Progress(total=10, desc="grpo", enabled=False) as p:
        for step in range(1, 11):
            p.update(step, reward=0.5, kl=0.01)
        p.write("hello")
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_enabled_shows_step_and_values(capsys):
    with Progress(total=10, desc="grpo", initial=2) as p:
        p.update(4, reward=0.53, kl=0.0123, **{"tok/s": 1234.0})
        p.write("evaluated")
    err = capsys.readouterr().err
    assert "grpo" in err and "4/10" in err
    assert "reward=0.53 kl=0.0123 tok/s=1.23k" in err
    assert "evaluated\n" in err


def test_update_is_absolute_and_never_moves_back(capsys):
    with Progress(total=10, desc="x") as p:
        p.update(3)
        capsys.readouterr()
        p.update(2)  # an out-of-order call must not rewind or crash
        err = capsys.readouterr().err
        assert "3/10" in err and "2/10" not in err
        p.update(7)
        assert "7/10" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.53, "0.53"),
        (0.012, "0.012"),
        (1234.0, "1.23k"),
        (1_500_000, "1.5M"),
        (-2500.0, "-2.5k"),
        (7, "7"),
        (123.456, "123"),
        (float("nan"), "nan"),
        (torch.tensor(0.25), "0.25"),
        ("warmup", "warmup"),
    ],
)
def test_format_number(value, text):
    assert format_number(value) == text


def test_eta_is_the_mean_pace_since_the_first_update(capsys):
    """Steps 3 -> 5 took 10 s and 30 s (a slow evaluation step): 20 s a step, 5 steps left = 100 s.
    tqdm's smoothed rate would weigh the slow step far more; the mean keeps it in proportion."""
    now = [100.0]
    with Progress(total=10, desc="grpo", initial=2, clock=lambda: now[0]) as p:
        p.update(3, reward=0.5)
        assert p.eta_seconds(3) is None  # one step seen: no pace yet
        assert "eta=" not in capsys.readouterr().err
        now[0] = 110.0
        p.update(4)
        now[0] = 140.0
        p.update(5, reward=0.5)
        assert p.eta_seconds(5) == pytest.approx(100.0)
        assert "reward=0.5 eta=1m40s" in capsys.readouterr().err


def test_last_held_out_result_is_shown_until_the_next_one(capsys):
    with Progress(total=10, desc="sft") as p:
        p.observe({"eval/loss": 1.25, "loss": 2.0})
        p.update(1, loss=2.0)
        assert "loss=2 heldout_loss=1.25" in capsys.readouterr().err
        p.observe({"loss": 1.5})  # no evaluation this step: the last one stays
        p.update(2, loss=1.5)
        assert "heldout_loss=1.25" in capsys.readouterr().err
        p.observe({"eval/accuracy": 0.375, "eval/loss": float("nan")})  # NaN is not a result to show
        p.update(3)
        assert "heldout_loss=1.25 heldout_acc=0.375" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.4, "0s"), (45, "45s"), (252, "4m12s"), (3780, "1h03m"), (187_200, "2d04h")],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text
