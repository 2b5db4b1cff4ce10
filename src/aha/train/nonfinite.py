"""What a run does when a loss, gradient norm or reward is NaN or inf: stop before the optimizer steps
(the default) or skip the step. Either way no optimizer state, parameter or checkpoint sees the value.
A held-out evaluation feeds no update, so there is nothing to skip: stop raises before the step is
logged or checkpointed, skip warns and the value is logged as null.

fp16-mixed's loss scaler skipping a step whose scaled gradients overflowed is normal operation, not a
fault: under the scaler the gradient norm is left to it (aha.train.precision) and only the loss is checked.
"""

from __future__ import annotations

import math
import sys

ON_NONFINITE = ("stop", "skip")
ON_NONFINITE_HELP = (
    "A NaN or inf loss, gradient norm or total reward: stop (raise NonFiniteError naming the step and "
    "the quantity, before the optimizer steps or a checkpoint is written) or skip (zero the gradients, "
    "no optimizer step, counted in update/nonfinite_skipped). A NaN or inf held-out reward or loss: "
    "stop raises before the step is logged or checkpointed; skip warns and logs it as null."
)


class NonFiniteError(RuntimeError):
    """A training quantity went NaN or inf; raised before the optimizer step it would have fed."""


class NonFiniteGuard:
    """Checks the quantities of one training step (`step`) under `mode` (stop or skip)."""

    def __init__(self, mode: str = "stop", step: int | None = None):
        if mode not in ON_NONFINITE:
            raise ValueError(f"on_nonfinite={mode!r} is not one of {', '.join(ON_NONFINITE)}")
        self.mode = mode
        self.step = step

    def ok(self, quantity: str, value: float, where: str = "") -> bool:
        """True if `value` is finite; otherwise raise (stop) or return False (skip: the caller skips)."""
        if math.isfinite(value):
            return True
        if self.mode == "skip":
            return False
        at = "" if self.step is None else f"step {self.step}"
        detail = ", ".join(s for s in (at, where) if s)
        raise NonFiniteError(
            f"{detail}: {quantity} is {value} (before the optimizer step; no checkpoint written). "
            "Lower optim.lr or set optim.grad_clip; train.on_nonfinite=skip skips such steps instead."
        )

    def ok_evaluated(self, quantity: str, value: float) -> bool:
        """True if the held-out `quantity` is finite; otherwise raise (stop) or warn and return False
        (skip: the caller logs it as null)."""
        if math.isfinite(value):
            return True
        at = f"step {self.step}, held-out evaluation: {quantity} is {value}"
        if self.mode == "skip":
            print(f"warning: {at}; logged as null (train.on_nonfinite=skip)", file=sys.stderr)
            return False
        raise NonFiniteError(
            f"{at} (before the step is logged or checkpointed). A reward that overflows float32 once "
            "weighted, or a model that overflows, on the held-out set; train.on_nonfinite=skip logs it as "
            "null and carries on."
        )
