"""Chain-of-thought signals: values worked out by hand, with numpy-style quantiles checked against torch."""

from __future__ import annotations

import pytest
import torch

from aha.rewards.signals import completion_signals


def test_lengths_truncation_and_reflections_by_hand():
    completions = [
        "Wait, let me check that again.",  # "wait", "let me check" -> 2 ("check that again" is no phrase)
        "The answer is 4.",  # none
        "Hmm. I should verify: 2+2=4. Actually yes.",  # "hmm", "verify", "actually" -> 3
        "I'm waiting for a verification",  # "waiting" and "verification" are other words -> 0
        "Let me double-check. WAIT.",  # "let me double-check" (one, not two), "wait" -> 2
    ]
    signals = completion_signals(
        completions, lengths=[1, 2, 3, 4, 10], truncated=[False, True, False, False, True]
    )
    # mean = 20 / 5 = 4; p90: position 0.9 * (5 - 1) = 3.6 -> 4 + 0.6 * (10 - 4) = 7.6
    assert signals["completion/length_mean"] == 4.0
    assert signals["completion/length_p90"] == pytest.approx(7.6)
    assert signals["completion/length_max"] == 10.0
    assert signals["completion/truncated_frac"] == 2 / 5
    assert signals["completion/reflection_rate"] == 3 / 5
    assert signals["completion/reflections_per_completion"] == (2 + 0 + 3 + 0 + 2) / 5


def test_tensor_inputs_and_quantile_match_torch():
    lengths = torch.tensor([7, 3, 12, 5, 5, 30, 1, 9])
    truncated = torch.tensor([False] * 7 + [True])
    signals = completion_signals(["x"] * 8, lengths, truncated)
    assert signals["completion/length_p90"] == pytest.approx(float(torch.quantile(lengths.float(), 0.9)))
    assert signals["completion/truncated_frac"] == 1 / 8


def test_custom_reflection_phrases():
    signals = completion_signals(
        ["eureka! so", "nothing"], [1, 1], [False, False], reflection_phrases=["eureka"]
    )
    assert signals["completion/reflection_rate"] == 0.5
    assert (
        completion_signals(["wait"], [1], [False], reflection_phrases=[])["completion/reflection_rate"] == 0.0
    )


def test_misaligned_or_empty_inputs_are_rejected():
    with pytest.raises(ValueError, match="2 completions but 1 lengths"):
        completion_signals(["a", "b"], [1], [False, False])
    with pytest.raises(ValueError, match="at least one completion"):
        completion_signals([], [], [])
