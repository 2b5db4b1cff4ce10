"""Measure the demo's models on held-out problems and write what a reader needs: table, plot, samples.

`score_model` evaluates one model with aha.train.evaluate (the same evaluation GRPO runs), greedy and
sampled at the training temperature; `write_report` turns the scores and the GRPO metrics into
report.md, demo.png and samples.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from aha.data.prompts import PromptExample
from aha.demo.tasks import final_answer, uses_scratchpad
from aha.models.loading import load_model, load_tokenizer
from aha.rewards.base import RewardSpec
from aha.rollout import make_engine
from aha.rollout.base import SamplingParams
from aha.train.evaluate import evaluate

SCRATCHPAD_KEY = "reward/gold_answer/scratchpad_share"


@dataclass
class DecodingScore:
    accuracy: float
    length_mean: float  # completion tokens, EOS included
    scratchpad_share: float
    scratchpad_accuracy: float | None  # accuracy of the completions that show their working (None if none)
    direct_accuracy: float | None  # accuracy of the direct answers (None if none)
    completions: list[str]  # in held-out order (the first sample of each problem)


@dataclass
class ModelScore:
    name: str
    greedy: DecodingScore
    sampled: DecodingScore  # temperature 1.0, `samples` per problem


def score_model(
    name: str,
    model_dir: Path,
    examples: list[PromptExample],
    rewards: list[RewardSpec],
    max_new_tokens: int,
    samples: int,
    seed: int,
) -> ModelScore:
    """Held-out accuracy of the model in `model_dir`, greedy and sampled (T = 1, `samples` per problem)."""
    model = load_model(str(model_dir)).eval()
    engine = make_engine("native", model, load_tokenizer(str(model_dir)))

    def decode(temperature: float, n: int) -> DecodingScore:
        params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
        result = evaluate(
            engine, examples, rewards, params, samples_per_prompt=n, keep_samples=len(examples) * n
        )
        rows = result.samples
        shown = [row["completion"] for row in rows[::n]]
        with_pad = [row["reward"] >= 1.0 for row in rows if uses_scratchpad(row["completion"])]
        direct = [row["reward"] >= 1.0 for row in rows if not uses_scratchpad(row["completion"])]
        return DecodingScore(
            accuracy=result.accuracy,
            length_mean=result.completion_length_mean,
            scratchpad_share=len(with_pad) / len(rows),
            scratchpad_accuracy=sum(with_pad) / len(with_pad) if with_pad else None,
            direct_accuracy=sum(direct) / len(direct) if direct else None,
            completions=shown,
        )

    return ModelScore(name, greedy=decode(0.0, 1), sampled=decode(1.0, samples))


def accuracy_table(teacher_accuracy: float, scores: list[ModelScore], show_scratchpad: bool) -> str:
    """Markdown table: one row for the teacher, one per model."""
    head = ["model", "greedy accuracy", "sampled accuracy (T=1)", "mean greedy length (tokens)"]
    if show_scratchpad:
        head += ["scratchpad share", "accuracy with / without scratchpad"]
    rows = [
        ["teacher (writes the demonstrations)", "", _pct(teacher_accuracy), ""] + ([""] * 2 * show_scratchpad)
    ]
    for s in scores:
        row = [s.name, _pct(s.greedy.accuracy), _pct(s.sampled.accuracy), f"{s.greedy.length_mean:.1f}"]
        if show_scratchpad:
            split = f"{_pct(s.sampled.scratchpad_accuracy)} / {_pct(s.sampled.direct_accuracy)}"
            row += [_pct(s.sampled.scratchpad_share), split]
        rows.append(row)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    return "\n".join([*lines, *("| " + " | ".join(r) + " |" for r in rows)])


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def samples_table(examples: list[PromptExample], before: ModelScore, after: ModelScore, rows: int) -> str:
    """A few held-out problems with the greedy completion before and after RL (✓ right, ✗ wrong)."""
    lines = [f"| problem | answer | {before.name} | {after.name} |", "|---|---|---|---|"]
    for i in _interesting(examples, before, rows):
        answer = str(examples[i].fields["answer"])
        cells = [f"`{_mark(s.greedy.completions[i], answer)}`" for s in (before, after)]
        lines.append(f"| `{examples[i].prompt}` | {answer} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _interesting(examples: list[PromptExample], before: ModelScore, rows: int) -> list[int]:
    """Mostly problems the model got wrong before RL (what changed), then a few it already got right."""
    wrong = [
        i
        for i, ex in enumerate(examples)
        if final_answer(before.greedy.completions[i]) != str(ex.fields["answer"])
    ]
    right = [i for i in range(len(examples)) if i not in set(wrong)]
    picked = wrong[: rows - rows // 3] + right[: rows // 3]
    return sorted(picked)[:rows]


def _mark(completion: str, answer: str) -> str:
    return f"{completion} {'✓' if final_answer(completion) == answer else '✗'}"


def plot_demo(history: list[dict], out_png: Path, title: str, show_scratchpad: bool) -> Path:
    """GRPO curves. Chain of thought: accuracy and mean response length side by side (as R1-Zero's paper
    plots them), then the scratchpad share and the KL; otherwise reward and accuracy, KL, length, entropy."""
    fig = Figure(figsize=(12, 6.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2).ravel()
    accuracy = [
        ("reward/mean", "training reward (sampled accuracy)"),
        ("eval/accuracy", "held-out accuracy (greedy)"),
    ]
    length = [("completion/length_mean", "mean response length (tokens, training samples)")]
    kl = [("kl", "KL(policy || SFT model)")]
    if show_scratchpad:
        panels = [accuracy, length, [(SCRATCHPAD_KEY, "scratchpad share (training samples)")], kl]
    else:
        panels = [accuracy, kl, length, [("entropy", "policy entropy (nats/token)")]]
    for ax, keys in zip(axes, panels, strict=True):
        _curves(ax, history, keys)
        if keys[0][0] in ("reward/mean", SCRATCHPAD_KEY):
            ax.set_ylim(-0.02, 1.02)
    fig.suptitle(title)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    return out_png


def _curves(ax, history: list[dict], keys: list[tuple[str, str]]) -> None:
    for key, label in keys:
        points = [(row["step"], row[key]) for row in history if isinstance(row.get(key), (int, float))]
        if points:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, label=label, marker="." if len(points) < 30 else None)
    ax.set_xlabel("GRPO step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
