"""`aha demo`: teacher demonstrations -> SFT from scratch -> GRPO on the gold checker -> held-out table.

The whole article in one command on a laptop CPU: a tiny Llama is created, imitates a flawed (or
terse) teacher with SFT, then GRPO with only a correctness reward and the SFT model as KL reference.
Every stage is the library's own (aha.train.sft, aha.train.grpo); this module only wires them up and
measures the result on problems no stage ever trained on.

Run directory (default runs/demo-<scenario>):
  data/        sft.jsonl, grpo_train.jsonl, heldout.jsonl      tiny-model/  the untrained model
  sft/         the SFT run (final/ is the model GRPO starts from and keeps as KL reference)
  grpo/        the GRPO run (metrics.jsonl, samples.jsonl, checkpoints/); ppo/ with algo=ppo
  report.md    accuracy table and samples     demo.png   accuracy, length, KL (cot: scratchpad share)
  sft/report.html, grpo/report.html   each stage's run report (`aha report`): curves, samples, timing
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from aha.config import ConfigError, load_config, option
from aha.data.prompts import load_prompt_file
from aha.demo.hacking import HackingDemoConfig, HackingResult, run_hacking_demo
from aha.demo.report import ModelScore, accuracy_table, plot_demo, samples_table, score_model
from aha.demo.scenarios import SCENARIOS, Budget, Scenario, write_task_files
from aha.models.loading import load_model
from aha.models.tiny import TinyModelSpec, create_tiny_model
from aha.rewards.base import make_reward_specs
from aha.track.report import write_html_report
from aha.train.checkpoint import latest_checkpoint
from aha.train.grpo import GRPORunConfig, run_grpo
from aha.train.ppo import run_ppo
from aha.train.ppo_config import PPORunConfig
from aha.train.sft import SFTRunConfig, run_sft

REWARD = "aha.demo.tasks:gold_answer"


@dataclass
class DemoModelConfig:
    hidden_size: int | None = option(None, help="Width of the tiny Llama (None = scenario default).")
    num_layers: int = option(2, help="Transformer layers.")
    num_heads: int = option(4, help="Attention heads.")
    intermediate_size: int | None = option(None, help="MLP width (None = scenario default).")
    init_std: float = option(
        0.08,
        help="Std of the initial weight matrices; above HF's 0.02 the model leaves the loss plateau sooner.",
    )


@dataclass
class DemoSFTConfig:
    steps: int | None = option(None, help="SFT steps (None = the scenario's measured budget).")
    batch_size: int = option(128, help="Demonstrations per step.")
    lr: float = option(3e-3, help="Peak learning rate (linear warm-up over 5% of the steps, then cosine).")


@dataclass
class DemoGRPOConfig:
    steps: int | None = option(None, help="GRPO steps (None = the scenario's measured budget).")
    prompts_per_step: int = option(16, help="Training problems per step.")
    group_size: int = option(8, help="Completions sampled per problem.")
    lr: float = option(3e-4, help="Learning rate (constant after 5 warm-up steps).")
    beta: float = option(0.04, help="KL penalty weight; the reference is the SFT model.")


@dataclass
class DemoPPOConfig:
    kl_coef: float = option(
        0.04, help="KL weight in the reward (k1, InstructGPT); GRPO's beta by default, for comparison."
    )
    critic_lr: float = option(1e-3, help="The critic's learning rate (a fresh value head on the SFT model).")
    critic_warmup_steps: int = option(0, help="Steps where the critic trains and the policy waits.")


@dataclass
class DemoConfig:
    scenario: str = option(
        "carry",
        choices=(*SCENARIOS, "hacking"),
        help="carry: RL surpasses a teacher that forgets carries; cot: RL makes the model write its "
        "working (longer completions); limit: a teacher that never carries (RL cannot help); hacking: "
        "SFT -> reward model -> RL, where RL games the reward model's quirks (options: hacking.*).",
    )
    quick: bool = option(False, help="Smaller budgets (used by the test suite): same story, less converged.")
    output_dir: str | None = option(None, help="Run directory (default runs/demo-<scenario>, + '-quick').")
    overwrite: bool = option(False, help="Delete an existing run directory first (else use --resume).")
    seed: int = option(0, help="Seed for the problems, the teacher, the initial weights and sampling.")
    threads: int = option(
        0, help="torch CPU threads (0 = the scenario's default: 1 for cot and hacking, else torch's)."
    )
    precision: str = option(
        "fp32",
        choices=("fp32", "bf16-mixed"),
        help="model.precision of the SFT and GRPO stages (the held-out table is scored in fp32).",
    )
    heldout_size: int | None = option(None, help="Held-out problems in the table (None = scenario default).")
    sampled_per_problem: int = option(4, help="Samples per held-out problem for the sampled accuracy.")
    progress: bool = option(True, help="Show progress bars.")
    model: DemoModelConfig = option(
        default_factory=DemoModelConfig, help="The tiny model trained from scratch."
    )
    sft: DemoSFTConfig = option(default_factory=DemoSFTConfig, help="Imitating the teacher.")
    algo: str = option(
        "grpo",
        choices=("grpo", "ppo"),
        help="The RL stage: grpo, or ppo (a critic, GAE; steps, batch and lr from the grpo section).",
    )
    grpo: DemoGRPOConfig = option(default_factory=DemoGRPOConfig, help="RL on the gold checker.")
    ppo: DemoPPOConfig = option(default_factory=DemoPPOConfig, help="PPO's own knobs (algo=ppo).")
    hacking: HackingDemoConfig = option(
        default_factory=HackingDemoConfig, help="scenario=hacking only (its sft/grpo budgets are its own)."
    )


@dataclass
class DemoResult:
    run_dir: Path
    teacher_accuracy: float
    sft: ModelScore
    rl: ModelScore
    grpo_history: list[dict]
    seconds: float


def run_demo(cfg: DemoConfig, resume: bool = False) -> DemoResult | HackingResult:
    """Run every stage of the scenario (finished stages are skipped with `resume`) and write the report."""
    if cfg.scenario == "hacking":  # its own pipeline (aha rlhf): aha.demo.hacking
        return run_hacking_demo(cfg, resume)
    t0 = time.perf_counter()
    scenario = SCENARIOS[cfg.scenario]
    budget = scenario.quick if cfg.quick else scenario.full
    run_dir = _prepare_run_dir(cfg, resume)
    threads = cfg.threads or scenario.threads
    if threads:
        torch.set_num_threads(threads)
    heldout_size = cfg.heldout_size or budget.heldout_size
    files = write_task_files(scenario, run_dir / "data", heldout_size, cfg.seed)

    init_dir = run_dir / "tiny-model"
    if not (init_dir / "config.json").exists():
        _create_model(init_dir, cfg.model, scenario, cfg.seed)
    sft = run_sft(_sft_config(cfg, budget, init_dir, files.sft, run_dir / "sft"), resume=resume)
    grpo_cfg = _grpo_config(cfg, scenario, budget, sft.final_dir, files, run_dir / cfg.algo)
    if cfg.algo == "ppo":
        grpo = run_ppo(
            _ppo_config(cfg, scenario, budget, sft.final_dir, files, run_dir / "ppo"), resume=resume
        )
    else:
        grpo = run_grpo(grpo_cfg, resume=resume)
    rl_dir = latest_checkpoint(grpo.run_dir)

    heldout = load_prompt_file(files.heldout)
    rewards = make_reward_specs([REWARD])
    scores = [
        score_model(name, path, heldout, rewards, scenario.max_new_tokens, cfg.sampled_per_problem, cfg.seed)
        for name, path in (
            ("after SFT", sft.final_dir),
            (f"after SFT + {grpo_cfg.train.steps} {cfg.algo.upper()} steps", rl_dir),
        )
    ]
    teacher_accuracy = scenario.teacher.expected_accuracy(files.heldout_problems)
    result = DemoResult(
        run_dir, teacher_accuracy, scores[0], scores[1], grpo.history, time.perf_counter() - t0
    )
    report = write_report(result, scenario, heldout, cfg)
    pages = [write_html_report(stage.run_dir) for stage in (sft, grpo)]  # what `aha report` writes
    print("\n" + report)
    print("\nRun reports (open in a browser): " + "  ".join(str(page) for page in pages))
    return result


def write_report(result: DemoResult, scenario: Scenario, heldout: list, cfg: DemoConfig) -> str:
    """report.md (table, samples, timing), demo.png and scores.json in the run directory; returns report.md."""
    cot = scenario.name == "cot"
    plot = plot_demo(result.grpo_history, result.run_dir / "demo.png", f"aha demo: {scenario.name}", cot)
    table = accuracy_table(result.teacher_accuracy, [result.sft, result.rl], show_scratchpad=cot)
    samples = samples_table(heldout, result.sft, result.rl, rows=8)
    report = "\n\n".join(
        [
            f"# aha demo: {scenario.name}",
            scenario.summary,
            f"Held-out accuracy on {len(heldout)} problems never trained on "
            f"(sampled: {cfg.sampled_per_problem} samples per problem at temperature 1):",
            table,
            "Greedy completions on held-out problems, before and after RL:",
            samples,
            f"Curves: {plot.name}. Total time: {result.seconds:.0f} s.",
        ]
    )
    (result.run_dir / "report.md").write_text(report + "\n", encoding="utf-8")
    scores = {
        "teacher_accuracy": result.teacher_accuracy,
        **{key: _without_completions(asdict(s)) for key, s in (("sft", result.sft), ("rl", result.rl))},
        "seconds": result.seconds,
    }
    (result.run_dir / "scores.json").write_text(json.dumps(scores, indent=2) + "\n", encoding="utf-8")
    return report


def _without_completions(score: dict) -> dict:
    for decoding in ("greedy", "sampled"):
        score[decoding].pop("completions")
    return score


def _create_model(out_dir: Path, spec: DemoModelConfig, scenario: Scenario, seed: int) -> None:
    """The built-in tiny Llama, its weight matrices redrawn with std `init_std` (seeded).

    At HF's default std 0.02 the 2-digit addition loss sits on a plateau for a variable few hundred steps
    before attention finds the digits; measured with std 0.08 it leaves it sooner and more reliably.
    """
    sizes = TinyModelSpec(
        hidden_size=spec.hidden_size or scenario.hidden_size,
        num_layers=spec.num_layers,
        num_heads=spec.num_heads,
        intermediate_size=spec.intermediate_size or scenario.intermediate_size,
        max_position_embeddings=64,
    )
    create_tiny_model(out_dir, sizes, seed=seed)
    model = load_model(str(out_dir))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, spec.init_std, generator=generator)
    model.save_pretrained(out_dir)


def _prepare_run_dir(cfg: DemoConfig, resume: bool) -> Path:
    name = f"demo-{cfg.scenario}" + ("-ppo" if cfg.algo == "ppo" else "") + ("-quick" if cfg.quick else "")
    run_dir = Path(cfg.output_dir or Path("runs") / name)
    if run_dir.exists() and any(run_dir.iterdir()) and not resume:
        if not cfg.overwrite:
            raise ConfigError(
                f"{run_dir} already holds a demo run; pass --resume to finish it, overwrite=true to start "
                "again, or output_dir=... for a new directory"
            )
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _sft_config(cfg: DemoConfig, budget: Budget, model_dir: Path, data: Path, out: Path) -> SFTRunConfig:
    steps = cfg.sft.steps or budget.sft_steps
    return load_config(
        SFTRunConfig,
        overrides=[
            f"model.path={model_dir}",
            "model.device=cpu",
            f"model.precision={cfg.precision}",
            f"data.train_file={data}",
            f"train.steps={steps}",
            f"train.batch_size={cfg.sft.batch_size}",
            f"optim.lr={cfg.sft.lr}",
            f"optim.warmup_steps={max(1, steps // 20)}",
            "optim.schedule=cosine",
            f"run.output_dir={out}",
            f"run.seed={cfg.seed}",
            f"run.progress={str(cfg.progress).lower()}",
        ],
    )


def _grpo_config(
    cfg: DemoConfig, scenario: Scenario, budget: Budget, sft_model: Path, files, out: Path
) -> GRPORunConfig:
    overrides = _rl_overrides(cfg, scenario, budget, sft_model, files, out)
    return load_config(GRPORunConfig, overrides=[*overrides, f"algo.beta={cfg.grpo.beta}"])


def _ppo_config(
    cfg: DemoConfig, scenario: Scenario, budget: Budget, sft_model: Path, files, out: Path
) -> PPORunConfig:
    """PPO on exactly GRPO's prompts, batch, steps, learning rate and evaluation, plus its critic."""
    overrides = _rl_overrides(cfg, scenario, budget, sft_model, files, out)
    ppo = [
        f"algo.kl_coef={cfg.ppo.kl_coef}",
        f"critic.lr={cfg.ppo.critic_lr}",
        f"critic.warmup_steps={cfg.ppo.critic_warmup_steps}",
    ]
    return load_config(PPORunConfig, overrides=[*overrides, *ppo])


def _rl_overrides(
    cfg: DemoConfig, scenario: Scenario, budget: Budget, sft_model: Path, files, out: Path
) -> list[str]:
    """The RL stage's settings both algorithms share (the grpo section's steps, batch and lr)."""
    steps = cfg.grpo.steps or budget.grpo_steps
    return [
        f"model.path={sft_model}",
        "model.device=cpu",
        f"model.precision={cfg.precision}",
        f"data.train_file={files.grpo_train}",
        f"data.eval_file={files.heldout}",
        f"rewards.functions=[{REWARD}]",
        f"rollout.group_size={cfg.grpo.group_size}",
        f"rollout.max_new_tokens={scenario.max_new_tokens}",
        f"train.steps={steps}",
        f"train.prompts_per_step={cfg.grpo.prompts_per_step}",
        f"optim.lr={cfg.grpo.lr}",
        f"optim.warmup_steps={min(5, steps)}",
        f"eval.every={budget.grpo_eval_every}",
        f"eval.num_prompts={budget.grpo_eval_size}",
        f"track.sample_every={budget.grpo_eval_every}",  # completions for the stage's report.html
        "track.samples_shown=2",
        "track.plot=false",
        f"run.output_dir={out}",
        f"run.seed={cfg.seed}",
        f"run.progress={str(cfg.progress).lower()}",
    ]
