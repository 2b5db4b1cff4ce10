"""`aha report RUN_DIR`: one self-contained HTML page per run, readable offline.

Everything comes from the files every stage writes (metrics.jsonl, samples.jsonl, config.yaml,
resources.jsonl): curves as inline SVG (aha.track.svg), held-out evaluation over time, sample
completions with their rewards and advantages, the time per step by phase, peak memory and the resolved
config. The page loads nothing: no script, stylesheet, font or image from anywhere, so it can be mailed,
archived with the run, or opened on a machine without network.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any, ClassVar

from aha.config import ConfigError, option
from aha.track.jsonl import read_jsonl
from aha.track.metrics import METRICS_FILE, read_metrics
from aha.track.samples import SAMPLES_FILE, read_samples
from aha.track.svg import line_chart
from aha.track.trackers import sample_columns

REPORT_FILE = "report.html"
RESOURCES_FILE = "resources.jsonl"  # written by aha.track.memory.record_resources
# The curves shown first, when the run logged them (one chart per entry; a tuple shares one chart).
HEADLINE = (
    ("reward/mean", "eval/accuracy"),
    ("loss", "eval/loss"),
    ("kl",),
    ("completion/length_mean",),
    ("entropy",),
    ("grad_norm",),
    ("lr",),
)


@dataclass
class ReportCommand:
    run_dir: str = option(help="The run directory (holds metrics.jsonl); may be given without 'run_dir='.")
    output: str | None = option(None, help="Where to write the page (default: RUN_DIR/report.html).")
    sample_steps: int = option(3, help="Logged steps whose completions are shown: the first, the last, ...")
    samples_per_step: int = option(16, help="Completions shown per step (a GRPO group stays together).")
    positional: ClassVar[str] = "run_dir"  # `aha report RUN_DIR`

    def validate(self) -> None:
        if self.sample_steps < 0 or self.samples_per_step < 0:
            raise ConfigError("sample_steps and samples_per_step must be >= 0")


def run_report(cmd: ReportCommand) -> Path:
    """Write the page and print its path."""
    if not (Path(cmd.run_dir) / METRICS_FILE).exists():
        raise ConfigError(f"run_dir: {cmd.run_dir} holds no {METRICS_FILE}; give a run directory of aha")
    path = write_html_report(cmd.run_dir, cmd.output, cmd.sample_steps, cmd.samples_per_step)
    print(f"report: {path}")
    return path


def write_html_report(
    run_dir: Path | str, output: Path | str | None = None, sample_steps: int = 3, samples_per_step: int = 16
) -> Path:
    """Render the run in `run_dir` to `output` (default run_dir/report.html) and return its path."""
    run_dir = Path(run_dir)
    out = Path(output) if output is not None else run_dir / REPORT_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_report(run_dir, sample_steps, samples_per_step), encoding="utf-8")
    return out


def render_report(run_dir: Path, sample_steps: int = 3, samples_per_step: int = 16) -> str:
    rows = read_metrics(run_dir)
    samples = read_samples(run_dir) if (run_dir / SAMPLES_FILE).exists() else []
    resources = read_jsonl(run_dir / RESOURCES_FILE) if (run_dir / RESOURCES_FILE).exists() else []
    config = run_dir / "config.yaml"
    sections = [
        ("curves", "Curves", _curves(rows)),
        ("eval", "Held-out evaluation", _evaluation(rows)),
        ("samples", "Sample completions", _samples(samples, sample_steps, samples_per_step)),
        ("timing", "Time per step", _timing(rows)),
        ("memory", "Peak memory", _memory(rows, resources)),
        (
            "config",
            "Resolved config",
            _pre(config.read_text(encoding="utf-8")) if config.exists() else _none(),
        ),
    ]
    steps = [row["step"] for row in rows]
    summary = f"{len(rows)} logged rows, steps {min(steps)} to {max(steps)}" if rows else "no rows logged"
    nav = " · ".join(f'<a href="#{key}">{title}</a>' for key, title, _ in sections)
    body = "\n".join(
        f'<section id="{key}"><h2>{title}</h2>\n{html}</section>' for key, title, html in sections
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>aha run: {escape(run_dir.name)}</title>
<style>{_CSS}</style></head>
<body>
<header><h1>aha run: {escape(run_dir.name)}</h1>
<p class="meta">{escape(str(run_dir.resolve()))} · {summary} · written {time.strftime("%Y-%m-%d %H:%M %Z")}</p>
<nav>{nav}</nav></header>
{body}
</body></html>
"""


def _numeric_keys(rows: list[dict[str, Any]]) -> list[str]:
    """Metric names with at least one finite number, in first-seen order."""
    keys: dict[str, None] = {}
    for row in rows:
        for key, value in row.items():
            if key != "step" and _finite(value):
                keys[key] = None
    return list(keys)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _series(rows: list[dict[str, Any]], key: str) -> tuple[str, list[float], list[float]]:
    """(key, steps, values) over the rows that hold `key` (NaN kept: it breaks the drawn line)."""
    points = [(row["step"], float(row[key])) for row in rows if isinstance(row.get(key), (int, float))]
    return key, [p[0] for p in points], [p[1] for p in points]


def _chart(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> str:
    present = [k for k in keys if any(_finite(row.get(k)) for row in rows)]
    return line_chart([_series(rows, k) for k in present], ", ".join(present))


def _curves(rows: list[dict[str, Any]]) -> str:
    available = set(_numeric_keys(rows))
    headline = [keys for keys in HEADLINE if available & set(keys)]
    shown = {k for keys in headline for k in keys}
    rest = [k for k in _numeric_keys(rows) if k not in shown]
    if not headline and not rest:
        return _none()
    charts = "".join(_chart(rows, keys) for keys in headline)
    others = "".join(_chart(rows, (k,)) for k in rest)
    more = f"<details><summary>every other metric ({len(rest)})</summary><div class='charts'>{others}</div></details>"
    return f"<div class='charts'>{charts}</div>" + (more if rest else "")


def _evaluation(rows: list[dict[str, Any]]) -> str:
    evals = [row for row in rows if any(k.startswith("eval/") and _finite(v) for k, v in row.items())]
    if not evals:
        return _none("this run logged no held-out evaluation")
    keys = [k for k in _numeric_keys(evals) if k.startswith("eval/")]
    head = "".join(f"<th>{escape(k)}</th>" for k in ["step", *keys])
    body = "".join(
        "<tr>" + f"<td>{row['step']}</td>" + "".join(f"<td>{_fmt(row.get(k))}</td>" for k in keys) + "</tr>"
        for row in evals
    )
    charts = "".join(_chart(evals, (k,)) for k in keys) if len(evals) > 1 else ""
    return f"<div class='charts'>{charts}</div><table class='num'><tr>{head}</tr>{body}</table>"


def _samples(samples: list[dict[str, Any]], n_steps: int, per_step: int) -> str:
    steps = sorted({row["step"] for row in samples})
    if not steps or not n_steps:
        return _none("no sample completions were logged (GRPO writes them every track.sample_every steps)")
    picked = sorted({steps[round(i * (len(steps) - 1) / max(n_steps - 1, 1))] for i in range(n_steps)})
    parts = []
    for step in picked:
        at_step = [{k: v for k, v in row.items() if k != "step"} for row in samples if row["step"] == step]
        shown = at_step[:per_step]
        columns = sample_columns(shown)
        head = "".join(f"<th>{escape(c)}</th>" for c in columns)
        body = "".join(
            "<tr>" + "".join(_sample_cell(c, row.get(c)) for c in columns) + "</tr>" for row in shown
        )
        parts.append(
            f"<h3>step {step} <span class='meta'>({len(shown)} of {len(at_step)} completions)</span></h3>"
            f"<table class='samples'><tr>{head}</tr>{body}</table>"
        )
    return "\n".join(parts)


def _sample_cell(column: str, value: Any) -> str:
    if _finite(value):
        sign = "pos" if value > 0 else "neg" if value < 0 else "zero"
        return f"<td class='num {sign}'>{_fmt(value)}</td>"
    return f"<td><pre>{escape('' if value is None else str(value))}</pre></td>"


def _timing(rows: list[dict[str, Any]]) -> str:
    keys = [k for k in _numeric_keys(rows) if k.startswith("time/")]
    if not keys:
        return _none("this run logged no timings")
    steps = [row for row in rows if _finite(row.get("time/step_s"))]
    step_total = sum(row["time/step_s"] for row in steps)
    lines = []
    for key in keys:
        values = [row[key] for row in rows if _finite(row.get(key))]
        share = f"{100 * sum(values) / step_total:.1f}%" if step_total and key != "time/step_s" else ""
        lines.append((key, sum(values) / len(values), sum(values), share))
    body = "".join(
        f"<tr><td>{escape(k)}</td><td>{_fmt(mean)}</td><td>{_fmt(total)}</td><td>{share}</td></tr>"
        for k, mean, total, share in lines
    )
    note = (
        f"<p>{len(steps)} training steps took {step_total:.1f} s in all (time/step_s; the evaluation "
        "before the first step is not part of any step).</p>"
    )
    table = "<tr><th>phase</th><th>mean s per step</th><th>total s</th><th>share of step time</th></tr>"
    return note + f"<table class='num'>{table}{body}</table>"


def _memory(rows: list[dict[str, Any]], resources: list[dict[str, Any]]) -> str:
    parts = []
    for key in (k for k in _numeric_keys(rows) if k.startswith("memory/")):
        top = max((row for row in rows if _finite(row.get(key))), key=lambda row: row[key])
        parts.append(
            f"<tr><td>{escape(key)}</td><td>{_fmt(top[key])} GB</td><td>step {top['step']}</td></tr>"
        )
    for i, res in enumerate(resources, start=1):
        rss = res.get("peak_rss_gb")
        if _finite(rss):
            what = f"process {i} (to step {res.get('last_step')}, {_fmt(res.get('wall_s'))} s)"
            parts.append(
                f"<tr><td>peak resident memory (RSS)</td><td>{_fmt(rss)} GB</td><td>{what}</td></tr>"
            )
    if not parts:
        return _none(
            "no memory figures were logged (CUDA peaks per step on CUDA devices; RSS at a run's end)"
        )
    return f"<table class='num'><tr><th>what</th><th>peak</th><th>when</th></tr>{''.join(parts)}</table>"


def _fmt(value: Any) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "" if value is None else escape(str(value))
    return "nan" if not math.isfinite(value) else f"{value:.4g}"


def _pre(text: str) -> str:
    return f"<pre class='config'>{escape(text)}</pre>"


def _none(why: str = "not recorded for this run") -> str:
    return f"<p class='none'>{escape(why)}</p>"


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1400px;padding:0 20px 40px;color:#222}
header{border-bottom:1px solid #ddd;margin-bottom:8px}h1{font-size:22px;margin:16px 0 2px}
h2{font-size:18px;margin:24px 0 8px;border-bottom:1px solid #eee}h3{font-size:15px;margin:14px 0 6px}
.meta{color:#666;font-size:12px;font-weight:normal}nav{margin:6px 0 10px}nav a{color:#1f5fa8}
.charts{display:flex;flex-wrap:wrap;gap:8px}.chart{background:#fff;border:1px solid #e4e4e4}
.chart .title{font-size:12px;font-weight:600}.chart .frame{fill:none;stroke:#bbb}
.chart .grid{stroke:#eee}.chart .ytick{font-size:10px;text-anchor:end;fill:#555}
.chart .xtick{font-size:10px;text-anchor:middle;fill:#555}.chart .xlabel{font-size:10px;text-anchor:end;fill:#555}
.chart .line{fill:none;stroke-width:1.6}.chart .legend{font-size:11px}
table{border-collapse:collapse;margin:6px 0}td,th{border:1px solid #ddd;padding:3px 8px;vertical-align:top;text-align:left}
th{background:#f5f5f5}.num td{font-variant-numeric:tabular-nums}td.num{text-align:right}
td.pos{background:#e9f6ea}td.neg{background:#fbeaea}
.samples pre{margin:0;white-space:pre-wrap;word-break:break-word;max-width:560px;font-size:12px}
pre.config{background:#f7f7f7;padding:10px;font-size:12px;max-height:480px;overflow:auto}
.none{color:#888;font-style:italic}details{margin-top:8px}summary{cursor:pointer;color:#1f5fa8}
"""
