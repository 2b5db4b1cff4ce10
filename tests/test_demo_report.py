"""The demo report's tables, from hand-made scores (no model needed)."""

from __future__ import annotations

from aha.data.prompts import PromptExample
from aha.demo.report import DecodingScore, ModelScore, accuracy_table, samples_table


def _score(name: str, accuracy: float, completions: list[str], share: float = 0.0) -> ModelScore:
    decoding = DecodingScore(accuracy, 4.0, share, 0.9 if share else None, 0.5, completions)
    return ModelScore(name, greedy=decoding, sampled=decoding)


EXAMPLES = [PromptExample("58+67=", {"answer": "125"}), PromptExample("12+34=", {"answer": "46"})]


def test_accuracy_table_rows_and_columns():
    table = accuracy_table(
        0.652, [_score("after SFT", 0.5, []), _score("after RL", 0.99, [])], show_scratchpad=False
    )
    lines = table.splitlines()
    assert lines[0] == "| model | greedy accuracy | sampled accuracy (T=1) | mean greedy length (tokens) |"
    assert lines[2] == "| teacher (writes the demonstrations) |  | 65.2% |  |"
    assert lines[4] == "| after RL | 99.0% | 99.0% | 4.0 |"
    cot = accuracy_table(1.0, [_score("after RL", 0.9, [], share=0.95)], show_scratchpad=True).splitlines()
    assert cot[0].endswith("| scratchpad share | accuracy with / without scratchpad |")
    assert cot[3] == "| after RL | 90.0% | 90.0% | 4.0 | 95.0% | 90.0% / 50.0% |"


def test_samples_table_marks_right_and_wrong():
    before = _score("SFT", 0.5, ["115", "46"])
    after = _score("RL", 1.0, ["125", "46"])
    lines = samples_table(EXAMPLES, before, after, rows=3).splitlines()
    assert lines[0] == "| problem | answer | SFT | RL |"
    assert lines[2] == "| `58+67=` | 125 | `115 ✗` | `125 ✓` |"
    assert lines[3] == "| `12+34=` | 46 | `46 ✓` | `46 ✓` |"
