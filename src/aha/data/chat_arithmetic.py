"""Addition asked in words, as chat messages: the task of the real-model recipe (configs/smollm2-addition.yaml).

Each record is {"prompt": [{"role": "user", "content": "What is 7 + 12?"}], "answer": "19"}: a
conversation the trainer renders with the model's chat template, and a gold answer for the math
rewards. All ordered pairs of operands in [low, high] are drawn once, shuffled with `seed` and split
into disjoint held-out and training sets.

`python -m aha.data.chat_arithmetic TRAIN.jsonl HELDOUT.jsonl [--low 1] [--high 19] [--heldout-size 150]`
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

QUESTION = "What is {a} + {b}?"


def chat_addition_records(low: int, high: int, heldout: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(train, held-out) records over every pair a, b in [low, high]; the first `heldout` of a seeded
    shuffle are held out, the rest are for training."""
    if not 0 <= low <= high:
        raise ValueError(f"need 0 <= low <= high, got low={low}, high={high}")
    pairs = [(a, b) for a in range(low, high + 1) for b in range(low, high + 1)]
    if not 0 < heldout < len(pairs):
        raise ValueError(f"heldout must be in [1, {len(pairs) - 1}] for {len(pairs)} problems, got {heldout}")
    random.Random(seed).shuffle(pairs)
    records = [
        {"prompt": [{"role": "user", "content": QUESTION.format(a=a, b=b)}], "answer": str(a + b)}
        for a, b in pairs
    ]
    return records[heldout:], records[:heldout]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write chat-formatted addition problems as prompt files.")
    parser.add_argument("train", help="training prompt JSONL to write")
    parser.add_argument("heldout", help="held-out prompt JSONL to write")
    parser.add_argument("--low", type=int, default=1, help="smallest operand")
    parser.add_argument("--high", type=int, default=19, help="largest operand")
    parser.add_argument("--heldout-size", type=int, default=150, help="problems held out")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffle")
    args = parser.parse_args(argv)
    train, heldout = chat_addition_records(args.low, args.high, args.heldout_size, args.seed)
    for path, records in ((args.train, train), (args.heldout, heldout)):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    print(f"wrote {len(train)} training problems to {args.train}, {len(heldout)} held out to {args.heldout}")


if __name__ == "__main__":
    main()
