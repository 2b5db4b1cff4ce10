"""The GRPO recipe, readable top to bottom: sample groups -> rewards -> group advantages -> clipped update.

Prompts are turned into model input text once, up front (message lists through the chat template,
aha.data.chat); reward functions receive that text as `prompts`, with the record's other fields.
One step:
  1. take `prompts_per_step` prompts and sample `group_size` completions for each (the rollout engine);
  2. score them with the reward functions; advantages are rewards relative to their group;
  3. reference log-probs once per batch (when beta > 0); old-policy log-probs only when the batch is
     used for more than one optimizer step (mu > 1 or several minibatches): otherwise old == current;
  4. `mu` passes of clipped-surrogate + beta * KL updates (aha.train.policy_update);
  5. every `ref_sync_every` steps the reference becomes the current policy (R1-Zero style reset).
Metrics, samples, held-out evaluation and atomic checkpoints are written to the run directory.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from aha.algos.advantages import get_advantage_estimator, zero_variance_groups
from aha.data.chat import chat_format
from aha.data.prompts import PromptSampler, batch_fields
from aha.models.lora import export_merged
from aha.rewards.base import compute_rewards
from aha.rewards.signals import completion_signals
from aha.rollout import make_engine
from aha.rollout.base import SamplingParams
from aha.track.memory import peak_memory_metrics, reset_peak_memory
from aha.track.plots import plot_metrics
from aha.track.samples import format_samples_table
from aha.train.checkpoint import latest_checkpoint
from aha.train.evaluate import EvalResult, evaluate
from aha.train.grpo_config import GRPORunConfig
from aha.train.monitors import RunMonitors
from aha.train.nonfinite import NonFiniteGuard
from aha.train.policy_update import PolicyLossSettings, UpdateBatch, completion_logprobs, policy_update
from aha.train.reference import ReferencePolicy
from aha.train.session import TrainingSession, load_prompt_sets

__all__ = ["GRPORunConfig", "GRPOResult", "run_grpo"]

MERGED_DIR = "merged"  # under LoRA with model.lora.save_merged: the final adapters merged into the base
PLOT_KEYS = [("reward/mean", "eval/accuracy"), "kl", "completion/length_mean", "entropy"]


@dataclass
class GRPOResult:
    run_dir: Path
    history: list[dict]  # every metrics row written, in order
    final_eval: EvalResult
    stop_reason: str | None = None  # why the run ended before train.steps (track.hacking.stop), if it did


def run_grpo(cfg: GRPORunConfig, resume: bool = False) -> GRPOResult:
    """Train with GRPO as configured; with `resume`, continue from the run directory's last checkpoint."""
    session = TrainingSession.start(cfg, resume=resume, total_steps=cfg.train.steps)
    model, tokenizer, device, precision = session.model, session.tokenizer, session.device, session.precision
    train_set, eval_set = load_prompt_sets(cfg.data, cfg.run.seed)
    chat = chat_format(cfg.data.chat_template, cfg.data.system_prompt, tokenizer, train_set + eval_set)
    train_set, eval_set = chat.apply(train_set, tokenizer), chat.apply(eval_set, tokenizer)
    sampler = session.prompt_sampler(train_set, cfg.train.prompts_per_step)
    rewards = session.reward_specs(cfg.rewards)
    monitors = RunMonitors.start(session, cfg.rewards, cfg.track.hacking)  # rlhf: logged, never optimised
    engine = make_engine(cfg.rollout.engine, model, tokenizer, add_special_tokens=chat.add_special_tokens)
    estimator = get_advantage_estimator(cfg.algo.advantage)
    ref_model = ReferencePolicy(model, precision, device, cfg.algo.ref_offload) if cfg.algo.beta > 0 else None
    G = cfg.rollout.group_size
    batch_rows = cfg.train.prompts_per_step * G
    settings = PolicyLossSettings(
        clip_low=cfg.algo.clip_low,
        clip_high=cfg.algo.clip_high,
        beta=cfg.algo.beta,
        kl_estimator=cfg.algo.kl_estimator,
        loss_agg=cfg.algo.loss_agg,
        temperature=cfg.rollout.temperature,
        norm_constant=batch_rows / cfg.algo.minibatches * cfg.rollout.max_new_tokens,
        importance_ratio=cfg.algo.importance_ratio,
    )
    reuse_batch = cfg.algo.mu > 1 or cfg.algo.minibatches > 1
    eval_params = SamplingParams(
        max_new_tokens=cfg.rollout.max_new_tokens,
        temperature=0.0 if cfg.eval.greedy else cfg.rollout.temperature,
        stop_strings=tuple(cfg.rollout.stop_strings),
        seed=cfg.run.seed,
    )
    eval_examples = eval_set[: cfg.eval.num_prompts]

    def run_eval() -> EvalResult:
        with precision.autocast():  # rollouts sample at the precision the policy trains at
            return evaluate(
                engine,
                eval_examples,
                rewards,
                eval_params,
                success_threshold=cfg.eval.success_threshold,
                monitors=monitors.specs,  # rlhf
            )

    start_step, extra = session.restore_latest(sampler) if resume else (0, {})
    if ref_model is not None and "ref_model" in extra:
        ref_model.load_state_dict(extra["ref_model"])
    monitors.load_state_dict(extra)  # rlhf
    if start_step == 0:
        first = run_eval()
        session.log(
            0,
            {
                "eval/accuracy": first.accuracy,
                "eval/reward_mean": first.reward_mean,
                "eval/length_mean": first.completion_length_mean,
                **monitors.eval_metrics(0, first),  # rlhf
            },
        )

    for step in range(start_step + 1, cfg.train.steps + 1):
        t0 = time.perf_counter()
        reset_peak_memory(device)
        examples = next(sampler)
        prompts = [ex.prompt for ex in examples for _ in range(G)]
        fields = batch_fields([ex for ex in examples for _ in range(G)])
        params = SamplingParams(
            max_new_tokens=cfg.rollout.max_new_tokens,
            min_new_tokens=cfg.rollout.min_new_tokens,
            temperature=cfg.rollout.temperature,
            top_p=cfg.rollout.top_p,
            top_k=cfg.rollout.top_k,
            stop_strings=tuple(cfg.rollout.stop_strings),
            seed=cfg.run.seed * 1_000_003 + step,  # per-step seed: a resumed run samples what it would have
        )
        model.eval()
        with precision.autocast():
            rollout = engine.generate(prompts, params)
        t_gen = time.perf_counter()

        scored = compute_rewards(rewards, prompts, rollout.completions, fields, on_error=_on_error(cfg))
        guard = NonFiniteGuard(cfg.train.on_nonfinite, step)
        # Each function's NaN/inf is handled in compute_rewards; this catches an overflowing weighted sum.
        bad_reward = not guard.ok(
            "total reward", _worst(scored.total), "weighted sum of the reward functions"
        )
        advantages = estimator(scored.total.nan_to_num(0.0, 0.0, 0.0) if bad_reward else scored.total, G)
        dead_groups = zero_variance_groups(scored.total, G)
        t_reward = time.perf_counter()

        batch = UpdateBatch(
            rollout.input_ids.to(device),
            rollout.attention_mask.to(device),
            rollout.completion_mask.to(device),
            advantages.to(device),
        )
        if cfg.algo.drop_zero_variance_groups:
            keep = (~dead_groups).repeat_interleave(G).nonzero().squeeze(1)
            batch = batch.select(keep.to(device))
        if bad_reward:  # train.on_nonfinite=skip: no update from this batch
            batch = batch.select(torch.zeros(0, dtype=torch.long, device=device))
        metrics: dict[str, float] = {"update/nonfinite_skipped": float(bad_reward)}
        if batch.input_ids.shape[0] > 0:
            if ref_model is not None:
                batch.ref_logprobs = ref_model.logprobs(batch, cfg.rollout.temperature)
            if reuse_batch:
                batch.old_logprobs = completion_logprobs(model, batch, cfg.rollout.temperature, precision)
            metrics = policy_update(
                model,
                session.optimizer,
                batch,
                settings,
                passes=cfg.algo.mu,
                minibatches=cfg.algo.minibatches,
                group_size=G,
                grad_clip=cfg.optim.grad_clip,
                # seeded per step, as sampling is: a resumed run shuffles what it would have
                generator=torch.Generator().manual_seed(cfg.run.seed * 1_000_003 + step),
                micro_batch_size=cfg.train.micro_batch_size,
                precision=precision,
                guard=guard,
            )
        metrics["update/skipped"] = float(batch.input_ids.shape[0] == 0)
        session.scheduler.step()
        if ref_model is not None and cfg.algo.ref_sync_every and step % cfg.algo.ref_sync_every == 0:
            ref_model.sync_from(model)
        t_end = time.perf_counter()

        num_tokens = int(rollout.completion_mask.sum())
        metrics.update(scored.metrics)
        metrics.update(monitors.step_metrics(prompts, rollout.completions, fields))  # rlhf
        metrics.update(
            completion_signals(rollout.completions, rollout.completion_mask.sum(1), rollout.truncated)
        )
        metrics.update(
            {
                "reward/mean": float(scored.total.mean()),
                "reward/std": float(scored.total.std()),
                "groups/zero_variance_frac": float(dead_groups.float().mean()),
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
            ev = run_eval()
            metrics.update(
                {
                    "eval/accuracy": ev.accuracy,
                    "eval/reward_mean": ev.reward_mean,
                    "eval/length_mean": ev.completion_length_mean,
                    **monitors.eval_metrics(step, ev),  # rlhf
                }
            )
        if cfg.track.sample_every and step % cfg.track.sample_every == 0:
            rows = [
                {"prompt": p, "completion": c, "reward": r, "advantage": a}
                for p, c, r, a in zip(
                    prompts, rollout.completions, scored.total.tolist(), advantages.tolist(), strict=True
                )
            ]
            session.samples.log(step, rows)
            session.progress.write(
                f"step {step}\n" + format_samples_table(rows[::G], max_rows=cfg.track.samples_shown)
            )
        if step == cfg.train.steps:
            final = run_eval()
            metrics.update(
                {
                    "eval/accuracy": final.accuracy,
                    "eval/reward_mean": final.reward_mean,
                    "eval/length_mean": final.completion_length_mean,
                    **monitors.eval_metrics(step, final),  # rlhf
                }
            )
        metrics.update(peak_memory_metrics(device))  # the step's peak, evaluation included
        session.log(step, metrics)
        session.progress.update(
            step,
            reward=metrics["reward/mean"],
            kl=metrics.get("kl", 0.0),
            tok_s=metrics["throughput/tokens_per_s"],
        )
        session.save_if_due(
            step, "grpo", lambda: {**_resume_state(sampler, ref_model, cfg), **monitors.state_dict()}
        )
        if session.stop_reason is not None:  # rlhf: e.g. track.hacking.stop; saved above
            print(f"stopping at step {step}: {session.stop_reason}", file=sys.stderr)
            break

    if start_step >= cfg.train.steps or (session.stop_reason is not None and step < cfg.train.steps):  # rlhf
        final = run_eval()
    session.finish()
    if cfg.model.lora.r and cfg.model.lora.save_merged:
        export_merged(latest_checkpoint(session.run_dir), session.run_dir / MERGED_DIR, dtype="float32")
    if cfg.track.plot and session.history:
        plot_metrics(session.history, PLOT_KEYS, session.run_dir / "plots.png", title="GRPO")
    return GRPOResult(session.run_dir, session.history, final, session.stop_reason)


def _resume_state(sampler: PromptSampler, ref_model: ReferencePolicy | None, cfg: GRPORunConfig) -> dict:
    """What a checkpoint needs beyond the model and optimizer to resume exactly."""
    extra = {"sampler": sampler.state_dict()}
    if ref_model is not None and cfg.algo.ref_sync_every:
        extra["ref_model"] = ref_model.state_dict()
    return extra


def _worst(values: torch.Tensor) -> float:
    """The first non-finite value of `values`, or 0.0 when all are finite."""
    bad = values[~torch.isfinite(values)]
    return float(bad[0]) if bad.numel() else 0.0


def _on_error(cfg: GRPORunConfig) -> str | float:
    return "raise" if cfg.rewards.error_fallback is None else cfg.rewards.error_fallback
