"""KL coefficient controllers for KL-in-reward PPO: fixed, or adaptive toward a target KL.

The adaptive rule is Ziegler et al. 2019 ("Fine-Tuning Language Models from Human Preferences"),
kept as is by TRL (old PPOTrainer), OpenRLHF (`kl_controller.py`) and verl (`AdaptiveKLController`):

    error = clip(kl / target - 1, -0.2, 0.2)
    coef *= 1 + error * n_steps / horizon

so the coefficient moves by at most 20% per `horizon` samples: up when the policy drifts past the
target, down when it stays below. Anchor defaults: horizon 10000 (all three); target 6 nats with
init 0.2 (TRL v0.8.6, sentiment task), target 0.1 with init 0.001 (verl), init 0.01 (OpenRLHF, target
unset = fixed). verl calls `update` with n_steps = the batch size.
"""

from __future__ import annotations

_MAX_ERROR = 0.2


class FixedKLController:
    """A constant KL coefficient; `update` is a no-op so trainers can call it unconditionally."""

    def __init__(self, kl_coef: float) -> None:
        if kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController(FixedKLController):
    """Proportional control of the KL coefficient toward `target` (nats per sequence or per token,
    whichever the caller measures `current_kl` in, as long as it is consistent)."""

    def __init__(self, init_kl_coef: float, target: float, horizon: int) -> None:
        if init_kl_coef <= 0:
            raise ValueError(f"init_kl_coef must be > 0 (a 0 coefficient can never grow), got {init_kl_coef}")
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target and horizon must be > 0, got target={target}, horizon={horizon}")
        super().__init__(init_kl_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        """Adjust the coefficient after `n_steps` samples with measured KL `current_kl`; returns it."""
        error = min(max(current_kl / self.target - 1.0, -_MAX_ERROR), _MAX_ERROR)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value
