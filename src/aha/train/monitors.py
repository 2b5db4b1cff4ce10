"""`rewards.monitors` in a training run: scored and logged, never optimised, and watched for hacking.

A monitor is any reward function (a gold reward, a held-out reward model, a length statistic). Each
step it scores the batch the policy sampled (`monitor/<name>`); each evaluation it scores the held-out
completions (`eval/monitor/<name>`) and feeds the hacking watch (aha.track.hacking) with the
evaluation's mean optimised reward as the proxy. When the watch fires the run warns on stderr, logs
`hacking/<name>/fired` and `hacking/<name>/best_step` in that step's metrics row, and with
`track.hacking.stop` sets `TrainingSession.stop_reason` (the loop saves a checkpoint and ends).
With `track.hacking.keep_best`, the model is copied to best-by-monitor/<name>/ whenever a monitor
reaches a new best at an evaluation, so the model from before the hacking is kept whatever
`run.keep_checkpoints` prunes.

The RL loop calls four methods: `step_metrics`, `eval_metrics`, `state_dict` / `load_state_dict`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from aha.config import ConfigError
from aha.dist.wrap import full_state_dict, is_sharded
from aha.models.loading import save_model_atomically
from aha.rewards.base import RewardSpec, compute_rewards, load_reward_state, reward_state
from aha.track.hacking import HackingConfig, HackingWatch
from aha.train.evaluate import EvalResult

BEST_DIR = "best-by-monitor"
STATE_KEY = "hacking_watch"
REWARD_STATE_KEY = "monitor_reward_state"  # the monitors' own state (aha.rewards.base.reward_state)


class RunMonitors:
    def __init__(self, session: Any, specs: list[RewardSpec], hacking: HackingConfig, on_error: Any) -> None:
        self.session, self.specs, self.hacking, self.on_error = session, specs, hacking, on_error
        unknown = set(hacking.monitors or ()) - {spec.name for spec in specs}
        if unknown:
            raise ConfigError(
                f"track.hacking.monitors names {sorted(unknown)}, which are not among the monitors "
                f"{[spec.name for spec in specs]} (rewards.monitors)"
            )
        self.watch = (
            HackingWatch(hacking.patience, hacking.min_drop, hacking.min_rise)
            if (specs and hacking.patience)
            else None
        )

    @classmethod
    def start(cls, session: Any, rewards_cfg: Any, hacking: HackingConfig) -> RunMonitors:
        on_error = "raise" if rewards_cfg.error_fallback is None else rewards_cfg.error_fallback
        return cls(session, rewards_cfg.monitor_specs(), hacking, on_error)

    def step_metrics(
        self, prompts: Sequence[str], completions: Sequence[str], fields: Mapping[str, Sequence[Any]]
    ) -> dict[str, float]:
        """`monitor/<name>` (mean) and the monitor's own counters for the step's sampled batch."""
        if not self.specs:
            return {}
        result = compute_rewards(self.specs, prompts, completions, fields, on_error=self.on_error)
        out = {}
        for key, value in result.metrics.items():  # reward/<name>/<stat> -> monitor/<name>/<stat>
            name_stat = key.removeprefix("reward/")
            out["monitor/" + name_stat.removesuffix("/mean")] = value
        return out

    def eval_metrics(self, step: int, ev: EvalResult) -> dict[str, float]:
        """`eval/monitor/<name>` for an evaluation; runs the watch and acts on what it says."""
        out = {f"eval/monitor/{name}": value for name, value in ev.monitors.items()}
        if self.watch is None:
            return out
        watched = self.hacking.monitors
        values = {k: v for k, v in ev.monitors.items() if watched is None or k in watched}
        update = self.watch.update(step, ev.reward_mean, values)
        if self.hacking.keep_best:
            for name in update.improved:
                self._keep_best(name, step, ev)
        for alert in update.alerts:
            print(f"WARNING: {alert.message()}", file=sys.stderr)
            out[f"hacking/{alert.monitor}/fired"] = 1.0
            out[f"hacking/{alert.monitor}/best_step"] = float(alert.best_step)
            if self.hacking.stop and self.session.stop_reason is None:
                self.session.stop_reason = f"track.hacking.stop: {alert.message()}"
        return out

    def _keep_best(self, name: str, step: int, ev: EvalResult) -> None:
        """Every rank calls this (evaluations agree across ranks); under fsdp2 they gather the weights
        together, and rank 0 writes them."""
        model = self.session.model
        weights = full_state_dict(model) if is_sharded(model) else None
        if not self.session.dist.is_main:
            return
        out = save_model_atomically(
            model, self.session.tokenizer, self.session.run_dir / BEST_DIR / name, state_dict=weights
        )
        best = {"step": step, "monitor": ev.monitors[name], "reward_mean": ev.reward_mean}
        (out / "best.json").write_text(json.dumps(best, indent=2) + "\n")

    def state_dict(self) -> dict:
        """What a checkpoint keeps so a resumed run's watch remembers the bests it had seen, and its
        monitors continue their own state (e.g. a reward model's running normalisation)."""
        state = {REWARD_STATE_KEY: reward_state(self.specs)}
        return {**state, STATE_KEY: self.watch.state_dict()} if self.watch else state

    def load_state_dict(self, extra: Mapping[str, Any]) -> None:
        """`extra`: a restored checkpoint's extra state, or {} for a fresh run."""
        if self.watch is not None and STATE_KEY in extra:
            self.watch.load_state_dict(extra[STATE_KEY])
        if extra:
            load_reward_state(
                self.specs, extra.get(REWARD_STATE_KEY, {}), "the checkpoint (rewards.monitors)"
            )
