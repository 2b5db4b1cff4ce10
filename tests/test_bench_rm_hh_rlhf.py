"""The pieces of bench/rm_hh_rlhf.py that decide its verdict: the baselines and the bootstrap."""

import random
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import rm_hh_rlhf as bench  # noqa: E402

from aha.data.preferences import Ranking  # noqa: E402


def pair(chosen: str, rejected: str, i: int = 0) -> Ranking:
    return Ranking(f"p{i}", (chosen, rejected), (0, 1))


def test_length_baseline_counts_ties_half():
    wins = bench.length_wins([pair("long reply", "short"), pair("ab", "cd"), pair("x", "yyy")])
    assert wins.tolist() == [1.0, 0.5, 0.0]


def test_bag_of_words_learns_a_word_preference():
    rng = random.Random(0)
    filler = ["the", "a", "it", "is", "so", "we"]

    def reply(word):
        return " ".join(rng.choices(filler, k=5) + [word])

    train = [pair(reply("thanks"), reply("whatever"), i) for i in range(60)]
    held = [pair(reply("thanks"), reply("whatever"), i) for i in range(20)]
    held += [pair(reply("whatever"), reply("thanks"), i) for i in range(20)]  # here the rude one was chosen
    wins = bench.bow_wins(train, held, vocab_size=50, seed=0)
    assert wins[:20].mean() == 1.0 and wins[20:].mean() == 0.0


def test_bootstrap_interval_brackets_the_mean_and_narrows_with_n():
    g = torch.Generator().manual_seed(0)
    small = (torch.rand(100, generator=g) < 0.6).float()
    large = (torch.rand(2000, generator=g) < 0.6).float()
    lo, hi = bench.bootstrap(small)
    assert lo <= float(small.mean()) <= hi
    lo2, hi2 = bench.bootstrap(large)
    assert hi2 - lo2 < (hi - lo) / 2  # ~1/sqrt(n): 20x the pairs, ~4.5x narrower
    # normal approximation for n = 2000, p = 0.6: half-width 1.96 * sqrt(.24 / 2000) = 0.0215
    assert (hi2 - lo2) / 2 == pytest.approx(0.0215, abs=0.004)
    d_lo, d_hi = bench.bootstrap(large, large)  # paired difference with itself: exactly zero
    assert d_lo == d_hi == 0.0


def test_pairs_written_for_the_trainer_keep_their_subset(tmp_path):
    from aha.data.preferences import load_pairs

    pairs = [Ranking("p0", ("a", "b"), (0, 1), subset="helpful-base"), Ranking("p1", ("c", "d"), (0, 1))]
    bench.write_pairs(tmp_path / "x.jsonl", pairs)
    back = load_pairs(tmp_path / "x.jsonl")
    assert back == pairs and [p.subset for p in back] == ["helpful-base", ""]
