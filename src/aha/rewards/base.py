"""The reward contract: what a reward function is, how a config names one, and how several combine.

A reward function is any callable

    fn(prompts: list[str], completions: list[str], **fields) -> list[float | None]

where `fields` are the dataset's other columns as lists aligned with the completions (`answer=[...]`);
a function takes `**kwargs` for the columns it does not use. It returns one float per completion, or
None for "not applicable" (counted, and scored `none_value`). It may return a `RewardScores` (a list
that also carries counters, e.g. how many answers could not be extracted) to have them logged.

A reward object that keeps state across calls (e.g. running normalisation statistics) exposes
`state_dict() -> dict` (plain data: numbers, strings, lists, dicts; {} while there is nothing to keep)
and `load_state_dict(state)` (which takes any state `state_dict` returned, {} included): RL checkpoints
store it by reward name (`reward_state`) and a resumed run restores it (`load_reward_state`), so it
scores as the uninterrupted run would. Held-out evaluation scores inside `state_kept`, so the state
follows the training batches only.

A config names a function by built-in name ("math_answer") or import path ("my_pkg.rewards:fn").
A broken reward is never a silent zero: an exception, a wrong-length result or a NaN stops training
with a `RewardError` naming the function and the sample, or, if a fallback value is configured, that
value is used and counted in `reward/<name>/errors`.

torch is imported inside compute_rewards only: the math checker's child process imports this package
and must start without it.
"""

from __future__ import annotations

import copy
import importlib
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

RewardFn = Callable[..., Sequence[float | None]]
logger = logging.getLogger(__name__)

BUILTIN_REWARDS: dict[str, RewardFn] = {}
_SHOWN_CHARS = 300  # how much of a prompt / completion an error message quotes


class RewardError(RuntimeError):
    """A reward function failed (raised, wrong length, NaN/inf, not a number) on a named sample."""


class RewardConfigError(ValueError):
    """A reward function could not be found or configured (unknown name, bad import path, bad option)."""


class RewardScores(list):
    """The scores of a reward function, plus its own counters, logged as `reward/<name>/<key>`."""

    def __init__(
        self, scores: Sequence[float | None] = (), metrics: Mapping[str, float] | None = None
    ) -> None:
        super().__init__(scores)
        self.metrics: dict[str, float] = dict(metrics or {})


@dataclass
class RewardSpec:
    name: str
    fn: RewardFn
    weight: float = 1.0


@dataclass
class RewardResult:
    total: Tensor  # [N] float32: sum over functions of weight * score
    per_fn: dict[str, Tensor]  # name -> [N] float32 scores as used (None and errors replaced)
    metrics: dict[str, float] = field(default_factory=dict)


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator: make a reward function (or configurable reward object) available by `name`."""

    def decorate(fn: RewardFn) -> RewardFn:
        if name in BUILTIN_REWARDS and BUILTIN_REWARDS[name] is not fn:
            raise ValueError(f"a reward named {name!r} is already registered")
        BUILTIN_REWARDS[name] = fn
        return fn

    return decorate


def resolve_reward_fn(spec: str, options: Mapping[str, Any] | None = None) -> RewardFn:
    """A built-in name or "package.module:function" -> the reward function, configured with `options`.

    Options go to a class's constructor, to a reward object's `with_options(**options)` (the built-ins),
    or are bound as keyword arguments of a plain function.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise RewardConfigError(f"a reward function is named by a non-empty string, got {spec!r}")
    target = _import_target(spec) if ":" in spec else _builtin(spec)
    if isinstance(target, type):
        try:
            return target(**(options or {}))
        except TypeError as exc:
            raise RewardConfigError(
                f"reward {spec!r}: cannot create it with options {options}: {exc}"
            ) from exc
    if not options:
        return target
    if hasattr(target, "with_options"):
        try:
            return target.with_options(**options)
        except TypeError as exc:
            raise RewardConfigError(f"reward {spec!r}: bad options {options}: {exc}") from exc
    return _bind_options(target, options)


def make_reward_specs(config_list: Sequence[str | Mapping[str, Any]]) -> list[RewardSpec]:
    """Config entries -> specs. An entry is a name/import path, or {"fn", "weight", "name", "options"}."""
    specs: list[RewardSpec] = []
    for position, entry in enumerate(config_list):
        where = f"rewards entry {position}"
        if isinstance(entry, str):
            entry = {"fn": entry}
        if not isinstance(entry, Mapping):
            raise RewardConfigError(f"{where}: expected a string or a mapping, got {type(entry).__name__}")
        unknown = set(entry) - {"fn", "weight", "name", "options"}
        if unknown:
            raise RewardConfigError(
                f"{where}: unknown keys {sorted(unknown)} (allowed: fn, weight, name, options)"
            )
        if "fn" not in entry:
            raise RewardConfigError(f"{where}: missing 'fn' (a built-in name or 'package.module:function')")
        weight = entry.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise RewardConfigError(
                f"{where} ({entry['fn']}): weight must be a finite number, got {weight!r}"
            )
        fn = resolve_reward_fn(entry["fn"], entry.get("options"))
        name = entry.get("name") or _default_name(entry["fn"])
        if any(spec.name == name for spec in specs):
            raise RewardConfigError(f"{where}: two reward functions are named {name!r}; give one a 'name'")
        specs.append(RewardSpec(name=name, fn=fn, weight=float(weight)))
    return specs


def compute_rewards(
    specs: Sequence[RewardSpec],
    prompts: Sequence[str],
    completions: Sequence[str],
    fields: Mapping[str, Sequence[Any]],
    on_error: str | float = "raise",
    none_value: float = 0.0,
) -> RewardResult:
    """Score every completion with every function; the total is the weighted sum.

    `on_error`: "raise" (a RewardError naming the function and sample) or a finite fallback score used
    for each failed sample and counted in `reward/<name>/errors`. `none_value`: the score of a None.
    """
    import torch

    n = len(completions)
    if len(prompts) != n:
        raise ValueError(f"{len(prompts)} prompts but {n} completions")
    for key, column in fields.items():
        if len(column) != n:
            raise ValueError(f"field {key!r} has {len(column)} values but there are {n} completions")
    if on_error != "raise" and (isinstance(on_error, (str, bool)) or not math.isfinite(on_error)):
        raise ValueError(f"on_error must be 'raise' or a finite number, got {on_error!r}")
    if not specs:
        raise ValueError("no reward functions given")

    prompts, completions = list(prompts), list(completions)
    fields = {key: list(column) for key, column in fields.items()}
    total = torch.zeros(n, dtype=torch.float64)
    per_fn: dict[str, Tensor] = {}
    metrics: dict[str, float] = {}
    for spec in specs:
        scorer = _Scorer(spec.name, spec.fn, prompts, completions, fields, on_error)
        values, own_metrics = scorer.run()
        nones = sum(value is None for value in values)
        scores = torch.tensor([none_value if v is None else v for v in values], dtype=torch.float64)
        per_fn[spec.name] = scores.float()
        total += spec.weight * scores
        metrics[f"reward/{spec.name}/mean"] = float(scores.mean()) if n else 0.0
        metrics[f"reward/{spec.name}/none"] = float(nones)
        metrics[f"reward/{spec.name}/errors"] = float(scorer.errors)
        metrics.update({f"reward/{spec.name}/{key}": float(value) for key, value in own_metrics.items()})
    return RewardResult(total=total.float(), per_fn=per_fn, metrics=metrics)


def reward_state(specs: Sequence[RewardSpec]) -> dict[str, dict]:
    """The non-empty `state_dict()` of each reward function that has one, by name: what a checkpoint
    stores so a resumed run continues the functions' state instead of restarting it."""
    states = {}
    for spec in specs:
        state_dict = getattr(spec.fn, "state_dict", None)
        state = state_dict() if callable(state_dict) else None
        if state:
            states[spec.name] = state
    return states


def load_reward_state(specs: Sequence[RewardSpec], saved: Mapping[str, dict], source: str) -> None:
    """Restore what `reward_state` saved (`source` names where it comes from, for the error). A function
    that keeps state but has none saved is refused: it would silently start over."""
    for spec in specs:
        load = getattr(spec.fn, "load_state_dict", None)
        if not callable(load):
            continue
        if spec.name in saved:
            load(saved[spec.name])
        elif spec.fn.state_dict():
            raise RewardConfigError(
                f"reward {spec.name!r} keeps state (state_dict) but {source} holds none for it (saved "
                "by a run without that reward, or before reward state was checkpointed): resuming would "
                "restart it; start the run afresh, or resume with the rewards it was saved with"
            )


@contextmanager
def state_kept(specs: Sequence[RewardSpec]) -> Iterator[None]:
    """Scoring inside leaves each reward's state as it was: held-out evaluation must not feed running
    statistics, or the training rewards would depend on how often, and on what, the run evaluates."""
    saved = [
        (spec.fn, copy.deepcopy(spec.fn.state_dict()))
        for spec in specs
        if callable(getattr(spec.fn, "state_dict", None))
    ]
    try:
        yield
    finally:
        for fn, state in saved:
            fn.load_state_dict(state)


class _Scorer:
    """Runs one reward function over the batch and turns every way it can fail into a named error."""

    def __init__(self, name, fn, prompts, completions, fields, on_error) -> None:
        self.name, self.fn, self.on_error = name, fn, on_error
        self.prompts, self.completions, self.fields = prompts, completions, fields
        self.errors = 0

    def run(self) -> tuple[list[float | None], dict[str, float]]:
        n = len(self.completions)
        try:
            out = self.fn(self.prompts, self.completions, **self.fields)
        except Exception as exc:
            return self._one_sample_at_a_time(exc), {}
        own_metrics = dict(getattr(out, "metrics", {}) or {})
        values = _as_list(out)
        if values is None or len(values) != n:
            problem = (
                f"returned {type(out).__name__}, not a list of scores"
                if values is None
                else f"returned {len(values)} scores for {n} completions"
            )
            if self.on_error == "raise":
                raise RewardError(f"reward function {self.name!r} {problem}")
            self.errors += n
            return [float(self.on_error)] * n, own_metrics
        return [self._checked(value, i) for i, value in enumerate(values)], own_metrics

    def _one_sample_at_a_time(self, batch_exc: Exception) -> list[float | None]:
        """The batch call raised: call again per sample to find (and name) the samples that fail."""
        values: list[float | None] = []
        for i in range(len(self.completions)):
            try:
                out = self.fn(
                    [self.prompts[i]], [self.completions[i]], **{k: [v[i]] for k, v in self.fields.items()}
                )
            except Exception as exc:
                values.append(self._failed(i, f"raised {type(exc).__name__}: {exc}", exc))
                continue
            out = _as_list(out)
            if out is None or len(out) != 1:
                values.append(self._failed(i, "did not return one score for one completion", batch_exc))
            else:
                values.append(self._checked(out[0], i))
        if self.errors == 0:
            problem = (
                f"reward function {self.name!r} raised on the batch of {len(values)} completions but on no "
                f"single one: {type(batch_exc).__name__}: {batch_exc}"
            )
            if self.on_error == "raise":
                raise RewardError(problem) from batch_exc
            logger.warning("%s; using the scores of one-by-one calls", problem)
        return values

    def _checked(self, value: Any, i: int) -> float | None:
        if value is None:
            return None
        if isinstance(value, bool):
            return float(value)
        try:
            number = float(value)
        except (TypeError, ValueError):
            return self._failed(i, f"returned {value!r} ({type(value).__name__}), not a number or None")
        if not math.isfinite(number):
            return self._failed(i, f"returned {number}")
        return number

    def _failed(self, i: int, problem: str, cause: BaseException | None = None) -> float:
        if self.on_error == "raise":
            raise RewardError(
                f"reward function {self.name!r} {problem} for sample {i}\n"
                f"  prompt: {_shorten(self.prompts[i])}\n  completion: {_shorten(self.completions[i])}"
            ) from cause
        self.errors += 1
        return float(self.on_error)


def _as_list(out: Any) -> list | None:
    """The scores as a list, or None if `out` is not a sequence of them (a string, a dict, a number)."""
    if isinstance(out, (str, bytes, Mapping)):
        return None
    try:
        return list(out)
    except TypeError:  # a number, a 0-d tensor, None
        return None


def _shorten(text: str) -> str:
    return repr(text) if len(text) <= _SHOWN_CHARS else repr(text[:_SHOWN_CHARS]) + f"... ({len(text)} chars)"


def _builtin(name: str) -> RewardFn:
    import aha.rewards  # noqa: F401  (registers the built-ins)

    if name not in BUILTIN_REWARDS:
        raise RewardConfigError(
            f"unknown reward function {name!r}; built-ins: {', '.join(sorted(BUILTIN_REWARDS))}; "
            "or give an import path 'package.module:function'"
        )
    return BUILTIN_REWARDS[name]


def _import_target(spec: str) -> Any:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise RewardConfigError(f"reward import path {spec!r} must look like 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name or module_name.startswith(f"{exc.name}."):
            raise RewardConfigError(f"reward {spec!r}: module {module_name!r} not found") from exc
        raise RewardConfigError(f"reward {spec!r}: importing {module_name!r} failed: {exc}") from exc
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise RewardConfigError(f"reward {spec!r}: {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise RewardConfigError(
            f"reward {spec!r}: {attribute!r} is a {type(target).__name__}, not callable; "
            "point at a function fn(prompts, completions, **fields) -> list[float]"
        )
    return target


def _bind_options(fn: RewardFn, options: Mapping[str, Any]) -> RewardFn:
    def with_options(prompts, completions, **fields):
        clash = set(options) & set(fields)
        if clash:
            raise RewardConfigError(f"options {sorted(clash)} have the same names as dataset fields")
        return fn(prompts, completions, **fields, **options)

    return with_options


def _default_name(spec: str) -> str:
    return spec.rpartition(":")[2].rpartition(".")[2] if ":" in spec else spec
