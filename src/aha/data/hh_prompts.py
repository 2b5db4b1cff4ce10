"""hh-rlhf dialogues as SFT demonstrations and RL prompts for `aha rlhf` (chat message lists).

`python -m aha.data.hh_prompts HH_FILE OUT_DIR [--max-prompt-chars N] [--seed S]` writes, from one
hh-rlhf file (aha.data.preferences.load_hh_rlhf: the prompt is the dialogue up to its last
"\\n\\nAssistant:"):
  sft.jsonl      {"prompt": messages, "completion": the chosen reply}       training prompts
  rl.jsonl       {"prompt": messages, "hh_prompt": the raw dialogue text}   training prompts
  heldout.jsonl  the same for held-out prompts
The split is aha.data.preferences.split_by_prompt with the same fraction and seed as `aha rm`'s
data.held_out_fraction, so the reward model's held-out prompts are the policy's held-out prompts too.
`hh_prompt` lets the `reward_model` reward score the text format it was trained on
(`prompt_field: hh_prompt`) while the policy sees its own chat template. Dialogues longer than
`max_prompt_chars` are left out (counted on stderr).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from aha.data.preferences import load_hh_rlhf, split_by_prompt

_TURN = re.compile(r"\n\n(Human|Assistant):")


def dialogue_messages(prompt: str) -> list[dict[str, str]]:
    """'\\n\\nHuman: a\\n\\nAssistant: b\\n\\nHuman: c\\n\\nAssistant:' -> user a, assistant b, user c."""
    parts = _TURN.split(prompt)
    messages = []
    for speaker, text in zip(parts[1::2], parts[2::2], strict=True):
        if text.strip():
            messages.append({"role": "user" if speaker == "Human" else "assistant", "content": text.strip()})
    return messages


def write_files(
    hh_file: str | Path, out_dir: str | Path, held_out_fraction: float, seed: int, max_chars: int
) -> dict:
    rows, _ = load_hh_rlhf(hh_file)
    kept = [r for r in rows if len(r.prompt) <= max_chars and r.responses[0].strip()]
    train, held = split_by_prompt(kept, held_out_fraction, seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def prompt_row(r):
        return {"prompt": dialogue_messages(r.prompt), "hh_prompt": r.prompt}

    _write(
        out / "sft.jsonl",
        [{"prompt": dialogue_messages(r.prompt), "completion": r.responses[0].strip()} for r in train],
    )
    _write(out / "rl.jsonl", [prompt_row(r) for r in train])
    _write(out / "heldout.jsonl", [prompt_row(r) for r in held])
    return {
        "records": len(rows),
        "too_long": len(rows) - len(kept),
        "train": len(train),
        "held_out": len(held),
    }


def _write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("hh_file")
    parser.add_argument("out_dir")
    parser.add_argument("--held-out-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-prompt-chars", type=int, default=400)
    args = parser.parse_args(argv)
    counts = write_files(args.hh_file, args.out_dir, args.held_out_fraction, args.seed, args.max_prompt_chars)
    print(json.dumps(counts), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
