"""Sample replies before and after RL: greedy replies of two policies to the first held-out prompts,
each scored by the pipeline's reward model, as a Markdown table (docs/rlhf.md's real-data section).

    python bench/rlhf_replies.py runs/rlhf-hh/sft/final runs/rlhf-hh/grpo/checkpoints/step-00000020 \
        --rm runs/rlhf-hh/rm/final --prompts runs/rlhf-hh/data/heldout.jsonl --n 3 --max-new-tokens 32

Prompts are chat message lists rendered with each policy's chat template (as `data.chat_template:
auto` does); the reward model scores the raw dialogue in `--prompt-field` (hh_prompt), normalised by
its stored statistics (`normalize: stored`), as the RL stage's reward did. Decoding: transformers'
greedy `generate`, fp32, on the CPU.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from aha.rewards.reward_model import RewardModelReward


def greedy_replies(model_dir: str, messages: list[list[dict]], max_new_tokens: int) -> list[str]:
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    replies = []
    for m in messages:
        text = tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
        ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)
        replies.append(tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
    return replies


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--rm", required=True)
    ap.add_argument("--prompts", required=True, type=Path)
    ap.add_argument("--prompt-field", default="hh_prompt")
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    a = ap.parse_args()
    torch.set_num_threads(1)
    rows = [json.loads(line) for line in a.prompts.read_text().splitlines()[: a.n]]
    messages = [r["prompt"] for r in rows]
    reward = RewardModelReward(a.rm, device="cpu", prompt_field=a.prompt_field)
    raw = [r[a.prompt_field] for r in rows]
    print("| held-out prompt (last turn) | policy | greedy reply | proxy |")
    print("|---|---|---|---|")
    for name, path in (("before", a.before), ("after", a.after)):
        replies = greedy_replies(path, messages, a.max_new_tokens)
        scores = reward(raw, replies, **{a.prompt_field: raw})
        for m, reply, s in zip(messages, replies, scores, strict=True):
            shown = reply.replace("\n", " ").replace("|", "\\|")
            print(f'| {m[-1]["content"][:80]} | {name} | "{shown}" | {s:.3f} |')


if __name__ == "__main__":
    main()
