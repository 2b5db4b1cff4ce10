"""`reward_model`: a trained reward model (`aha rm`) as a reward for `aha grpo` / `aha ppo`.

Options: path (a reward-model run's final/ directory), device ("auto", "cpu", "cuda:1", ...: the policy's
device or another), batch_size, normalize ("stored": the held-out mean/std saved with the model, so the
scale is the one measured at training time; "running": mean/std of every training score so far, this
batch included (held-out evaluation scores with them and leaves them as they were); one process only, as each torchrun rank sees only its share; the statistics are part of the
run's checkpoints, so a resumed run continues them; "none": raw scores), prompt_field (None: score the
prompt the policy saw; a dataset column: score that column's text instead, e.g. an unrendered question,
wrapped in the model's prompt template).
Scoring is batched, under no_grad, with the trainer's own text format (aha.models.reward_scorer).
torch is imported only when the reward is first used.
"""

from __future__ import annotations

from typing import Any

from aha.dist.env import world_size_from_environ
from aha.rewards.base import RewardConfigError, register_reward

NORMALIZE = ("stored", "running", "none")


@register_reward("reward_model")
class RewardModelReward:
    def __init__(
        self,
        path: str,
        device: str = "auto",
        batch_size: int = 32,
        normalize: str = "stored",
        prompt_field: str | None = None,
    ) -> None:
        if normalize not in NORMALIZE:
            raise RewardConfigError(f"reward_model: normalize={normalize!r} is not one of {NORMALIZE}")
        if batch_size < 1:
            raise RewardConfigError("reward_model: batch_size must be >= 1")
        if normalize == "running" and world_size_from_environ() > 1:
            # each rank would keep its own running statistics of its own share of the scores
            raise RewardConfigError(
                "reward_model: normalize=running gives each torchrun process its own scale; use stored"
            )
        self.path, self.device, self.batch_size = path, device, batch_size
        self.normalize, self.prompt_field = normalize, prompt_field
        self._scorer = None
        self._running = None

    def _load(self):
        from aha.models.reward_scorer import RewardScorer
        from aha.train.common_config import resolve_device

        if self._scorer is None:
            try:
                self._scorer = RewardScorer(self.path, resolve_device(self.device), self.batch_size)
            except FileNotFoundError as e:
                raise RewardConfigError(f"reward_model: {e}") from None
        return self._scorer

    def _running_norm(self):
        from aha.models.reward_scorer import RunningNorm

        if self._running is None:
            self._running = RunningNorm()
        return self._running

    def state_dict(self) -> dict:
        """normalize=running: the statistics of every training score so far, which a resumed run must
        continue from (aha.rewards.base.reward_state); nothing to keep otherwise."""
        return {"running": self._running_norm().state_dict()} if self.normalize == "running" else {}

    def load_state_dict(self, state: dict) -> None:
        if self.normalize == "running":
            self._running_norm().load_state_dict(state["running"])

    def __call__(self, prompts: list[str], completions: list[str], **fields: Any) -> list[float]:
        scorer = self._load()
        if self.prompt_field is not None:
            if self.prompt_field not in fields:
                raise RewardConfigError(
                    f"reward_model: prompt_field {self.prompt_field!r} is not a dataset field"
                )
            prompts = [str(p) for p in fields[self.prompt_field]]
        if self.normalize == "stored":
            return scorer.normalized(prompts, completions).tolist()
        raw = scorer.raw(prompts, completions)
        if self.normalize == "none":
            return raw.tolist()
        running = self._running_norm()
        running.update(raw.tolist())
        return ((raw - running.mean) / max(running.std, 1e-8)).tolist()
