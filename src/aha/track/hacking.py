"""The hacking watch: the optimised (proxy) reward keeps rising while a monitor falls.

Reward hacking shows as a divergence between what the run optimises and what it is meant to achieve
(a gold reward, a held-out reward model, a length statistic: `rewards.monitors`). The watch sees one
point per evaluation: the proxy (the evaluation's mean optimised reward) and each monitor's mean.

The rule, per monitor: remember the evaluation where the monitor was best, and the proxy there. The
watch fires (once per monitor) when `patience` evaluations have passed without the monitor beating
that best, the monitor now sits more than `min_drop` below it, and the proxy now sits more than
`min_rise` above its value at the monitor's best. That is: since the monitor's peak, the run kept
buying proxy reward while losing monitor reward, for N evaluations.

Pure logic (no torch, no files): the trainer feeds it numbers and acts on what it returns.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from aha.config import ConfigError, option


@dataclass
class HackingConfig:
    patience: int = option(
        3,
        help="Evaluations after a monitor's best without a new best (monitor now lower, proxy reward now "
        "higher) before the watch fires. 0 = no watch. Needs rewards.monitors and eval.every > 0.",
    )
    min_drop: float = option(
        0.0, help="How far below its best a monitor must be for the watch to fire (in its own units)."
    )
    min_rise: float = option(
        0.0, help="How far above its value at the monitor's best the proxy reward must be to fire."
    )
    monitors: list[str] | None = option(
        None, help="The monitors the watch follows (names as logged); None = every rewards.monitors entry."
    )
    stop: bool = option(
        False, help="End the run when the watch fires (a checkpoint is saved; --resume continues it)."
    )
    keep_best: bool = option(
        True,
        help="Keep a copy of the model that was best by each monitor at evaluation: "
        "<run dir>/best-by-monitor/<name>/ (model + tokenizer + best.json).",
    )

    def validate(self) -> None:
        if self.patience < 0:
            raise ConfigError("patience must be >= 0 (0 = no watch)")
        if self.min_drop < 0 or self.min_rise < 0:
            raise ConfigError("min_drop and min_rise must be >= 0")


@dataclass(frozen=True)
class HackingAlert:
    monitor: str
    step: int  # the evaluation at which the watch fired
    best_step: int  # the evaluation where the monitor was best
    monitor_best: float
    monitor_now: float
    proxy_at_best: float
    proxy_now: float

    def message(self) -> str:
        return (
            f"reward hacking suspected at step {self.step}: the proxy reward rose "
            f"{self.proxy_at_best:.4g} -> {self.proxy_now:.4g} while monitor {self.monitor!r} fell "
            f"{self.monitor_best:.4g} -> {self.monitor_now:.4g} since its best at step {self.best_step}"
        )


@dataclass
class _Track:
    best: float
    best_step: int
    proxy_at_best: float
    since_best: int = 0
    fired: bool = False


@dataclass
class WatchUpdate:
    improved: list[str]  # monitors that reached a new best at this evaluation
    alerts: list[HackingAlert]  # monitors for which the watch fired at this evaluation


class HackingWatch:
    def __init__(self, patience: int, min_drop: float = 0.0, min_rise: float = 0.0) -> None:
        if patience < 1:
            raise ValueError("patience must be >= 1")
        self.patience, self.min_drop, self.min_rise = patience, min_drop, min_rise
        self.tracks: dict[str, _Track] = {}

    def update(self, step: int, proxy: float, monitors: dict[str, float]) -> WatchUpdate:
        """Feed one evaluation: the proxy's mean and each monitor's mean."""
        improved, alerts = [], []
        for name, value in monitors.items():
            track = self.tracks.get(name)
            if track is None or value > track.best:
                fired = track.fired if track else False
                self.tracks[name] = _Track(value, step, proxy, fired=fired)
                improved.append(name)
                continue
            track.since_best += 1
            if (
                not track.fired
                and track.since_best >= self.patience
                and track.best - value > self.min_drop
                and proxy - track.proxy_at_best > self.min_rise
            ):
                track.fired = True
                alerts.append(
                    HackingAlert(name, step, track.best_step, track.best, value, track.proxy_at_best, proxy)
                )
        return WatchUpdate(improved, alerts)

    def state_dict(self) -> dict:
        return {name: asdict(track) for name, track in self.tracks.items()}

    def load_state_dict(self, state: dict) -> None:
        self.tracks = {name: _Track(**track) for name, track in state.items()}
