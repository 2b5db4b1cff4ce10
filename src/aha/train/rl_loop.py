"""The RL loop GRPO and PPO share: sample -> score rewards -> advantages -> update -> evaluate, log,
sample table, checkpoint.

An algorithm (`RLAlgorithm`) supplies what differs: its advantages (group-relative for GRPO, GAE over a
critic's values for PPO), its update, its extra models (registered on the session with `add_model`, so
checkpoints hold them and resume restores them) and its own resume state. Everything else (prompts,
rollouts, rewards, non-finite handling, schedulers, evaluation, metrics, samples, checkpoints, the
early stop through `TrainingSession.stop_reason`) is here, once.

Under torchrun every rank draws the same global batch of prompts and takes its contiguous share of them,
each with its whole group of completions: group statistics (GRPO's advantages, zero-variance groups)
then need no communication. Each rank samples with its own seed (`rank_seed`), scores its completions,
and trains on them; the update averages gradients across ranks (aha.dist.wrap). Metrics are reduced
across ranks, samples gathered, and rank 0 alone writes them; evaluation runs the whole held-out set on
every rank (the same numbers everywhere, so early stops agree).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from aha.config import ConfigError
from aha.data.chat import chat_format
from aha.data.prompts import PromptExample, batch_fields
from aha.dist.env import in_process_group, rank_seed, shard
from aha.dist.reduce import gather_lists, gather_tensor, reduce_metrics, sum_across_ranks
from aha.dist.wrap import full_weights
from aha.models.lora import export_merged
from aha.rewards.base import RewardResult, compute_rewards, load_reward_state, reward_state
from aha.rewards.signals import completion_signals
from aha.rollout import make_engine
from aha.rollout.base import RolloutBatch, SamplingParams
from aha.track.memory import peak_memory_metrics, reset_peak_memory
from aha.track.plots import plot_metrics
from aha.track.samples import format_samples_table
from aha.train.checkpoint import latest_checkpoint
from aha.train.evaluate import EvalResult, evaluate
from aha.train.monitors import RunMonitors
from aha.train.nonfinite import NonFiniteGuard
from aha.train.policy_update import PolicyLossSettings, UpdateBatch, policy_update
from aha.train.precision import rollout_precision
from aha.train.session import TrainingSession, load_prompt_sets

MERGED_DIR = "merged"  # under LoRA with model.lora.save_merged: the final adapters merged into the base
REWARD_STATE_KEY = "reward_state"  # the reward functions' own state in a checkpoint's extra state


@dataclass
class RLStep:
    """One step's samples and rewards, as the loop hands them to the algorithm."""

    step: int
    examples: list[PromptExample]  # the step's prompts, each once
    prompts: list[str]  # one per completion (a prompt repeated group_size times)
    rollout: RolloutBatch
    scored: RewardResult
    rewards: torch.Tensor  # [N] the total reward, NaN/inf zeroed when `bad_reward`
    bad_reward: bool  # the total was not finite and train.on_nonfinite=skip: no update from this batch
    guard: NonFiniteGuard
    # [N, T] the sampler's log-probs when rollout.dtype differs from the training precision (the update
    # corrects the mismatch by truncated importance sampling); None when sampling is on-policy
    rollout_logprobs: torch.Tensor | None = None


@dataclass
class Advantages:
    """What an algorithm's advantage stage returns to the loop."""

    per_completion: torch.Tensor  # [N] shown in the samples table (PPO: the mean over the tokens)
    metrics: dict[str, float] = field(default_factory=dict)
    state: Any = None  # the algorithm's own data for its update (e.g. an UpdateBatch)


class RLAlgorithm(Protocol):
    """What GRPO and PPO supply to `run_rl`."""

    stage: str  # trainer_state["stage"] of its checkpoints, and the plot title

    def advantages(self, s: RLStep) -> Advantages: ...

    def update(self, s: RLStep, adv: Advantages) -> dict[str, float]:
        """Train on the step (the policy and any model of the algorithm); returns its metrics."""
        ...

    def resume_state(self) -> dict:
        """Plain data a checkpoint needs, beyond the session's models, to resume exactly."""
        ...

    def load_resume_state(self, extra: dict) -> None: ...


@dataclass
class RLResult:
    run_dir: Path
    history: list[dict]  # every metrics row written, in order
    final_eval: EvalResult | None  # None when the run stopped early (`stop_reason`)
    stop_reason: str | None = None


# (cfg, session) -> the algorithm, built after the session (it may register models on it)
AlgorithmFactory = Callable[[Any, TrainingSession], RLAlgorithm]


def run_rl(
    cfg: Any,
    make_algorithm: AlgorithmFactory,
    resume: bool = False,
    plot_keys: list | None = None,
    on_session: Callable[[TrainingSession], None] | None = None,
) -> RLResult:
    """Train as configured (a GRPO-shaped config: model, data, rewards, rollout, train, optim, eval,
    track, run sections); with `resume`, continue from the run directory's last checkpoint.
    `on_session` sees the session once it exists (e.g. to watch a run and set `stop_reason`)."""
    session = TrainingSession.start(cfg, resume=resume, total_steps=cfg.train.steps)
    if on_session is not None:
        on_session(session)
    model, tokenizer, device, precision = session.model, session.tokenizer, session.device, session.precision
    env = session.dist
    if env.distributed:
        _check_distributable(cfg)
    train_set, eval_set = load_prompt_sets(cfg.data, cfg.run.seed)
    chat = chat_format(cfg.data.chat_template, cfg.data.system_prompt, tokenizer, train_set + eval_set)
    train_set, eval_set = chat.apply(train_set, tokenizer), chat.apply(eval_set, tokenizer)
    sampler = session.prompt_sampler(train_set, cfg.train.prompts_per_step)
    rewards = cfg.rewards.specs()
    monitors = RunMonitors.start(session, cfg.rewards, cfg.track.hacking)  # logged, never optimised
    # Under fsdp2 the sampler runs the HF forward on weights gathered once per call (`full_weights`): the
    # hand-written decode steps read the parameters, which are shards there.
    decode = "hf" if in_process_group() and cfg.dist.strategy == "fsdp2" else "kernel"
    engine = make_engine(
        cfg.rollout.engine, model, tokenizer, add_special_tokens=chat.add_special_tokens, decode=decode
    )
    # rollout.dtype: sampling may run at another precision than training (then corrected in the update)
    sampling_precision = rollout_precision(cfg.rollout.dtype, precision)
    off_policy_rollouts = sampling_precision.compute_dtype != precision.compute_dtype
    algorithm = make_algorithm(cfg, session)
    G = cfg.rollout.group_size
    eval_params = SamplingParams(
        max_new_tokens=cfg.rollout.max_new_tokens,
        temperature=0.0 if cfg.eval.greedy else cfg.rollout.temperature,
        stop_strings=tuple(cfg.rollout.stop_strings),
        seed=cfg.run.seed,
    )
    eval_examples = eval_set[: cfg.eval.num_prompts]

    def run_eval() -> EvalResult:
        with sampling_precision.autocast(), full_weights(model):  # rollout.dtype (default: training's)
            return evaluate(
                engine,
                eval_examples,
                rewards,
                eval_params,
                success_threshold=cfg.eval.success_threshold,
                monitors=monitors.specs,
            )

    def eval_row(step: int, ev: EvalResult) -> dict[str, float]:
        """The evaluation's metrics and the monitors' (which feed the hacking watch)."""
        NonFiniteGuard(cfg.train.on_nonfinite, step).ok_evaluated("reward mean", ev.reward_mean)
        return {**_eval_metrics(ev), **monitors.eval_metrics(step, ev)}

    start_step, extra = session.restore_latest(sampler) if resume else (0, {})
    session.distribute()  # under torchrun: wrap the policy (after the reference copied it, and resume)
    algorithm.load_resume_state(extra)
    monitors.load_state_dict(extra)
    if extra:  # a checkpoint was restored (its extra state holds at least the sampler's)
        load_reward_state(rewards, extra.get(REWARD_STATE_KEY, {}), f"the checkpoint of step {start_step}")
    if start_step == 0:
        session.log(0, eval_row(0, run_eval()))

    final: EvalResult | None = None
    for step in range(start_step + 1, cfg.train.steps + 1):
        t0 = time.perf_counter()
        reset_peak_memory(device)
        examples = shard(next(sampler), env, "train.prompts_per_step")  # whole groups on each rank
        prompts = [ex.prompt for ex in examples for _ in range(G)]
        fields = batch_fields([ex for ex in examples for _ in range(G)])
        params = SamplingParams(
            max_new_tokens=cfg.rollout.max_new_tokens,
            min_new_tokens=cfg.rollout.min_new_tokens,
            temperature=cfg.rollout.temperature,
            top_p=cfg.rollout.top_p,
            top_k=cfg.rollout.top_k,
            stop_strings=tuple(cfg.rollout.stop_strings),
            # per-step (and per-rank) seed: a resumed run samples what it would have
            seed=rank_seed(step_seed(cfg, step), env.rank),
        )
        model.eval()
        with sampling_precision.autocast(), full_weights(model):
            rollout = engine.generate(prompts, params)
        t_gen = time.perf_counter()

        scored = compute_rewards(rewards, prompts, rollout.completions, fields, on_error=_on_error(cfg))
        guard = NonFiniteGuard(cfg.train.on_nonfinite, step)
        # Each function's NaN/inf is handled in compute_rewards; this catches an overflowing weighted sum.
        bad_reward = not guard.ok(
            "total reward", _worst(scored.total), "weighted sum of the reward functions"
        )
        bad_reward = sum_across_ranks(float(bad_reward), op="max") > 0  # every rank skips, or none
        total = scored.total.nan_to_num(0.0, 0.0, 0.0) if bad_reward else scored.total
        rollout_logprobs = rollout.logprobs.to(device) if off_policy_rollouts else None
        s = RLStep(step, examples, prompts, rollout, scored, total, bad_reward, guard, rollout_logprobs)
        adv = algorithm.advantages(s)
        t_reward = time.perf_counter()

        metrics = algorithm.update(s, adv)
        for trained in [session.scheduler, *(m.scheduler for m in session.models.values())]:
            if trained is not None:
                trained.step()
        t_end = time.perf_counter()

        num_tokens = int(rollout.completion_mask.sum())
        metrics.update(adv.metrics)
        metrics.update(scored.metrics)
        metrics.update(monitors.step_metrics(prompts, rollout.completions, fields))
        metrics.update(
            completion_signals(rollout.completions, rollout.completion_mask.sum(1), rollout.truncated)
        )
        all_rewards = gather_tensor(scored.total)  # every rank's, for the batch's mean and spread
        metrics.update(
            {
                "reward/mean": float(all_rewards.mean()),
                "reward/std": float(all_rewards.std()),
                "lr": session.scheduler.get_last_lr()[0],
                "time/generate_s": t_gen - t0,
                "time/reward_s": t_reward - t_gen,
                "time/update_s": t_end - t_reward,
                "time/step_s": t_end - t0,
                "throughput/tokens_per_s": num_tokens / max(t_gen - t0, 1e-9),
                **precision.metrics(),
            }
        )
        if cfg.eval.every and step % cfg.eval.every == 0 and step != cfg.train.steps:
            metrics.update(eval_row(step, run_eval()))
        if cfg.track.sample_every and step % cfg.track.sample_every == 0:
            rows = gather_lists(
                [
                    {"prompt": p, "completion": c, "reward": r, "advantage": a}
                    for p, c, r, a in zip(
                        prompts,
                        rollout.completions,
                        scored.total.tolist(),
                        adv.per_completion.tolist(),
                        strict=True,
                    )
                ]
            )
            session.samples.log(step, rows)
            session.progress.write(
                f"step {step}\n" + format_samples_table(rows[::G], max_rows=cfg.track.samples_shown)
            )
        if step == cfg.train.steps:
            final = run_eval()
            metrics.update(eval_row(step, final))
        metrics.update(peak_memory_metrics(device))  # the step's peak, evaluation included
        # the update's metrics are global already, evaluations the same on every rank; the rest (rewards
        # per function, lengths, timings, memory) become the mean over ranks
        metrics = reduce_metrics(metrics)
        session.log(step, metrics)
        session.progress.update(
            step,
            reward=metrics["reward/mean"],
            kl=metrics.get("kl", 0.0),
            tok_s=metrics["throughput/tokens_per_s"],
        )
        stopping = session.stop_reason is not None
        session.save_if_due(
            step,
            algorithm.stage,
            lambda: {**_resume_state(sampler, algorithm, rewards), **monitors.state_dict()},
            force=stopping,
        )
        session.end_if_signalled(step)
        if stopping:
            session.progress.write(f"stopping after step {step}: {session.stop_reason}")
            break

    if start_step >= cfg.train.steps:  # resumed a finished run: report its final evaluation again
        final = run_eval()
    session.finish()
    if not env.is_main:
        return RLResult(session.run_dir, session.history, final, session.stop_reason)
    if cfg.model.lora.r and cfg.model.lora.save_merged:
        export_merged(latest_checkpoint(session.run_dir), session.run_dir / MERGED_DIR, dtype="float32")
    if cfg.track.plot and session.history and plot_keys:
        plot_metrics(session.history, plot_keys, session.run_dir / "plots.png", title=algorithm.stage.upper())
    return RLResult(session.run_dir, session.history, final, session.stop_reason)


def _check_distributable(cfg: Any) -> None:
    """What the loop cannot split across ranks yet: refused in one line rather than run wrong."""
    if getattr(cfg.algo, "drop_zero_variance_groups", False):
        raise ConfigError(
            "algo.drop_zero_variance_groups is not supported under torchrun with several processes: "
            "ranks would train on different numbers of groups"
        )


def update_policy(
    session: TrainingSession,
    cfg: Any,
    s: RLStep,
    batch: UpdateBatch,
    settings: PolicyLossSettings,
    group_size: int,
) -> dict[str, float]:
    """The clipped-ratio policy update on a step's batch, as GRPO and PPO run it: `algo.mu` passes over
    `algo.minibatches`, shuffled with the step's seed so a resumed run shuffles what it would have."""
    return policy_update(
        session.model,
        session.optimizer,
        batch,
        settings,
        passes=cfg.algo.mu,
        minibatches=cfg.algo.minibatches,
        group_size=group_size,
        grad_clip=cfg.optim.grad_clip,
        generator=torch.Generator().manual_seed(step_seed(cfg, s.step)),
        micro_batch_size=cfg.train.micro_batch_size,
        precision=session.precision,
        guard=s.guard,
    )


def step_seed(cfg: Any, step: int) -> int:
    """The seed of a step's sampling and shuffles: a resumed run draws what the uninterrupted one did."""
    return cfg.run.seed * 1_000_003 + step


def _eval_metrics(ev: EvalResult) -> dict[str, float]:
    return {
        "eval/accuracy": ev.accuracy,
        "eval/reward_mean": ev.reward_mean,
        "eval/length_mean": ev.completion_length_mean,
    }


def _resume_state(sampler: Any, algorithm: RLAlgorithm, rewards: list) -> dict:
    return {
        "sampler": sampler.state_dict(),
        REWARD_STATE_KEY: reward_state(rewards),
        **algorithm.resume_state(),
    }


def _worst(values: torch.Tensor) -> float:
    """The first non-finite value of `values`, or 0.0 when all are finite."""
    bad = values[~torch.isfinite(values)]
    return float(bad[0]) if bad.numel() else 0.0


def _on_error(cfg: Any) -> str | float:
    return "raise" if cfg.rewards.error_fallback is None else cfg.rewards.error_fallback
