"""What the critic costs: aha's PPO vs aha's GRPO from one SFT checkpoint of the `aha demo` task.

Both train the demo's SFT model (bench/_demo_checkpoint.py: the "carry" scenario, its tiny Llama and SFT
budget) with the demo's RL settings (prompts per step, group size, learning rate, KL weight,
temperature, completion length), the same seed, so the same prompts in the same order and the same
number of completions per step. Each runs in its own child process (its peak RSS is its own), one
after the other, in one invocation. Held-out greedy accuracy is evaluated every few steps on the same
problems; evaluation time is left out of the training time.

    python bench/ppo_vs_grpo.py                 # SFT, then both; writes bench/results/ppo_vs_grpo.json
                                                # and regenerates docs/benchmarks.md
    python bench/ppo_vs_grpo.py --checkpoint DIR   # start from an SFT model directory already trained
    python bench/ppo_vs_grpo.py --checkpoint DIR --data DIR   # ... and the task files it was trained
                                       # with (an `aha demo` run's sft/final and data/; its held-out split)
    python bench/ppo_vs_grpo.py --quick         # a few steps end to end (the test); writes nothing in the repo
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from _hardware import load_average, machine_description, peak_rss_bytes  # noqa: E402

DEFAULT_OUT = BENCH_DIR / "results" / "ppo_vs_grpo.json"
ALGOS = ("grpo", "ppo")
TARGET = 0.95  # held-out greedy accuracy the issue times


def rl_overrides(
    model_dir: str, train_file: Path, eval_file: Path, steps: int, eval_every: int, eval_prompts: int = 200
) -> tuple[list[str], float]:
    """The settings both algorithms get (the demo's RL stage, aha.demo.pipeline) and GRPO's beta."""
    from _demo_checkpoint import REWARD, demo_grpo_settings

    s = demo_grpo_settings(steps)
    return [
        f"model.path={model_dir}",
        "model.device=cpu",
        "model.precision=fp32",
        f"data.train_file={train_file}",
        f"data.eval_file={eval_file}",
        f"rewards.functions=[{REWARD}]",
        f"rollout.group_size={s.group_size}",
        f"rollout.max_new_tokens={s.max_new_tokens}",
        f"rollout.temperature={s.temperature}",
        f"train.steps={steps}",
        f"train.prompts_per_step={s.prompts_per_step}",
        f"optim.lr={s.lr}",
        f"optim.warmup_steps={s.warmup_steps}",
        f"eval.every={eval_every}",
        f"eval.num_prompts={eval_prompts}",
        "track.sample_every=0",
        "track.plot=false",
        "run.progress=false",
        "run.seed=0",
    ], s.beta


def child(algo: str, settings_path: Path, out_path: Path) -> None:
    """One algorithm's run in this process; writes its record (times, evaluations, peak RSS)."""
    from aha.config import load_config
    from aha.train.rl_loop import run_rl

    settings = json.loads(settings_path.read_text())
    overrides, beta = settings["overrides"], settings["beta"]
    cpu_at_log: dict[int, float] = {}

    def record_cpu(session) -> None:
        """CPU seconds of this process (all its threads) at each step's log: what a step computed,
        which other processes' load changes far less than its wall time."""
        log = session.log

        def log_with_cpu(step: int, metrics: dict) -> None:
            cpu_at_log[step] = time.process_time()
            log(step, metrics)

        session.log = log_with_cpu

    if algo == "grpo":
        from aha.train.grpo import GRPO, PLOT_KEYS, GRPORunConfig

        cfg = load_config(GRPORunConfig, overrides=[*overrides, f"algo.beta={beta}"])
        history = run_rl(cfg, GRPO, plot_keys=PLOT_KEYS, on_session=record_cpu).history
    else:
        from aha.demo.pipeline import DemoConfig
        from aha.train.ppo import PLOT_KEYS, PPO, PPORunConfig

        demo = DemoConfig().ppo  # the knobs `aha demo algo=ppo` uses
        extra = [f"algo.kl_coef={demo.kl_coef}", f"critic.lr={demo.critic_lr}"]
        cfg = load_config(PPORunConfig, overrides=[*overrides, *extra])
        history = run_rl(cfg, PPO, plot_keys=PLOT_KEYS, on_session=record_cpu).history
    # steps without an evaluation: their CPU time is the step's own (logging aside)
    cpu_s = [
        cpu_at_log[row["step"]] - cpu_at_log[row["step"] - 1]
        for row in history
        if row["step"] > 0 and "eval/accuracy" not in row
    ]
    steps = [row for row in history if row["step"] > 0]
    elapsed, evals = 0.0, []
    for row in history:
        elapsed += row.get("time/step_s", 0.0)
        if "eval/accuracy" in row:
            evals.append({"step": row["step"], "train_time_s": elapsed, "accuracy": row["eval/accuracy"]})
    ckpt = sorted((Path(cfg.run.output_dir) / "checkpoints").iterdir())[-1]
    record = {
        "algo": algo,
        "step_s": [r["time/step_s"] for r in steps],
        "cpu_s": cpu_s,
        "generate_s": [r["time/generate_s"] for r in steps],
        "advantage_s": [r["time/reward_s"] for r in steps],  # rewards + the advantage stage's passes
        "update_s": [r["time/update_s"] for r in steps],
        "evals": evals,
        "peak_rss_bytes": peak_rss_bytes(),
        "state_bytes": _state_bytes(ckpt),
        "explained_variance": [
            r["critic/explained_variance"] for r in steps if "critic/explained_variance" in r
        ],
        "value_loss": [r["critic/value_loss"] for r in steps if "critic/value_loss" in r],
    }
    out_path.write_text(json.dumps(record))


def _state_bytes(ckpt: Path) -> dict[str, int]:
    """Bytes of the trained states in the final checkpoint: weights and optimizer per model."""
    out = {"policy_weights": (ckpt / "model.safetensors").stat().st_size}
    out["policy_optimizer"] = (ckpt / "optimizer.pt").stat().st_size
    if (ckpt / "critic").is_dir():
        out["critic_weights"] = (ckpt / "critic" / "model.safetensors").stat().st_size
        out["critic_optimizer"] = (ckpt / "critic" / "optimizer.pt").stat().st_size
    return out


def run_child(algo: str, settings: dict, workdir: Path, threads: int) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    settings_path, out_path = workdir / "settings.json", workdir / "record.json"
    settings_path.write_text(json.dumps(settings))
    # Idle OpenMP threads sleep instead of spinning (as tests/conftest.py): on a shared machine spinning
    # threads fight over the cores and make these small models several times slower.
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
    }
    load_before = load_average()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", algo, str(settings_path), str(out_path)],
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the {algo} run failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    record = json.loads(out_path.read_text())
    record["load_average_before"], record["load_average_after"] = load_before, load_average()
    return record


def summarize(runs: dict[str, dict]) -> dict:
    """Per algorithm: median s/step and its parts, peak RSS, steps and time to TARGET, best accuracy;
    and the PPO/GRPO ratios of each."""
    out: dict = {}
    for algo, r in runs.items():
        reached = next((e for e in r["evals"] if e["accuracy"] >= TARGET), None)
        out[algo] = {
            "step_s_median": statistics.median(r["step_s"]),
            "cpu_s_median": statistics.median(r["cpu_s"]),
            "generate_s_median": statistics.median(r["generate_s"]),
            "advantage_s_median": statistics.median(r["advantage_s"]),
            "update_s_median": statistics.median(r["update_s"]),
            # everything but sampling and rewards' own time: the passes and updates that learn
            "learn_s_median": statistics.median(
                a + u for a, u in zip(r["advantage_s"], r["update_s"], strict=True)
            ),
            "peak_rss_bytes": r["peak_rss_bytes"],
            "state_bytes": sum(r["state_bytes"].values()),
            "start_accuracy": r["evals"][0]["accuracy"],
            "best_accuracy": max(e["accuracy"] for e in r["evals"]),
            "steps_to_target": None if reached is None else reached["step"],
            "time_to_target_s": None if reached is None else reached["train_time_s"],
        }
    g, p = out["grpo"], out["ppo"]
    ratios = {}
    for key in (
        "step_s_median",
        "cpu_s_median",
        "learn_s_median",
        "update_s_median",
        "peak_rss_bytes",
        "state_bytes",
    ):
        ratios[key] = p[key] / g[key] if g[key] else None
    for key in ("steps_to_target", "time_to_target_s"):
        ratios[key] = p[key] / g[key] if p[key] is not None and g[key] else None
    out["ppo_over_grpo"] = ratios
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--child", nargs=3, metavar=("ALGO", "SETTINGS", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--quick", action="store_true", help="a few steps end to end; writes nothing in the repo"
    )
    parser.add_argument("--checkpoint", type=Path, help="an SFT model directory of the demo task (skip SFT)")
    parser.add_argument(
        "--data",
        type=Path,
        help="with --checkpoint: the directory of the task files it was trained with (grpo_train.jsonl, "
        "heldout.jsonl; an `aha demo` run's data/), instead of writing the full preset's",
    )
    parser.add_argument("--steps", type=int, default=100, help="RL steps per algorithm (the fixed budget)")
    parser.add_argument("--eval-every", type=int, default=5, help="held-out evaluation every N steps")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each child")
    parser.add_argument("--workdir", type=Path, help="where runs go (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], Path(args.child[1]), Path(args.child[2]))
        return 0
    from _demo_checkpoint import demo_sft_checkpoint

    steps, eval_every = (3, 2) if args.quick else (args.steps, args.eval_every)  # quick: step 1 has no eval
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ppo_vs_grpo-"))
    if args.data is not None and args.checkpoint is None:
        parser.error("--data goes with --checkpoint (the model trained on those files)")
    ckpt = demo_sft_checkpoint(workdir, quick=args.quick, given=args.checkpoint)
    model_dir, data_dir, info = ckpt.path, args.data or workdir / "data", ckpt.info
    if args.data is not None:
        info["data"] = str(args.data)
    train_file, eval_file = data_dir / "grpo_train.jsonl", data_dir / "heldout.jsonl"
    eval_prompts = 16 if args.quick else 200
    overrides, beta = rl_overrides(str(model_dir), train_file, eval_file, steps, eval_every, eval_prompts)
    runs = {}
    for algo in ALGOS:
        settings = {"overrides": [*overrides, f"run.output_dir={workdir / algo / 'run'}"], "beta": beta}
        runs[algo] = run_child(algo, settings, workdir / algo, args.threads)
        print(f"{algo}: median {statistics.median(runs[algo]['step_s']):.3f} s/step", file=sys.stderr)
    results = {
        "checkpoint": info,
        "steps": steps,
        "eval_every": eval_every,
        "target_accuracy": TARGET,
        "machine": machine_description(),
        "runs": runs,
        "summary": summarize(runs),
    }
    print(json.dumps(results["summary"], indent=2))
    if args.quick:
        return 0
    from report import save_results

    save_results(results, args.out, regenerate_page=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
