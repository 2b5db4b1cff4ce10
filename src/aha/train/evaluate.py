"""Held-out evaluation: generate for prompts never trained on and score them with the run's rewards."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from aha.data.prompts import PromptExample, batch_fields
from aha.rewards.base import RewardSpec, compute_rewards, state_kept
from aha.rollout.base import RolloutEngine, SamplingParams


@dataclass
class EvalResult:
    accuracy: float  # fraction of completions whose total reward >= the success threshold
    reward_mean: float
    completion_length_mean: float
    samples: list[dict]  # prompt, completion, reward: the first few, for reports
    monitors: dict[str, float] = field(default_factory=dict)  # mean of each monitor (never optimised)


def evaluate(
    engine: RolloutEngine,
    examples: list[PromptExample],
    rewards: list[RewardSpec],
    params: SamplingParams,
    *,
    samples_per_prompt: int = 1,
    success_threshold: float = 1.0,
    batch_size: int = 256,
    keep_samples: int = 8,
    monitors: Sequence[RewardSpec] = (),
) -> EvalResult:
    """Accuracy and mean reward of `engine` on `examples` (each prompt sampled `samples_per_prompt` times);
    `monitors` (rewards.monitors) score the same completions, outside the total. Rewards and monitors
    that keep state (running statistics) score with it but end as they started (`state_kept`)."""
    if not examples:
        raise ValueError("evaluate() needs at least one example")
    expanded = [ex for ex in examples for _ in range(samples_per_prompt)]
    totals: list[float] = []
    lengths: list[float] = []
    samples: list[dict] = []
    monitor_sums = dict.fromkeys((m.name for m in monitors), 0.0)
    for start in range(0, len(expanded), batch_size):
        chunk = expanded[start : start + batch_size]
        prompts = [ex.prompt for ex in chunk]
        out = engine.generate(prompts, params)
        with state_kept([*rewards, *monitors]):
            result = compute_rewards(rewards, prompts, out.completions, batch_fields(chunk))
            if monitors:
                watched = compute_rewards(monitors, prompts, out.completions, batch_fields(chunk))
                for name, scores in watched.per_fn.items():
                    monitor_sums[name] += float(scores.sum())
        totals += result.total.tolist()
        lengths += out.completion_mask.sum(1).float().tolist()
        for prompt, completion, reward in zip(prompts, out.completions, result.total.tolist(), strict=True):
            if len(samples) < keep_samples:
                samples.append({"prompt": prompt, "completion": completion, "reward": reward})
    return EvalResult(
        accuracy=sum(t >= success_threshold for t in totals) / len(totals),
        reward_mean=sum(totals) / len(totals),
        completion_length_mean=sum(lengths) / len(lengths),
        samples=samples,
        monitors={name: total / len(totals) for name, total in monitor_sums.items()},
    )
