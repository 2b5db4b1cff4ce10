"""`aha report RUN_DIR`: the HTML page of a real tiny GRPO run holds its curves, evaluation, samples,
timing, memory and config, taken from the run's files, and loads nothing from anywhere."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from aha.cli import main
from aha.config import load_config
from aha.models.tiny import create_tiny_model
from aha.track.metrics import read_metrics
from aha.track.report import render_report, write_html_report
from aha.track.samples import read_samples
from aha.track.svg import line_chart, nice_ticks
from aha.train.grpo import GRPORunConfig, run_grpo

HELPERS = Path(__file__).parent / "helpers"


class Page(HTMLParser):
    """Every element as (tag, attrs, text directly inside it), and the rows of each table."""

    def __init__(self, html: str):
        super().__init__()
        self.elements: list[tuple[str, dict, list[str]]] = []
        self.tables: list[tuple[str, list[list[str]]]] = []  # (id of the enclosing section, rows)
        self._open: list[tuple[str, dict, list[str]]] = []
        self._section = ""
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        element = (tag, dict(attrs), [])
        self.elements.append(element)
        if tag == "section":
            self._section = element[1]["id"]
        if tag == "table":
            self.tables.append((self._section, []))
        if tag == "tr":
            self.tables[-1][1].append([])
        if tag in ("td", "th"):
            self.tables[-1][1][-1].append("")
        if tag not in ("circle", "rect", "line", "polyline", "meta"):
            self._open.append(element)

    def handle_endtag(self, tag):
        while self._open and self._open.pop()[0] != tag:
            pass

    def handle_data(self, data):
        if self._open:
            self._open[-1][2].append(data)
        if self.tables and self.tables[-1][1] and self.tables[-1][1][-1] and self._inside("td", "th"):
            self.tables[-1][1][-1][-1] += data

    def _inside(self, *tags: str) -> bool:
        return any(t in tags for t, _, _ in self._open)

    def find(self, tag: str, **attrs: str) -> list[tuple[str, dict, list[str]]]:
        return [e for e in self.elements if e[0] == tag and all(e[1].get(k) == v for k, v in attrs.items())]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    tiny = create_tiny_model(root / "tiny", seed=0)
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(HELPERS))
        cfg = load_config(
            GRPORunConfig,
            overrides=[
                f"model.path={tiny}",
                f"run.output_dir={root / 'run'}",
                "run.progress=false",
                "rewards.functions=[toy_rewards:digit_fraction]",
                "rollout.max_new_tokens=6",
                "rollout.group_size=4",
                "train.prompts_per_step=4",
                "data.arithmetic_train_size=64",
                "data.arithmetic_eval_size=8",
                "eval.num_prompts=8",
                "eval.every=2",
                "track.sample_every=2",
                "track.plot=false",
                "train.steps=6",
            ],
        )
        run_grpo(cfg)
    return root / "run"


def test_page_loads_nothing_from_anywhere(run_dir):
    html = render_report(run_dir)
    page = Page(html)
    assert (
        not page.find("script") and not page.find("link") and not page.find("img") and not page.find("iframe")
    )
    assert "url(" not in html and "@import" not in html
    assert all(e[1]["href"].startswith("#") for e in page.find("a"))
    ids = [e[1]["id"] for e in page.find("section")]
    assert ids == ["curves", "eval", "samples", "timing", "memory", "config"]


def test_curves_draw_every_logged_point(run_dir):
    page = Page(render_report(run_dir))
    rows = read_metrics(run_dir)
    lines = {e[1]["data-series"]: e[1]["points"].split() for e in page.find("polyline")}
    reward_steps = [row["step"] for row in rows if math.isfinite(row.get("reward/mean", math.nan))]
    assert len(lines["reward/mean"]) == len(reward_steps) == 6
    titles = {"".join(e[2]) for e in page.find("text") if e[1].get("class") == "title"}
    assert {"reward/mean, eval/accuracy", "kl", "completion/length_mean", "entropy"} <= titles
    # every metric has a chart: the headline ones first, the rest under "every other metric"
    keys = {k for row in rows for k, v in row.items() if k != "step" and math.isfinite(v)}
    assert keys <= set(lines)


def test_evaluation_samples_timing_memory_and_config_come_from_the_run_files(run_dir):
    page = Page(render_report(run_dir, sample_steps=2, samples_per_step=5))
    tables = {}
    for section, rows in page.tables:
        tables.setdefault(section, []).append(rows)
    rows = read_metrics(run_dir)

    (evaluation,) = tables["eval"]
    assert evaluation[0] == ["step", "eval/accuracy", "eval/reward_mean", "eval/length_mean"]
    eval_rows = [row for row in rows if "eval/accuracy" in row]
    assert [int(r[0]) for r in evaluation[1:]] == [row["step"] for row in eval_rows] == [0, 2, 4, 6]
    assert [float(r[2]) for r in evaluation[1:]] == pytest.approx(
        [row["eval/reward_mean"] for row in eval_rows],
        rel=1e-3,  # shown with 4 significant digits
    )

    samples = read_samples(run_dir)
    first, last = tables["samples"]  # sample_steps=2: the first and the last logged step
    steps = sorted({row["step"] for row in samples})
    headings = ["".join(e[2]).strip() for e in page.find("h3")]
    assert headings == [f"step {steps[0]}", f"step {steps[-1]}"]
    assert first[0] == ["prompt", "completion", "reward", "advantage"]
    expected = [row for row in samples if row["step"] == steps[-1]][:5]
    assert [r[1] for r in last[1:]] == [row["completion"] for row in expected]
    assert [float(r[3]) for r in last[1:]] == pytest.approx([row["advantage"] for row in expected], abs=1e-3)

    (timing,) = tables["timing"]
    phases = {r[0]: r for r in timing[1:]}
    assert {"time/generate_s", "time/reward_s", "time/update_s", "time/step_s"} <= set(phases)
    total = sum(row["time/generate_s"] for row in rows if "time/generate_s" in row)
    assert float(phases["time/generate_s"][2]) == pytest.approx(total, rel=1e-3)

    (memory,) = tables["memory"]
    (resources,) = [json.loads(line) for line in (run_dir / "resources.jsonl").read_text().splitlines()]
    assert memory[1][0] == "peak resident memory (RSS)" and resources["last_step"] == 6
    assert float(memory[1][1].split()[0]) == pytest.approx(resources["peak_rss_gb"], rel=1e-3)

    (config,) = [e for e in page.find("pre") if e[1].get("class") == "config"]
    assert "".join(config[2]) == (run_dir / "config.yaml").read_text()


def test_a_run_without_samples_or_evaluation_says_so(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": 2.0 / s, "time/step_s": 0.5}) + "\n" for s in range(1, 4))
    )
    page = Page(render_report(tmp_path))
    notes = {"".join(e[2]) for e in page.find("p") if e[1].get("class") == "none"}
    assert "this run logged no held-out evaluation" in notes
    assert any(note.startswith("no sample completions were logged") for note in notes)
    assert any(note.startswith("no memory figures were logged") for note in notes)


def test_cli_writes_the_page_and_names_a_wrong_directory(run_dir, tmp_path, capsys):
    out = tmp_path / "page.html"
    assert main(["report", str(run_dir), f"output={out}"]) == 0
    assert capsys.readouterr().out.strip() == f"report: {out}"
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "run_dir:" in capsys.readouterr().err
    assert write_html_report(run_dir) == run_dir / "report.html"


def test_nice_ticks_are_round_and_cover_the_range():
    assert nice_ticks(0.0, 1.0) == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert nice_ticks(3.0, 97.0) == pytest.approx([20.0, 40.0, 60.0, 80.0])
    assert nice_ticks(-0.013, 0.011) == pytest.approx([-0.01, -0.005, 0.0, 0.005, 0.01])


def test_a_nan_breaks_the_line():
    svg = line_chart([("loss", [1, 2, 3, 4, 5], [1.0, 2.0, math.nan, 3.0, 4.0])], "loss")
    lines = [e for e in Page(svg).find("polyline")]
    assert [len(e[1]["points"].split()) for e in lines] == [2, 2]
    with pytest.raises(ValueError, match="no finite value"):
        line_chart([("loss", [1], [math.nan])], "loss")


def test_report_does_not_import_torch(run_dir, tmp_path):
    """`aha report` reads files only: it starts in a fraction of a second, on a machine without torch too."""
    out = tmp_path / "page.html"
    code = (
        "import sys; from aha.cli import main; rc = main(['report', sys.argv[1], 'output=' + sys.argv[2]]); "
        "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(run_dir), str(out)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert out.exists()


def test_memory_shows_the_largest_cuda_peak_and_its_step(tmp_path):
    """CUDA runs log memory/cuda_*_peak_gb every step (aha.track.memory); the page shows the largest."""
    peaks = [(1, 3.5, 4.0), (2, 6.25, 8.0), (3, 5.0, 8.0)]
    (tmp_path / "metrics.jsonl").write_text(
        "".join(
            json.dumps({"step": s, "memory/cuda_allocated_peak_gb": a, "memory/cuda_reserved_peak_gb": r})
            + "\n"
            for s, a, r in peaks
        )
    )
    page = Page(render_report(tmp_path))
    (memory,) = [rows for section, rows in page.tables if section == "memory"]
    assert memory[1:] == [
        ["memory/cuda_allocated_peak_gb", "6.25 GB", "step 2"],
        ["memory/cuda_reserved_peak_gb", "8 GB", "step 2"],  # the first step that reached the peak
    ]
