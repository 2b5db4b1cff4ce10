from __future__ import annotations

import pytest
import torch

from aha.track.progress import Progress, format_number


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
