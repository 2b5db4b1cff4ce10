"""Atomic checkpoints and exact resume.

Layout: run_dir/checkpoints/step-00000042/ holds
  model.safetensors, config.json, ... (the model's `save_pretrained` layout: any HF tool can load it;
                                       under LoRA peft's adapter_model.safetensors + adapter_config.json)
  tokenizer files                      (`tokenizer.save_pretrained`)
  optimizer.pt, scheduler.pt           (state dicts)
  trainer_state.json                   ({"step": 42, ...the trainer's JSON-able state})
  rng.pt                               (python, numpy, torch CPU and CUDA generator states)
  extra.pt                             (optional: e.g. the prompt sampler's state)
  <name>/                              (optional: each further named model of the run, e.g. critic/ or
                                        reference/: its save_pretrained layout + optimizer.pt, scheduler.pt)

A checkpoint is written into a hidden temp dir beside its final place, fsync'ed, then renamed: a crash
leaves either the previous checkpoints or the complete new one, never a half-written `step-*`. Leftover
temp dirs are ignored by `latest_checkpoint` and removed by the next save. One process (rank 0) writes;
under torchrun the other ranks wait at a barrier until it has (TrainingSession.save_if_due), so the
cleanup never meets another process's save.

Everything is read back with `torch.load(weights_only=True)` (no arbitrary unpickling): the numpy RNG
state is stored as plain ints and a tensor for that reason, and `extra_state` is checked at save time to
hold only data that loads that way.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from aha.durable import fsync_path
from aha.models.weight_files import load_safetensors
from aha.write_errors import write_failed

CHECKPOINTS = "checkpoints"
TMP_PREFIX = ".tmp-"
_STEP_DIR = re.compile(r"^step-(\d+)$")
_MODEL_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
ModelState = tuple[Any, Any, Any]  # (model, optimizer or None, scheduler or None)
_SAFE_LEAVES = (type(None), bool, int, float, str, bytes, torch.Tensor, torch.Size, torch.dtype)


class CheckpointError(RuntimeError):
    """A checkpoint is incomplete or does not match the model it is loaded into."""


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: Any,
    tokenizer: Any,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    trainer_state: dict | None = None,
    keep_last: int | None = 2,
    extra_state: dict | None = None,
    models: dict[str, ModelState] | None = None,
    policy_state: tuple[dict, dict] | None = None,
    gathered_models: dict[str, tuple[dict, dict]] | None = None,
) -> Path:
    """Atomically write run_dir/checkpoints/step-<step:08d>/ and prune all but the newest `keep_last`
    (None keeps all). `trainer_state` must be JSON-able; tensors and the like go in `extra_state`.
    `models` maps a name to (model, optimizer, scheduler) of further models, each saved in <name>/.
    `policy_state`: (whole weights, optimizer state) already gathered, for a model whose own tensors
    are shards (FSDP2, aha.dist.wrap); written in the same layout as an unsharded model's.
    `gathered_models`: the same for those of `models` that are sharded, by name."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if keep_last is not None and keep_last < 1:
        raise ValueError(f"keep_last must be >= 1 or None, got {keep_last}")
    state_json = _trainer_state_json(step, trainer_state or {})
    if extra_state is not None:
        _check_loadable(extra_state, "extra_state")
    for name in models or {}:
        if not _MODEL_NAME.match(name):
            raise ValueError(f"model name {name!r} must be a plain lower-case name (it becomes a directory)")

    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_dirs(root)
    name = f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{name}-", dir=root))
    try:
        _save_model(tmp, model, optimizer, scheduler, policy_state)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for sub_name, (sub_model, sub_optimizer, sub_scheduler) in (models or {}).items():
            gathered = (gathered_models or {}).get(sub_name)
            _save_model(tmp / sub_name, sub_model, sub_optimizer, sub_scheduler, gathered)
        if extra_state is not None:
            torch.save(extra_state, tmp / "extra.pt")
        torch.save(_rng_state(), tmp / "rng.pt")
        (tmp / "trainer_state.json").write_text(state_json)
        _fsync_tree(tmp)
        final = _commit(tmp, root / name)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            previous = latest_checkpoint(run_dir)
            kept = (
                f"the previous checkpoint {previous} is intact"
                if previous
                else "no earlier checkpoint exists"
            )
            raise write_failed(root / name, exc, kept) from exc
        raise
    if keep_last is not None:
        _prune(root, keep_last, keep=final)
    return final


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _STEP_DIR.match(path.name)
        if match and path.is_dir() and (path / "trainer_state.json").is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint with the highest step, or None; temp dirs of interrupted saves are ignored."""
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


def load_checkpoint(
    ckpt_dir: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    *,
    restore_rng: bool = True,
    models: dict[str, ModelState] | None = None,
) -> dict[str, Any]:
    """Load weights (safetensors) into `model`, restore optimizer, scheduler and RNG states in place, and
    return the trainer state: {"step": ..., <saved trainer_state>, "extra": <extra_state or {}>}.
    `models` as in `save_checkpoint`: each is restored from its <name>/ directory."""
    ckpt_dir = Path(ckpt_dir)
    state_file = ckpt_dir / "trainer_state.json"
    if not state_file.is_file():
        raise CheckpointError(f"{ckpt_dir} is not a complete checkpoint (no trainer_state.json)")
    _load_model(ckpt_dir, model, optimizer, scheduler)
    for name, (sub_model, sub_optimizer, sub_scheduler) in (models or {}).items():
        if not (ckpt_dir / name).is_dir():
            raise CheckpointError(f"{ckpt_dir} has no {name}/ (the run that saved it had no {name} model)")
        _load_model(ckpt_dir / name, sub_model, sub_optimizer, sub_scheduler)
    extra = checkpoint_extra_state(ckpt_dir)
    if restore_rng:
        _set_rng_state(_torch_load(ckpt_dir / "rng.pt"))
    return {**json.loads(state_file.read_text()), "extra": extra}


def checkpoint_extra_state(ckpt_dir: str | Path) -> dict[str, Any]:
    """A checkpoint's extra state (extra.pt, read with weights_only), or {} where it has none."""
    path = Path(ckpt_dir) / "extra.pt"
    return _torch_load(path) if path.is_file() else {}


# ---------------------------------------------------------------------------------------------------------
# Writing


def _trainer_state_json(step: int, trainer_state: dict) -> str:
    reserved = {"step", "extra"} & set(trainer_state)
    if reserved:
        raise ValueError(f"trainer_state must not use the reserved keys {sorted(reserved)}")
    try:
        return json.dumps({"step": step, **trainer_state}, indent=2, allow_nan=True)
    except TypeError as e:
        raise TypeError(
            f"trainer_state must be JSON-serialisable ({e}); put other objects in extra_state"
        ) from None


def _save_model(
    out: Path,
    model: Any,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any,
    gathered: tuple[dict, dict] | None = None,
) -> None:
    if gathered is None:
        model.save_pretrained(out)
    else:
        model.save_pretrained(out, state_dict=gathered[0])
    if optimizer is not None:
        torch.save(optimizer.state_dict() if gathered is None else gathered[1], out / "optimizer.pt")
    if scheduler is not None:
        torch.save(scheduler.state_dict(), out / "scheduler.pt")


def _check_loadable(value: Any, where: str) -> None:
    """Fail at save time, not at resume time, if `torch.load(weights_only=True)` could not read it back."""
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where}: key {k!r} must be a str or int")
            _check_loadable(v, f"{where}[{k!r}]")
    elif isinstance(value, (list, tuple, set)):
        for i, v in enumerate(value):
            _check_loadable(v, f"{where}[{i}]")
    elif not isinstance(value, _SAFE_LEAVES):
        raise TypeError(
            f"{where} is a {type(value).__name__}, which torch.load(weights_only=True) cannot read back; "
            "store plain data (dicts, lists, numbers, strings, tensors)"
        )


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    try:
        import numpy as np
    except ImportError:
        np = None
    if np is not None:
        name, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = {
            "name": str(name),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*"), reverse=True):  # files before the directories holding them
        fsync_path(path)
    fsync_path(root)


def _commit(tmp: Path, final: Path) -> Path:
    """Rename the finished temp dir into place. Re-saving a step first moves the old copy aside (a crash
    between the two renames leaves the earlier steps, both copies hidden, never a partial step dir)."""
    replaced = None
    if final.exists():
        replaced = final.with_name(f"{TMP_PREFIX}replaced-{final.name}-{os.getpid()}")
        os.replace(final, replaced)
    os.replace(tmp, final)
    fsync_path(final.parent)
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)
    return final


def _prune(root: Path, keep_last: int, keep: Path) -> None:
    older = [path for path in list_checkpoints(root.parent) if path != keep]
    for path in older[: max(0, len(older) - (keep_last - 1))]:
        doomed = path.with_name(f"{TMP_PREFIX}deleting-{path.name}")
        os.replace(path, doomed)  # hide it first: a crash mid-delete leaves no half checkpoint behind
        shutil.rmtree(doomed, ignore_errors=True)


def _remove_stale_temp_dirs(root: Path) -> None:
    for path in root.iterdir():
        if path.name.startswith(TMP_PREFIX) and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------
# Reading


def _torch_load(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{path.parent} has no {path.name} (it was saved without it)")
    return torch.load(path, map_location="cpu", weights_only=True)


def _load_model(ckpt_dir: Path, model: Any, optimizer: torch.optim.Optimizer | None, scheduler: Any) -> None:
    _load_weights(ckpt_dir, model)
    if optimizer is not None:
        optimizer.load_state_dict(_torch_load(ckpt_dir / "optimizer.pt"))
    if scheduler is not None:
        scheduler.load_state_dict(_torch_load(ckpt_dir / "scheduler.pt"))


def _load_weights(ckpt_dir: Path, model: torch.nn.Module) -> None:
    if (ckpt_dir / "adapter_model.safetensors").is_file():
        _load_adapters(ckpt_dir, model)
        return
    index = ckpt_dir / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (ckpt_dir / "model.safetensors").is_file():
        shards = ["model.safetensors"]
    else:
        raise CheckpointError(f"{ckpt_dir} has no safetensors weights (model.safetensors or its index)")
    expected = model.state_dict()
    loaded: set[str] = set()
    for shard in shards:  # one shard in memory at a time
        tensors = load_safetensors(ckpt_dir / shard)
        unexpected = sorted(set(tensors) - set(expected))
        if unexpected:
            raise CheckpointError(f"{ckpt_dir / shard} has weights the model lacks: {unexpected[:5]}")
        model.load_state_dict(tensors, strict=False)
        loaded.update(tensors)
    # save_pretrained stores tied weights once (e.g. lm_head.weight == embed_tokens.weight): a key missing
    # from the files is fine when it shares storage with a loaded one.
    aliases: dict[int, set[str]] = {}
    for key, tensor in expected.items():
        aliases.setdefault(tensor.data_ptr(), set()).add(key)
    missing = sorted(k for k in set(expected) - loaded if not aliases[expected[k].data_ptr()] & loaded)
    if missing:
        raise CheckpointError(f"{ckpt_dir} lacks weights the model has: {missing[:5]}")


def _load_adapters(ckpt_dir: Path, model: torch.nn.Module) -> None:
    """A LoRA run's checkpoint holds only the adapters (peft's layout); the base weights are the model's."""
    from aha.models.lora import adapter_state, is_lora_model, load_adapter_state

    if not is_lora_model(model):
        raise CheckpointError(f"{ckpt_dir} holds LoRA adapters but the model has none (set model.lora.r)")
    tensors = load_safetensors(ckpt_dir / "adapter_model.safetensors")
    expected = set(adapter_state(model))
    if set(tensors) != expected:
        diff = sorted(set(tensors) ^ expected)
        raise CheckpointError(f"{ckpt_dir}: adapters differ from the model's (rank or targets?): {diff[:5]}")
    load_adapter_state(model, tensors)


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        import numpy as np

        s = state["numpy"]
        keys = s["keys"].numpy().astype(np.uint32)
        np.random.set_state((s["name"], keys, s["pos"], s["has_gauss"], s["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        # A resume on fewer or more GPUs restores the devices both runs have.
        for device, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, device)


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value
