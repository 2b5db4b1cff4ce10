"""Preference loaders: pairs, K-wise rankings, hh-rlhf (its real edge-case lines), line-exact errors."""

import gzip
import json
from pathlib import Path

import pytest

from aha.data.preferences import load_hh_rlhf, load_pairs, load_preferences, load_rankings, split_dialogue
from aha.data.prompts import DataError

EDGE = Path(__file__).parent / "data" / "hh-rlhf" / "helpful-base-edge-cases.jsonl"
SHARED = Path("/work/shared/data/hh-rlhf")


def write(tmp_path, rows, name="p.jsonl"):
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_pairs_with_optional_margin(tmp_path):
    path = write(
        tmp_path,
        [
            {"prompt": "q", "chosen": "a", "rejected": "b", "margin": 2},
            {"prompt": "r", "chosen": "c", "rejected": "d"},
        ],
    )
    rows = load_pairs(path)
    assert [r.responses for r in rows] == [("a", "b"), ("c", "d")]
    assert [r.margin for r in rows] == [2, None]
    assert rows[1].ties == (0, 1)


@pytest.mark.parametrize(
    "record, message",
    [
        ({"prompt": "q", "chosen": "a"}, 'line 2: missing field "rejected"'),
        ({"prompt": "q", "chosen": 3, "rejected": "b"}, 'line 2: field "chosen" must be a string'),
        ({"prompt": "q", "chosen": "a", "rejected": "b", "margin": "big"}, 'line 2: field "margin"'),
        ("{not json", "line 2: invalid JSON"),
    ],
)
def test_bad_pair_names_file_line_field(tmp_path, record, message):
    path = write(tmp_path, [{"prompt": "q", "chosen": "a", "rejected": "b"}, record])
    with pytest.raises(DataError, match=message) as e:
        load_pairs(path)
    assert str(path) in str(e.value)


def test_rankings_with_ties(tmp_path):
    path = write(
        tmp_path,
        [
            {"prompt": "q", "responses": ["a", "b", "c"], "ties": [0, 0, 1]},
            {"prompt": "r", "responses": ["x", "y"]},
        ],
    )
    rows = load_rankings(path)
    assert rows[0].ties == (0, 0, 1) and rows[1].ties == (0, 1)
    assert load_preferences(path, "rankings") == rows


@pytest.mark.parametrize(
    "record, message",
    [
        ({"prompt": "q", "responses": ["a"]}, 'line 1: field "responses" must be a list of at least 2'),
        ({"prompt": "q", "responses": ["a", "b"], "ties": [1, 0]}, "non-decreasing"),
        ({"prompt": "q", "responses": ["a", "b"], "ties": [0]}, 'field "ties" must be a list of 2'),
        ({"prompt": "q", "responses": ["a", "b"], "ties": [0, 0]}, "one group"),
    ],
)
def test_bad_ranking(tmp_path, record, message):
    with pytest.raises(DataError, match=message):
        load_rankings(write(tmp_path, [record]))


def test_split_at_last_assistant_turn():
    d = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: like this"
    assert split_dialogue(d) == (
        "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant:",
        " like this",
    )
    assert split_dialogue("\n\nHuman: no reply") is None


def test_hh_rlhf_edge_case_lines_are_counted():
    rows, report = load_hh_rlhf(EDGE)
    assert report.identical == [2, 5]  # helpful-base lines 722, 2169
    assert report.prompt_mismatch == [3, 6]  # lines 169, 355
    assert report.empty_reply == [4, 7]  # lines 121, 741: kept
    assert report.summary() == {
        "records": 8,
        "kept": 4,
        "dropped_identical": 2,
        "dropped_prompt_mismatch": 2,
        "kept_empty_reply": 2,
    }
    assert [r.source.rsplit(" ", 1)[1] for r in rows] == ["1", "4", "7", "8"]
    first = rows[0]
    assert first.prompt == "\n\nHuman: Hello, how are you?\n\nAssistant:"
    assert first.responses == (
        " Hi! I'm pretty well, thanks. How are you doing?",
        " I am just fine, how are you?",
    )
    empty = rows[1]
    assert "" in [r.strip() for r in empty.responses]


def test_hh_rlhf_record_without_assistant_turn_is_an_error(tmp_path):
    path = write(
        tmp_path, [{"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a"}], "x.jsonl.gz"
    )
    path.write_bytes(gzip.compress(path.read_bytes()))
    with pytest.raises(DataError, match=r'line 1: field "rejected" has no'):
        load_hh_rlhf(path)


@pytest.mark.skipif(not SHARED.is_dir(), reason="the shared hh-rlhf copy is not on this machine")
def test_hh_rlhf_full_files_match_readme_edge_cases():
    _, helpful = load_hh_rlhf(SHARED / "helpful-base-test.jsonl.gz")
    assert helpful.identical == [722, 2169]
    assert helpful.prompt_mismatch == [169, 355, 568, 744, 961, 1012, 1167, 1308, 1451]
    assert helpful.empty_reply == [121, 741, 1215, 2064]
    assert helpful.kept == 2354 - 11
    _, harmless = load_hh_rlhf(SHARED / "harmless-base-test.jsonl.gz")
    assert harmless.identical == [] and harmless.prompt_mismatch == [1255, 1689, 1951, 1953, 2037]
    assert harmless.empty_reply == [87, 517, 926, 1104]
