"""GSM8K loading: the real test split, templates, and malformed lines named by file, line and field."""

from __future__ import annotations

import json

import pytest

from aha.data.gsm8k import R1_ZERO_TEMPLATE, gsm8k_final_answer, load_gsm8k, main, render_chat
from aha.data.prompts import DataError
from aha.models.tiny import build_char_tokenizer


def test_loads_the_test_split_with_gold_answers_cleaned(gsm8k_test):
    records = load_gsm8k(gsm8k_test)
    assert len(records) == 1319
    assert set(records[0]) == {"prompt", "answer", "solution"}
    assert records[0]["answer"] == "18" and records[0]["prompt"].startswith("Janet\u2019s ducks lay 16 eggs")
    assert records[0]["solution"].endswith("#### 18")
    # The README's special cases (1-based lines): thousands separators and negative answers.
    assert records[146]["answer"] == "2125"
    assert records[611]["answer"] == "1450000"
    assert records[489]["answer"] == "-10"
    assert all("," not in r["answer"] for r in records)


def test_limit_and_templates(gsm8k_test):
    records = load_gsm8k(gsm8k_test, limit=3, prompt_template="Q: {question}\nA: {not a placeholder}")
    assert len(records) == 3
    assert records[1]["prompt"].startswith("Q: A robe takes 2 bolts") and records[1]["prompt"].endswith(
        "{not a placeholder}"
    )
    r1 = load_gsm8k(gsm8k_test, limit=1, prompt_template="r1_zero")[0]["prompt"]
    assert r1 == R1_ZERO_TEMPLATE.replace("{question}", load_gsm8k(gsm8k_test, limit=1)[0]["prompt"])
    assert r1.endswith("Assistant: <think>")
    assert load_gsm8k(gsm8k_test, limit=0) == []
    with pytest.raises(ValueError, match="must contain '\\{question\\}'"):
        load_gsm8k(gsm8k_test, prompt_template="no placeholder")


def write(tmp_path, lines):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


GOOD = json.dumps({"question": "1+1?", "answer": "1+1=2\n#### 2"})


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ("{not json", "line 3: invalid JSON"),
        ("[1, 2]", "line 3: expected a JSON object"),
        (json.dumps({"answer": "#### 2"}), 'line 3: field "question" must be a non-empty string'),
        (json.dumps({"question": "q", "answer": 2}), 'line 3: field "answer" must be a non-empty string'),
        (json.dumps({"question": "q", "answer": "it is 2"}), 'line 3: field "answer": expected exactly one'),
        (
            json.dumps({"question": "q", "answer": "#### 2\n#### 3"}),
            'line 3: field "answer": expected exactly one',
        ),
        (
            json.dumps({"question": "q", "answer": "#### two"}),
            "line 3: field \"answer\": final answer 'two' is not",
        ),
    ],
)
def test_malformed_lines_name_file_line_and_field(tmp_path, bad_line, message):
    path = write(tmp_path, [GOOD, "", bad_line])  # the blank line 2 is skipped but still counted
    with pytest.raises(DataError, match=message) as info:
        load_gsm8k(path)
    assert str(path) in str(info.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match="GSM8K file not found: .*nope.jsonl"):
        load_gsm8k(tmp_path / "nope.jsonl")


def test_final_answer_helper():
    assert gsm8k_final_answer("so 1,000 + 450 = 1,450\n#### 1,450") == "1450"
    assert gsm8k_final_answer("#### -3.5 ") == "-3.5"


def test_command_line_writes_a_prompt_file(tmp_path, capsys):
    source = write(tmp_path, [GOOD, GOOD])
    out = tmp_path / "prompts.jsonl"
    main([str(source), str(out), "--template", "think_answer", "--limit", "1"])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["answer"] == "2" and "<answer>" in rows[0]["prompt"]
    assert "wrote 1 prompts" in capsys.readouterr().out


CHAT_TEMPLATE = (
    "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant] {% endif %}"
)


def test_command_line_can_apply_a_models_chat_template(tmp_path):
    tokenizer = build_char_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(tmp_path / "tok")
    out = tmp_path / "prompts.jsonl"
    main(
        [
            str(write(tmp_path, [GOOD])),
            str(out),
            "--chat-template",
            str(tmp_path / "tok"),
            "--system",
            "Be brief.",
        ]
    )
    assert json.loads(out.read_text())["prompt"] == "[system] Be brief.\n[user] 1+1?\n[assistant] "


def test_a_tokenizer_without_chat_template_is_named():
    with pytest.raises(ValueError, match="has no chat template"):
        render_chat("1+1?", build_char_tokenizer())
