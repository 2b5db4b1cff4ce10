"""Run the same GRPO work with aha or with TRL's GRPOTrainer, each in its own process, and record it.

Each tool runs in a fresh child process (`python bench/_grpo_runners.py TOOL SETTINGS.json OUT.json`) so
that its peak RSS is its own and nothing one tool imported or cached helps the other. The parent writes a
`GRPOBenchSettings` as JSON, the child writes a `RunRecord` as JSON.

What a "step" is, for both tools: sampling the batch, rewards, reference log-probs, the policy forward,
backward and optimizer step. Evaluation, logging, checkpointing and progress bars are outside it (aha's
"time/step_s"; for TRL the span from `on_step_begin` to `on_step_end`, which closes right after the
optimizer and scheduler step and before logging).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from _hardware import OtherLoad, peak_rss_bytes, wait_until_quiet

AHA_TO_TRL_LOSS = {"token-mean": "dapo", "seq-mean-token-mean": "grpo", "seq-mean-token-sum-norm": "dr_grpo"}


@dataclass
class GRPOBenchSettings:
    """Everything both tools are given; each knob maps to one option in each tool (see _aha_overrides /
    _trl_config). Defaults are those of the grpo_vs_trl benchmark (issue 5)."""

    model_dir: str
    train_prompts: list[dict]  # {"prompt": str, ...fields the reward reads}
    eval_prompts: list[dict]
    reward: str  # "module:function", importable with bench/ on sys.path; (prompts, completions, **fields)
    steps: int
    prompts_per_step: int = 4
    group_size: int = 8
    max_new_tokens: int = 64
    min_new_tokens: int = 0
    temperature: float = 1.0
    lr: float = 1e-5
    warmup_steps: int = 0  # linear warm-up, then constant
    beta: float = 0.04
    loss_agg: str = "token-mean"
    seed: int = 0
    threads: int = 2
    eval_every: int = 0  # 0: no held-out evaluation during training (TRL), only start and end (aha)
    eval_prompts_used: int = 4
    aha_micro_batch_size: int = 0  # aha's train.micro_batch_size (0: the whole batch in one pass)
    device: str = "cpu"  # "cuda" for the GPU benchmark (bench/gpu_grpo_vs_trl.py)
    precision: str = (
        "fp32"  # aha's model.precision; "bf16-mixed" is TRL's bf16=True (fp32 weights, bf16 autocast)
    )
    aha_rollout_dtype: str = "auto"  # aha's rollout.dtype
    trl_gradient_checkpointing: bool | None = None  # None: TRL's default


@dataclass
class RunRecord:
    tool: str
    step_s: list[float]  # per optimizer step, in order
    generate_s: list[float]  # the sampling part of each step
    completion_length: list[float]  # mean completion length per step
    evals: list[dict] = field(default_factory=list)  # {"step", "train_time_s", "accuracy"}, step 0 first
    peak_rss_bytes: int = 0
    wall_s: float = 0.0  # the whole child, start-up and evaluation included
    other_cores: float | None = None  # cores other processes kept busy meanwhile (set by run_in_child)
    attempts: int = 1  # runs made until one was undisturbed (set by run_when_quiet)
    settings_used: dict = field(default_factory=dict)  # a tool's own defaults worth reporting
    cuda_peak_allocated_bytes: int = 0  # on CUDA: torch's peak allocated memory over the whole child

    @classmethod
    def from_dict(cls, data: dict) -> RunRecord:
        return cls(**data)


def run_in_child(tool: str, settings: GRPOBenchSettings, workdir: Path, timeout_s: float = 3600) -> RunRecord:
    """Run `tool` ("aha", "trl" or "floor", see _grpo_floor.py) on `settings` in a fresh Python process; raise with its stderr tail."""
    import subprocess

    workdir.mkdir(parents=True, exist_ok=True)
    settings_path, out_path = workdir / "settings.json", workdir / "record.json"
    settings_path.write_text(json.dumps(asdict(settings)))
    threads = str(settings.threads)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "TOKENIZERS_PARALLELISM": "false",
    }
    with OtherLoad() as other:
        proc = subprocess.run(
            [sys.executable, __file__, tool, str(settings_path), str(out_path)],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    if proc.returncode != 0:
        raise RuntimeError(f"the {tool} run failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    record = RunRecord.from_dict(json.loads(out_path.read_text()))
    record.other_cores = other.cores
    return record


def add_quiet_machine_options(parser, retries: int) -> None:
    """The command-line options of `run_when_quiet`, shared by the benchmarks that use it."""
    parser.add_argument(
        "--quiet-cores",
        type=float,
        default=0.25,
        help="before each run, wait until other processes use at most this many cores (0: never wait)",
    )
    parser.add_argument("--quiet-timeout", type=float, default=300, help="longest wait for quiet, seconds")
    parser.add_argument(
        "--retries",
        type=int,
        default=retries,
        help="run again when other processes used more than --quiet-cores meanwhile",
    )


def run_when_quiet(
    tool: str, settings: GRPOBenchSettings, workdir: Path, max_other_cores: float, wait_s: float, retries: int
) -> RunRecord:
    """`run_in_child` on a quiet machine: wait until other processes use at most `max_other_cores`, and
    measure again (up to `retries` times) when they used more while it ran. On 2 cores, one other busy
    process slows a run several-fold. `max_other_cores` = 0 disables both: a single run, as it comes."""
    for attempt in range(1, retries + 2):
        if max_other_cores:
            wait_until_quiet(max_other_cores, wait_s)
        record = run_in_child(tool, settings, workdir / f"attempt-{attempt}")
        record.attempts = attempt
        if not max_other_cores or record.other_cores is None or record.other_cores <= max_other_cores:
            break
        print(f"  {tool}: other processes used {record.other_cores:.2f} cores meanwhile", file=sys.stderr)
    return record


# ------------------------------------------------------------------------------------------------- aha


def run_aha(settings: GRPOBenchSettings, workdir: Path) -> RunRecord:
    from aha.config import load_config
    from aha.train.grpo import GRPORunConfig, run_grpo

    train_file, eval_file = workdir / "train.jsonl", workdir / "eval.jsonl"
    _write_jsonl(train_file, settings.train_prompts)
    _write_jsonl(eval_file, settings.eval_prompts)
    cfg = load_config(
        GRPORunConfig, overrides=_aha_overrides(settings, train_file, eval_file, workdir / "aha-run")
    )
    history = run_grpo(cfg).history
    steps = [row for row in history if row["step"] > 0 and "time/step_s" in row]
    elapsed, evals = 0.0, []
    for row in history:
        elapsed += row.get("time/step_s", 0.0)
        if "eval/accuracy" in row:
            evals.append({"step": row["step"], "train_time_s": elapsed, "accuracy": row["eval/accuracy"]})
    return RunRecord(
        tool="aha",
        step_s=[r["time/step_s"] for r in steps],
        generate_s=[r["time/generate_s"] for r in steps],
        completion_length=[r["completion/length_mean"] for r in steps],
        evals=evals,
    )


def _aha_overrides(s: GRPOBenchSettings, train_file: Path, eval_file: Path, out_dir: Path) -> list[str]:
    return [
        f"model.path={s.model_dir}",
        f"model.precision={s.precision}",
        f"model.device={s.device}",
        f"rollout.dtype={s.aha_rollout_dtype}",
        f"data.train_file={train_file}",
        f"data.eval_file={eval_file}",
        f"rewards.functions=[{s.reward}]",
        "rollout.engine=native",
        f"rollout.group_size={s.group_size}",
        f"rollout.max_new_tokens={s.max_new_tokens}",
        f"rollout.min_new_tokens={s.min_new_tokens}",
        f"rollout.temperature={s.temperature}",
        "rollout.top_p=1.0",
        "rollout.top_k=0",
        "algo.advantage=grpo",
        f"algo.loss_agg={s.loss_agg}",
        f"algo.beta={s.beta}",
        "algo.mu=1",
        "algo.minibatches=1",
        "algo.clip_low=0.2",
        "algo.clip_high=0.2",
        "algo.kl_estimator=k3",
        f"train.steps={s.steps}",
        f"train.prompts_per_step={s.prompts_per_step}",
        f"train.micro_batch_size={s.aha_micro_batch_size}",
        f"optim.lr={s.lr}",
        "optim.weight_decay=0.0",
        f"optim.warmup_steps={s.warmup_steps}",
        "optim.schedule=constant",
        "optim.grad_clip=1.0",
        f"eval.every={s.eval_every}",
        f"eval.num_prompts={s.eval_prompts_used}",
        "eval.greedy=true",
        "track.sample_every=0",
        "track.plot=false",
        f"run.output_dir={out_dir}",
        f"run.seed={s.seed}",
        "run.progress=false",
        f"run.threads={s.threads}",
    ]


# ------------------------------------------------------------------------------------------------- TRL


def run_trl(settings: GRPOBenchSettings, workdir: Path) -> RunRecord:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(settings.model_dir)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(settings.model_dir, dtype=torch.float32)
    generate_s: list[float] = []
    model.generate = _timed(model.generate, generate_s)  # TRL calls the (unwrapped) model's generate
    evaluator = _aha_evaluator(settings, tokenizer) if settings.eval_every else None
    record = RunRecord(tool="trl", step_s=[], generate_s=generate_s, completion_length=[])

    class Timing(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if evaluator is not None:
                record.evals.append({"step": 0, "train_time_s": 0.0, "accuracy": evaluator(kwargs["model"])})

        def on_step_begin(self, args, state, control, **kwargs):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            record.step_s.append(time.perf_counter() - self.t0)
            step = state.global_step
            if evaluator is not None and (step % settings.eval_every == 0 or step == settings.steps):
                accuracy = evaluator(kwargs["model"])
                record.evals.append({"step": step, "train_time_s": sum(record.step_s), "accuracy": accuracy})

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "completions/mean_length" in logs:
                record.completion_length.append(logs["completions/mean_length"])

    trainer = GRPOTrainer(
        model=model,
        reward_funcs=_import_reward(settings.reward),
        args=_trl_config(GRPOConfig, settings, workdir / "trl-run"),
        train_dataset=Dataset.from_list(settings.train_prompts),
        processing_class=tokenizer,
        callbacks=[Timing()],
    )
    record.settings_used["gradient_checkpointing"] = bool(trainer.args.gradient_checkpointing)
    trainer.train()
    return record


def _trl_config(config_cls, s: GRPOBenchSettings, out_dir: Path):
    generation_kwargs = {"min_new_tokens": s.min_new_tokens} if s.min_new_tokens else None
    if s.precision not in ("fp32", "bf16-mixed"):
        raise ValueError(f"TRL runs fp32 or bf16-mixed (bf16=True), not {s.precision!r}")
    extra = {}
    if s.trl_gradient_checkpointing is not None:
        extra["gradient_checkpointing"] = s.trl_gradient_checkpointing
    return config_cls(
        output_dir=str(out_dir),
        use_cpu=s.device == "cpu",
        bf16=s.precision == "bf16-mixed",
        fp16=False,
        **extra,
        seed=s.seed,
        per_device_train_batch_size=s.prompts_per_step * s.group_size,
        gradient_accumulation_steps=1,
        num_generations=s.group_size,
        max_completion_length=s.max_new_tokens,
        generation_kwargs=generation_kwargs,
        temperature=s.temperature,
        top_p=1.0,
        top_k=0,
        beta=s.beta,
        loss_type=AHA_TO_TRL_LOSS[s.loss_agg],
        scale_rewards="group",
        epsilon=0.2,
        num_iterations=1,
        max_steps=s.steps,
        learning_rate=s.lr,
        lr_scheduler_type="constant_with_warmup" if s.warmup_steps else "constant",
        warmup_steps=s.warmup_steps,
        weight_decay=0.0,
        max_grad_norm=1.0,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        log_completions=False,
        dataloader_pin_memory=False,
        dataloader_num_workers=0,
    )


def _aha_evaluator(settings: GRPOBenchSettings, tokenizer):
    """The very evaluation aha runs (native greedy sampler, same reward and threshold), on TRL's model."""
    from aha.data.prompts import PromptExample
    from aha.rewards.base import make_reward_specs
    from aha.rollout import make_engine
    from aha.rollout.base import SamplingParams
    from aha.train.evaluate import evaluate

    examples = [
        PromptExample(prompt=row["prompt"], fields={k: v for k, v in row.items() if k != "prompt"})
        for row in settings.eval_prompts[: settings.eval_prompts_used]
    ]
    rewards = make_reward_specs([{"fn": settings.reward, "weight": 1.0}])
    params = SamplingParams(max_new_tokens=settings.max_new_tokens, temperature=0.0, seed=settings.seed)

    def accuracy(model) -> float:
        was_training = model.training
        model.eval()
        result = evaluate(make_engine("native", model, tokenizer), examples, rewards, params).accuracy
        model.train(was_training)
        return result

    return accuracy


# --------------------------------------------------------------------------------------------- helpers


def _timed(fn, sink: list[float]):
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        sink.append(time.perf_counter() - t0)
        return out

    return wrapper


def _import_reward(path: str):
    import importlib

    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _child_main(argv: list[str]) -> None:
    tool, settings_path, out_path = argv
    t0 = time.perf_counter()
    settings = GRPOBenchSettings(**json.loads(Path(settings_path).read_text()))
    import torch

    torch.set_num_threads(settings.threads)
    if tool == "floor":
        from _grpo_floor import run_floor as runner
    else:
        runner = {"aha": run_aha, "trl": run_trl}[tool]
    record = runner(settings, Path(out_path).parent)
    record.peak_rss_bytes = peak_rss_bytes()
    if settings.device.startswith("cuda"):
        record.cuda_peak_allocated_bytes = torch.cuda.max_memory_allocated()
    record.wall_s = time.perf_counter() - t0
    Path(out_path).write_text(json.dumps(asdict(record)))


if __name__ == "__main__":
    _child_main(sys.argv[1:])
