from __future__ import annotations

import gzip
import json
import sys
from itertools import islice
from pathlib import Path

import pytest

from aha.data.prompts import DataError, PromptExample, PromptSampler, batch_fields, load_prompt_file


def write(tmp_path: Path, text: str, name: str = "p.jsonl") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_jsonl_with_blank_lines(tmp_path):
    path = write(
        tmp_path, '{"prompt": "1+1=", "answer": "2"}\n\n   \n{"prompt": "2+2=", "answer": "4", "id": 7}\n'
    )
    examples = load_prompt_file(path, required_fields=("answer",))
    assert examples == [
        PromptExample("1+1=", {"answer": "2"}),
        PromptExample("2+2=", {"answer": "4", "id": 7}),
    ]


@pytest.mark.parametrize(
    "line, problem",
    [
        ('{"prompt": "a", }', "invalid JSON: Expecting property name enclosed in double quotes (column 17)"),
        ('["a", "b"]', "expected a JSON object, got list"),
        ('{"question": "a", "answer": "1"}', 'missing field "prompt" (fields: question, answer)'),
        ('{"prompt": 5, "answer": "1"}', 'field "prompt" must be a string, got int'),
        ('{"prompt": "a"}', 'missing required field "answer"'),
    ],
)
def test_bad_line_is_named_with_file_and_line(tmp_path, line, problem):
    path = write(tmp_path, '{"prompt": "ok", "answer": "1"}\n\n' + line + "\n")
    with pytest.raises(DataError) as e:
        load_prompt_file(path, required_fields=("answer",))
    assert str(e.value) == f"{path}: line 3: {problem}"


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(DataError, match="no examples"):
        load_prompt_file(write(tmp_path, "\n  \n"))
    with pytest.raises(DataError, match="prompt file not found"):
        load_prompt_file(tmp_path / "absent.jsonl")
    with pytest.raises(DataError, match=r"prompt file not found: .* \(it is a directory\)"):
        load_prompt_file(tmp_path)
    with pytest.raises(DataError, match="unsupported file type; expected .jsonl"):
        load_prompt_file(write(tmp_path, "prompt,answer\n", name="p.csv"))


def test_json_list_and_gzip(tmp_path):
    path = write(tmp_path, json.dumps([{"q": "x", "answer": 1}, {"q": "y", "answer": 2}]), name="p.json")
    assert load_prompt_file(path, prompt_field="q") == [
        PromptExample("x", {"answer": 1}),
        PromptExample("y", {"answer": 2}),
    ]
    with pytest.raises(DataError, match=r"p\.json: record 2: missing field \"q\""):
        load_prompt_file(write(tmp_path, '[{"q": "x"}, {"p": "y"}]', name="p.json"), prompt_field="q")
    with pytest.raises(DataError, match=r"line 2: invalid JSON"):
        load_prompt_file(write(tmp_path, '[{"q": "x"},\n oops]', name="p.json"), prompt_field="q")
    gz = tmp_path / "p.jsonl.gz"
    with gzip.open(gz, "wt") as f:
        f.write('{"prompt": "z"}\n')
    assert load_prompt_file(gz) == [PromptExample("z", {})]


def test_not_utf8(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"prompt": "\xff\xfe"}\n')
    with pytest.raises(DataError, match="not UTF-8"):
        load_prompt_file(path)


def test_parquet_without_pyarrow_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # makes `import pyarrow...` raise ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(DataError, match=r"reading Parquet needs pyarrow \(pip install pyarrow\)"):
        load_prompt_file(write(tmp_path, "", name="p.parquet"))


def test_parquet_with_pyarrow(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b"], "answer": ["1", "2"]}), path)
    assert load_prompt_file(path) == [
        PromptExample("a", {"answer": "1"}),
        PromptExample("b", {"answer": "2"}),
    ]


def test_real_gsm8k_file(gsm8k_test):
    examples = load_prompt_file(gsm8k_test, prompt_field="question", required_fields=("answer",))
    assert len(examples) == 1319  # the GSM8K test split
    assert all(ex.prompt and "####" in ex.fields["answer"] for ex in examples)


def test_batch_fields_aligns_columns():
    examples = [PromptExample("a", {"answer": "1"}), PromptExample("b", {"answer": "2", "id": 5})]
    assert batch_fields(examples) == {"answer": ["1", "2"], "id": [None, 5]}
    assert batch_fields([]) == {}


def make_examples(n: int) -> list[PromptExample]:
    return [PromptExample(f"p{i}", {"answer": str(i)}) for i in range(n)]


def test_sampler_epochs_cover_every_example_once():
    sampler = PromptSampler(make_examples(10), batch_size=4, seed=1)
    batches = list(islice(sampler, 5))  # 20 draws = two full epochs, batches run across the epoch end
    assert all(len(b) == 4 for b in batches)
    prompts = [ex.prompt for b in batches for ex in b]
    first, second = prompts[:10], prompts[10:]
    assert sorted(first) == sorted(second) == sorted(f"p{i}" for i in range(10))
    assert first != second  # each epoch is reshuffled
    assert (sampler.epoch, sampler.position) == (1, 10)  # the next epoch is shuffled on the next draw


def test_sampler_is_seeded():
    def draws(seed):
        return [ex.prompt for b in islice(PromptSampler(make_examples(10), 3, seed=seed), 4) for ex in b]

    assert draws(0) == draws(0)
    assert draws(0) != draws(1)


@pytest.mark.parametrize("stop_after", [1, 2, 5, 7])  # 5: exactly at an epoch end (10 examples, batch 2)
def test_sampler_resume_continues_exactly(stop_after):
    examples = make_examples(10)
    uninterrupted = list(islice(PromptSampler(examples, 2, seed=3), 12))
    first = PromptSampler(examples, 2, seed=3)
    head = list(islice(first, stop_after))
    state = json.loads(json.dumps(first.state_dict()))  # the state survives JSON (and torch.save)
    resumed = PromptSampler(examples, 2, seed=3)
    resumed.load_state_dict(state)
    assert head + list(islice(resumed, 12 - stop_after)) == uninterrupted


def test_sampler_refuses_state_of_other_data_or_seed():
    state = PromptSampler(make_examples(10), 2, seed=3).state_dict()
    with pytest.raises(ValueError, match="prompts or the seed differ"):
        PromptSampler(make_examples(11), 2, seed=3).load_state_dict(state)
    with pytest.raises(ValueError, match="prompts or the seed differ"):
        PromptSampler(make_examples(10), 2, seed=4).load_state_dict(state)


def test_sampler_batch_larger_than_dataset():
    batch = next(PromptSampler(make_examples(3), batch_size=7, seed=0))
    assert len(batch) == 7 and {ex.prompt for ex in batch} == {"p0", "p1", "p2"}


def test_sampler_argument_checks():
    with pytest.raises(ValueError, match="at least one example"):
        PromptSampler([], 2)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        PromptSampler(make_examples(2), 0)
