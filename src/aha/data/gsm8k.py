"""GSM8K (grade-school math word problems) as prompts with the gold final answer attached.

A record of the original files is {"question", "answer"}, where "answer" is a worked solution whose
last line is "#### <final answer>". `load_gsm8k` turns each into {"prompt", "answer", "solution"}:
the question (optionally put into a template), the final answer with thousands separators removed
("1,450,000" -> "1450000"), and the worked solution, unchanged. Scored by the "gsm8k" reward.

`python -m aha.data.gsm8k IN.jsonl OUT.jsonl [--template think_answer] [--chat-template MODEL] [--limit N]`
writes a prompt file that the GRPO trainer reads directly. The trainer can apply the model's chat
template itself (`data.chat_template=always` renders each prompt as a user turn, `data.system_prompt`
adds a system message); --chat-template instead writes prompts already rendered with that model's
template, which the trainer then uses as written (`data.chat_template=auto`).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from aha.data.prompts import DataError

MARKER = "####"
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")

# The R1-Zero prompt of the DeepSeek-R1 paper (Table 1), for base models; the model continues after "<think>".
R1_ZERO_TEMPLATE = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with "
    "the answer. The reasoning process and answer are enclosed within <think> </think> and <answer> "
    "</answer> tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here "
    "</answer>. User: {question} Assistant: <think>"
)
# For instruct models whose chat template wraps the prompt: the instructions, then the question.
THINK_ANSWER_TEMPLATE = (
    "{question}\nThink step by step inside <think> </think> tags, then give only the final number "
    "inside <answer> </answer> tags."
)
TEMPLATES = {"r1_zero": R1_ZERO_TEMPLATE, "think_answer": THINK_ANSWER_TEMPLATE}


def gsm8k_final_answer(solution: str) -> str:
    """The gold final answer of a worked solution: the text after its only "####", commas removed."""
    if solution.count(MARKER) != 1:
        raise ValueError(
            f"expected exactly one '{MARKER} <final answer>' line, found {solution.count(MARKER)}"
        )
    final = solution.split(MARKER, 1)[1].strip().replace(",", "")
    if not _NUMBER.fullmatch(final):
        raise ValueError(f"final answer {final!r} is not a number")
    return final


def load_gsm8k(path: str | Path, limit: int | None = None, prompt_template: str | None = None) -> list[dict]:
    """Records {"prompt", "answer", "solution"} from a GSM8K JSONL file (the first `limit` if given).

    `prompt_template` (a string containing "{question}", or a name in TEMPLATES) builds the prompt;
    None uses the question as is. A malformed line raises DataError naming the file, line and field.
    """
    template = TEMPLATES.get(prompt_template, prompt_template) if prompt_template else None
    if template is not None and "{question}" not in template:
        raise ValueError(f"prompt_template must contain '{{question}}' (or be one of {sorted(TEMPLATES)})")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"GSM8K file not found: {path}")
    records: list[dict] = []
    with path.open(encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if limit is not None and len(records) >= limit:
                break
            if line.strip():
                records.append(_record(line, path, line_number, template))
    return records


def _record(line: str, path: Path, line_number: int, template: str | None) -> dict[str, Any]:
    where = f"{path}: line {line_number}"
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: invalid JSON: {e.msg} (column {e.colno})") from None
    if not isinstance(raw, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    for field in ("question", "answer"):
        if not isinstance(raw.get(field), str) or not raw[field].strip():
            raise DataError(
                f'{where}: field "{field}" must be a non-empty string, got {raw.get(field)!r:.80}'
            )
    try:
        final = gsm8k_final_answer(raw["answer"])
    except ValueError as e:
        raise DataError(f'{where}: field "answer": {e}') from None
    question = raw["question"].strip()
    prompt = template.replace("{question}", question) if template else question
    return {"prompt": prompt, "answer": final, "solution": raw["answer"]}


def render_chat(prompt: str, tokenizer: Any, system: str | None = None) -> str:
    """`prompt` as the user turn of `tokenizer`'s chat template, ending where the assistant's reply starts."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template")
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": prompt})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a GSM8K file as a prompt file for the GRPO trainer.")
    parser.add_argument("source", help="a GSM8K JSONL file (question, answer)")
    parser.add_argument("output", help="the prompt JSONL to write (prompt, answer, solution)")
    parser.add_argument(
        "--template", default=None, help=f"one of {sorted(TEMPLATES)} or a string with {{question}}"
    )
    parser.add_argument("--limit", type=int, default=None, help="only the first N problems")
    parser.add_argument(
        "--chat-template", default=None, help="model dir or hub id whose chat template to apply"
    )
    parser.add_argument("--system", default=None, help="system message (with --chat-template)")
    args = parser.parse_args(argv)
    records = load_gsm8k(args.source, limit=args.limit, prompt_template=args.template)
    if args.chat_template:
        from transformers import AutoTokenizer  # only here: data/ does not depend on models/

        tokenizer = AutoTokenizer.from_pretrained(args.chat_template)
        for record in records:
            record["prompt"] = render_chat(record["prompt"], tokenizer, args.system)
    with open(args.output, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    print(f"wrote {len(records)} prompts to {args.output}")


if __name__ == "__main__":
    main()
