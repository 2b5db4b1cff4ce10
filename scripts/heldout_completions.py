"""Greedy held-out completions of one or more models on a chat prompt file, scored by the gsm8k reward.

    python scripts/heldout_completions.py PROMPTS.jsonl MODEL_DIR [MODEL_DIR ...] [--max-new-tokens 16]

For each model: accuracy, how many completions end with EOS, how many wrong ones state a result
("= x", "is x", "equals x"), and the first six completions. Used for docs/real-models.md.
"""

from __future__ import annotations

import argparse
import re

import torch

from aha.data.chat import chat_format
from aha.data.prompts import load_prompt_file
from aha.models.loading import load_model, load_tokenizer
from aha.rewards.math_answer import gsm8k
from aha.rollout import make_engine
from aha.rollout.base import SamplingParams

STATED = re.compile(r"(=|equals|is)\s*\d+")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prompts")
    parser.add_argument("models", nargs="+")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    examples = load_prompt_file(args.prompts)
    golds = [ex.fields["answer"] for ex in examples]
    for path in args.models:
        tokenizer, model = load_tokenizer(path), load_model(path)
        fmt = chat_format("auto", None, tokenizer, examples)
        prompts = [ex.prompt for ex in fmt.apply(examples, tokenizer)]
        engine = make_engine("native", model, tokenizer, add_special_tokens=fmt.add_special_tokens)
        out = engine.generate(prompts, SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0.0))
        scores = [float(s) for s in gsm8k(prompts, out.completions, answer=golds)]
        wrong = [c for c, s in zip(out.completions, scores, strict=True) if s < 1]
        print(
            f"{path}: accuracy {sum(scores) / len(scores):.3f} ({len(scores)} prompts), "
            f"ended by EOS {int((~out.truncated).sum())}, wrong {len(wrong)} "
            f"(stating a result: {sum(bool(STATED.search(c)) for c in wrong)})"
        )
        for ex, completion, score in list(zip(examples, out.completions, scores, strict=True))[:6]:
            question = ex.prompt if isinstance(ex.prompt, str) else ex.prompt[-1]["content"]
            print(f"  {question} -> {completion!r} ({score:.0f})")


if __name__ == "__main__":
    main()
