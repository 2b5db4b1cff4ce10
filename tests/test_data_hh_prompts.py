"""hh-rlhf dialogues -> chat messages, SFT demonstrations and RL prompts (aha.data.hh_prompts)."""

from __future__ import annotations

import json
from pathlib import Path

from aha.data.hh_prompts import dialogue_messages, write_files
from aha.data.preferences import load_hh_rlhf, split_by_prompt

EDGE_CASES = Path(__file__).parent / "data" / "hh-rlhf" / "helpful-base-edge-cases.jsonl"


def test_dialogue_turns_become_messages():
    prompt = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: What is 2+2?\n\nAssistant:"
    assert dialogue_messages(prompt) == [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "What is 2+2?"},
    ]


def test_files_follow_the_reward_models_split(tmp_path):
    counts = write_files(EDGE_CASES, tmp_path, held_out_fraction=0.5, seed=0, max_chars=10_000)
    rows, _ = load_hh_rlhf(EDGE_CASES)
    kept = [r for r in rows if r.responses[0].strip()]
    train, held = split_by_prompt(kept, 0.5, 0)
    read = {
        n: [json.loads(line) for line in (tmp_path / f"{n}.jsonl").read_text().splitlines()]
        for n in ("sft", "rl", "heldout")
    }
    assert [r["hh_prompt"] for r in read["rl"]] == [r.prompt for r in train]
    assert [r["hh_prompt"] for r in read["heldout"]] == [r.prompt for r in held]
    assert [r["completion"] for r in read["sft"]] == [r.responses[0].strip() for r in train]
    assert all(r["prompt"] and r["prompt"][-1]["role"] == "user" for r in read["rl"] + read["heldout"])
    assert counts == {
        "records": len(rows),
        "too_long": len(rows) - len(kept),
        "train": len(train),
        "held_out": len(held),
    }
