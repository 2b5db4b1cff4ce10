"""`aha demo scenario=hacking`: reward hacking caught in the act, SFT -> reward model -> RL on a CPU.

The task (aha.demo.hacking_task): a hidden gold rule, a teacher, labellers with quirks. `aha rlhf`'s
pipeline (aha.train.rlhf) trains the policy by SFT on the teacher, a reward model on the labellers'
pairs (started from the SFT model), then GRPO against that reward model with the gold rule as a
monitor (`rewards.monitors`, never optimised) and the hacking watch on. The plot puts gold and proxy
(reward-model) reward at each evaluation against sqrt(KL(policy || SFT model)), as Gao et al. (2022)
do, with the step where the watch fired marked.

Variants (`hacking.*`): a larger KL weight; the proxy as the mean of two reward models trained on
separate labellings (`proxy=ensemble`); a reward model trained on a second labelling as the watch's
monitor instead of the gold rule (`monitor=heldout_rm`: what a practitioner without gold can watch).

Run directory (default runs/demo-hacking): data/, rlhf/ (the pipeline: sft/, rm/, grpo/), rm-2/ (the
second reward model, for the variants), hacking.png, report.md, curve.json.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from aha.config import ConfigError, config_to_yaml, load_config, option
from aha.demo.hacking_task import HackingFiles, write_task_files
from aha.models.tiny import TinyModelSpec, create_tiny_model
from aha.train.reward_model import run_rm
from aha.train.rlhf import RLHFConfig, run_rlhf

GOLD = "aha.demo.hacking_task:gold"


@dataclass
class HackingDemoConfig:
    beta: float = option(0.05, help="KL weight of the RL stage (larger: slower drift from the SFT model).")
    proxy: str = option(
        "rm",
        choices=("rm", "ensemble"),
        help="What RL optimises: rm (one reward model) or ensemble (the mean of two, trained on "
        "separate labellings).",
    )
    monitor: str = option(
        "gold",
        choices=("gold", "heldout_rm"),
        help="What the hacking watch compares with the proxy: gold (the hidden rule) or heldout_rm (a "
        "reward model trained on a second labelling; the gold rule is still logged).",
    )
    rl_steps: int | None = option(None, help="RL steps (None = the preset's).")
    patience: int = option(3, help="track.hacking.patience of the RL stage.")


@dataclass(frozen=True)
class _Preset:
    demos: int
    pairs: int
    heldout: int
    sft_steps: int
    rm_steps: int
    rl_steps: int
    eval_every: int
    eval_prompts: int


# The same task, data and models; the quick preset (the test suite's) stops at 40 RL steps, past the
# gold reward's peak and fall, and evaluates on half the held-out words.
FULL = _Preset(
    demos=2000,
    pairs=1500,
    heldout=128,
    sft_steps=120,
    rm_steps=200,
    rl_steps=60,
    eval_every=4,
    eval_prompts=128,
)
QUICK = _Preset(
    demos=2000,
    pairs=1500,
    heldout=128,
    sft_steps=120,
    rm_steps=200,
    rl_steps=40,
    eval_every=4,
    eval_prompts=64,
)


@dataclass
class HackingResult:
    run_dir: Path
    curve: list[dict]  # per evaluation: step, kl (sequence), sqrt_kl, gold, proxy, length
    watch_step: int | None  # the evaluation at which the watch fired (None: it did not)
    watch_best_step: int | None  # the monitor's best evaluation then
    watched: list[str]  # the monitors the watch followed
    seconds: float


def run_hacking_demo(cfg, resume: bool = False) -> HackingResult:
    """`cfg` is the demo's DemoConfig (seed, quick, output_dir, overwrite, threads, progress, hacking)."""
    t0 = time.perf_counter()
    preset = QUICK if cfg.quick else FULL
    h: HackingDemoConfig = cfg.hacking
    run_dir = _prepare(
        Path(cfg.output_dir or ("runs/demo-hacking" + ("-quick" if cfg.quick else ""))), cfg, resume
    )
    # One thread unless told: the model is tiny, and on a loaded 2-core machine two threads spinning
    # against each other made a reward-model step take 10 s instead of 0.06 s (docs/demo.md).
    torch.set_num_threads(cfg.threads or 1)
    files = write_task_files(run_dir / "data", cfg.seed, preset.demos, preset.pairs, preset.heldout)
    init = run_dir / "tiny-model"
    if not (init / "config.json").exists():
        create_tiny_model(
            init,
            TinyModelSpec(hidden_size=64, num_layers=2, intermediate_size=192, max_position_embeddings=32),
            seed=cfg.seed,
        )
    second_rm = run_dir / "rm-2" / "final"
    pipeline_cfg = _rlhf_config(run_dir, init, files, preset, cfg, second_rm)
    if h.proxy == "ensemble" or h.monitor == "heldout_rm":
        _second_rm(run_dir, files, cfg.seed, pipeline_cfg)
    pipeline = run_rlhf(pipeline_cfg)
    history = pipeline.results.get("grpo").history if "grpo" in pipeline.results else _read_history(run_dir)
    curve = hacking_curve(history)
    fired = [row for row in history if any(k.startswith("hacking/") and k.endswith("/fired") for k in row)]
    watch_step = fired[0]["step"] if fired else None
    best = next((v for k, v in fired[0].items() if k.endswith("/best_step")), None) if fired else None
    watched = pipeline_cfg.grpo.track.hacking.monitors or []
    result = HackingResult(
        run_dir, curve, watch_step, None if best is None else int(best), watched, time.perf_counter() - t0
    )
    plot_hacking(
        curve,
        watch_step,
        run_dir / "hacking.png",
        f"aha demo: hacking (beta={h.beta}, proxy={h.proxy}, monitor={h.monitor})",
    )
    (run_dir / "curve.json").write_text(
        json.dumps(
            {
                "curve": curve,
                "watch_step": watch_step,
                "watch_best_step": result.watch_best_step,
                "seconds": result.seconds,
            },
            indent=2,
        )
        + "\n"
    )
    (run_dir / "rlhf.yaml").write_text(config_to_yaml(pipeline_cfg))  # `aha rlhf --config` runs it again
    report = f"# aha demo: hacking\n\n{_summary(result, bool(pipeline.ran))}\n\n{curve_table(curve)}\n\nPlot: hacking.png\n"
    (run_dir / "report.md").write_text(report, encoding="utf-8")
    print(report)
    return result


def curve_table(curve: list[dict]) -> str:
    lines = ["| RL step | sqrt(KL) | gold | proxy | mean length |", "|---|---|---|---|---|"]
    lines += [
        f"| {p['step']} | {p['sqrt_kl']:.2f} | {p['gold']:.3f} | {p['proxy']:.3f} | {p['length']:.1f} |"
        for p in curve
    ]
    return "\n".join(lines)


def hacking_curve(history: list[dict]) -> list[dict]:
    """One point per evaluation: gold and proxy reward on held-out prompts, and the sequence KL of the
    step's training batch (per-token KL x mean completion length; none at step 0: the SFT model)."""
    points = []
    for row in history:
        if "eval/monitor/gold" not in row:
            continue
        kl = row.get("kl", 0.0) * row.get("completion/length_mean", 0.0) if row["step"] else 0.0
        points.append(
            {
                "step": row["step"],
                "kl": kl,
                "sqrt_kl": math.sqrt(max(kl, 0.0)),
                "gold": row["eval/monitor/gold"],
                "proxy": row["eval/reward_mean"],
                "length": row["eval/length_mean"],
            }
        )
    return points


def plot_hacking(curve: list[dict], watch_step: int | None, out_png: Path, title: str) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    x = [p["sqrt_kl"] for p in curve]
    left.plot(x, [p["gold"] for p in curve], marker=".", label="gold reward (hidden rule)")
    twin = left.twinx()
    twin.plot(x, [p["proxy"] for p in curve], marker=".", color="tab:orange", label="proxy (reward model)")
    twin.set_ylabel("proxy reward (normalised RM score)")
    left.set_xlabel("sqrt(KL(policy || SFT model)), nats")
    left.set_ylabel("gold reward")
    steps = [p["step"] for p in curve]
    right.plot(steps, [p["gold"] for p in curve], marker=".", label="gold reward")
    length = right.twinx()
    length.plot(steps, [p["length"] for p in curve], marker=".", color="tab:green", label="mean reply length")
    length.set_ylabel("mean reply length (tokens, EOS included)")
    right.set_xlabel("RL step")
    right.set_ylabel("gold reward")
    if watch_step is not None:
        at = next(p for p in curve if p["step"] == watch_step)
        left.axvline(
            at["sqrt_kl"], color="red", linestyle="--", label=f"hacking watch fired (step {watch_step})"
        )
        right.axvline(
            watch_step, color="red", linestyle="--", label=f"hacking watch fired (step {watch_step})"
        )
    for ax in (left, right):
        ax.grid(alpha=0.3)
    handles = left.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    left.legend(handles=handles, fontsize=8, loc="lower left")
    right.legend(
        handles=right.get_legend_handles_labels()[0] + length.get_legend_handles_labels()[0], fontsize=8
    )
    fig.suptitle(title)
    fig.savefig(out_png, dpi=100)
    return out_png


def _rlhf_config(
    run_dir: Path, init: Path, files: HackingFiles, p: _Preset, cfg, second_rm: Path | None
) -> RLHFConfig:
    h = cfg.hacking
    common = [
        f"run.seed={cfg.seed}",
        f"run.progress={str(cfg.progress).lower()}",
        f"run.threads={cfg.threads or 1}",
        "model.device=cpu",
    ]
    functions, options = ["reward_model"], {"reward_model": {"normalize": "stored"}}
    monitors, monitor_options = [GOLD], {}
    if h.proxy == "ensemble":
        functions.append("aha.rewards.reward_model:RewardModelReward")
        options["aha.rewards.reward_model:RewardModelReward"] = {"path": str(second_rm)}
    watched = "gold"
    if h.monitor == "heldout_rm":
        monitors.append("reward_model")
        monitor_options["reward_model"] = {"path": str(second_rm)}
        watched = "reward_model"
    weights = [1.0 / len(functions)] * len(functions)
    overrides = [
        f"pipeline.output_dir={run_dir / 'rlhf'}",
        *(f"sft.{o}" for o in common),
        f"sft.model.path={init}",
        f"sft.data.train_file={files.sft}",
        f"sft.train.steps={p.sft_steps}",
        "sft.optim.lr=3e-3",
        "sft.optim.warmup_steps=5",
        *(f"rm.{o}" for o in common),
        f"rm.data.train_file={files.preferences}",
        f"rm.train.steps={p.rm_steps}",
        "rm.train.batch_size=16",
        "rm.optim.lr=1e-3",
        "rm.eval.every=0",
        *(f"grpo.{o}" for o in common),
        f"grpo.data.train_file={files.rl_train}",
        f"grpo.data.eval_file={files.heldout}",
        f"grpo.rewards.functions={json.dumps(functions)}",
        f"grpo.rewards.weights={weights}",
        f"grpo.rewards.options={json.dumps(options)}",
        f"grpo.rewards.monitors={json.dumps(monitors)}",
        f"grpo.rewards.monitor_options={json.dumps(monitor_options) if monitor_options else 'null'}",
        f"grpo.track.hacking.patience={h.patience}",
        f"grpo.track.hacking.monitors=[{watched}]",
        "grpo.rollout.group_size=8",
        "grpo.rollout.max_new_tokens=12",
        f"grpo.algo.beta={h.beta}",
        f"grpo.train.steps={h.rl_steps or p.rl_steps}",
        "grpo.train.prompts_per_step=8",
        "grpo.optim.lr=3e-4",
        f"grpo.eval.every={p.eval_every}",
        f"grpo.eval.num_prompts={p.eval_prompts}",
        "grpo.eval.greedy=false",
        "grpo.eval.success_threshold=1e9",
        "grpo.track.sample_every=0",
        "grpo.track.plot=false",
    ]
    return load_config(RLHFConfig, overrides=overrides)


def _second_rm(run_dir: Path, files: HackingFiles, seed: int, pipeline_cfg: RLHFConfig) -> Path:
    """A reward model on the second labelling (other prompts), started like the first from the SFT
    model (the pipeline runs up to SFT first; its later call skips that stage)."""
    out = run_dir / "rm-2"
    if (out / "final" / "reward_model.json").exists():
        return out / "final"
    until_sft = copy.deepcopy(pipeline_cfg)
    until_sft.pipeline.until = "sft"
    sft_final = run_rlhf(until_sft).outputs["sft"]
    rm_cfg = copy.deepcopy(pipeline_cfg.rm)
    rm_cfg.model.path = str(sft_final)
    rm_cfg.data.train_file = str(files.preferences_heldout)
    rm_cfg.run.output_dir = str(out)
    rm_cfg.run.seed = seed + 1
    return run_rm(rm_cfg, resume=(out / "metrics.jsonl").exists()).final_dir


def _read_history(run_dir: Path) -> list[dict]:
    from aha.track.metrics import read_metrics

    return read_metrics(run_dir / "rlhf" / "grpo" / "metrics.jsonl")


def _prepare(run_dir: Path, cfg, resume: bool) -> Path:
    if run_dir.exists() and any(run_dir.iterdir()) and not resume:
        if not cfg.overwrite:
            raise ConfigError(
                f"{run_dir} already holds a demo run; pass --resume to finish it, overwrite=true to start "
                "again, or output_dir=... for a new directory"
            )
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _summary(r: HackingResult, ran: bool) -> str:
    """Gold at the start, at its peak (the watch's monitor best when it fired on gold, else the
    highest), its lowest after that peak, and at the end; the proxy at the same points."""
    at = {p["step"]: p for p in r.curve}
    fired_on_gold = r.watch_best_step is not None and "gold" in r.watched
    peak = at[r.watch_best_step] if fired_on_gold else max(r.curve, key=lambda p: p["gold"])
    low = min((p for p in r.curve if p["step"] >= peak["step"]), key=lambda p: p["gold"])
    points = [("SFT", r.curve[0]), ("peak", peak), ("lowest after it", low), ("end", r.curve[-1])]
    return "\n".join(
        [
            "gold reward: "
            + " -> ".join(
                f"{p['gold']:.3f} ({name}, step {p['step']}, sqrt KL {p['sqrt_kl']:.2f})"
                for name, p in points
            ),
            "proxy reward at those points: " + " -> ".join(f"{p['proxy']:.3f}" for _, p in points),
            f"hacking watch on {', '.join(r.watched)}: fired at step {r.watch_step} (monitor best at step "
            f"{r.watch_best_step})"
            if r.watch_step is not None
            else f"hacking watch on {', '.join(r.watched)}: did not fire",
            f"total time {r.seconds:.0f} s" + ("" if ran else " (every stage had finished earlier)"),
        ]
    )
