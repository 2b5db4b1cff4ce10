"""Which process this is under `torchrun`, and the process group it joins.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK (and MASTER_ADDR/MASTER_PORT for the rendezvous); a
plain `python -m aha ...` sets none of them and runs as rank 0 of 1 without any process group.
torch is imported only inside the functions that need it: the CLI checks a command (`aha report`
included, which never loads torch) before anything heavy is imported.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from aha.config import ConfigError

STRATEGIES = ("ddp", "fsdp2")


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes metrics, samples, plots and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_from(environ: Mapping[str, str]) -> DistEnv | None:
    """The torchrun variables of `environ`, or None when it was not launched by torchrun."""
    if "RANK" not in environ:
        return None
    try:
        rank, world = int(environ["RANK"]), int(environ.get("WORLD_SIZE", "1"))
        local = int(environ.get("LOCAL_RANK", "0"))
    except ValueError as e:
        raise ConfigError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers (set by torchrun): {e}") from None
    if not 0 <= rank < world or local < 0:
        raise ConfigError(f"RANK={rank} is not in [0, WORLD_SIZE={world}) or LOCAL_RANK={local} < 0")
    return DistEnv(rank, world, local)


def current() -> DistEnv:
    """This process's place in the process group (rank 0 of 1 when there is none)."""
    import torch.distributed as dist

    if not in_process_group():
        return DistEnv()
    return DistEnv(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def in_process_group() -> bool:
    """Whether this process joined a process group (launched by torchrun, even as its only process:
    `--nproc_per_node 1` with fsdp2 still wraps the model)."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def world_size_from_environ() -> int:
    env = env_from(os.environ)
    return 1 if env is None else env.world_size


def init(device: str) -> tuple[DistEnv, str]:
    """Join torchrun's process group (NCCL on CUDA, gloo on the CPU) if launched by it; returns this
    process's place and its device (`cuda` becomes `cuda:LOCAL_RANK`). Idempotent; without torchrun
    it returns (rank 0 of 1, `device`) and starts nothing."""
    import torch
    import torch.distributed as dist

    env = env_from(os.environ)
    if env is None:
        return current(), device
    on_cuda = torch.device(device).type == "cuda"
    if on_cuda:
        if torch.device(device).index is not None and env.world_size > 1:
            raise ConfigError(
                f"model.device={device!r} names one GPU; under torchrun use 'cuda' or 'auto' (each rank "
                "takes GPU LOCAL_RANK)"
            )
        device = f"cuda:{env.local_rank}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if on_cuda else "gloo")
    return env, device


def shutdown() -> None:
    """Leave the process group (at the end of a command), if one was joined, and end its backend's
    threads while Python is still whole. Never imports torch."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        _release_mesh_groups()


def _release_mesh_groups() -> None:
    """destroy_process_group forgets the groups, but FSDP2's device meshes still hold them (`_pg_registry`)
    and DTensor's dispatch caches hold the meshes: gloo's worker and TCP-loop threads then lived on into
    interpreter teardown, where a native thread that needs the GIL is ended by the runtime and a rank
    can abort with "terminate called without an active exception". Dropping the meshes' references
    frees the groups now, which joins their threads (tests/test_dist_env.py checks that none is left)."""
    import gc

    mesh_module = sys.modules.get("torch.distributed.device_mesh")
    mesh_cls = getattr(mesh_module, "DeviceMesh", None)
    if mesh_cls is None:  # no mesh was ever built (not FSDP2)
        return
    for obj in gc.get_objects():
        # type(), not isinstance: the latter reads __class__, which some of torch's deprecated objects warn on
        if issubclass(type(obj), mesh_cls) and isinstance(getattr(obj, "_pg_registry", None), dict):
            obj._pg_registry.clear()
    gc.collect()


def barrier() -> None:
    import torch.distributed as dist

    if in_process_group():
        dist.barrier()


def rank_seed(seed: int, rank: int) -> int:
    """The sampling seed of `rank` for a run (or step) seed: rank 0 keeps `seed`, so a one-process run
    samples exactly as before; other ranks get a stable, well-mixed 63-bit derivation (no two ranks
    draw the same stream, and a resumed run draws what the uninterrupted one did)."""
    if rank == 0:
        return seed
    digest = hashlib.sha256(f"aha.rank_seed:{seed}:{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def shard(items: list, env: DistEnv, what: str) -> list:
    """This rank's contiguous share of `items` (ranks in order, so gathering them rebuilds the list).
    The split must be even: every rank then runs the same number of forwards and optimizer steps."""
    if len(items) % env.world_size:
        raise ConfigError(
            f"{what}={len(items)} must be divisible by the number of processes ({env.world_size})"
        )
    per_rank = len(items) // env.world_size
    return items[env.rank * per_rank : (env.rank + 1) * per_rank]


def check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise ConfigError(f"dist.strategy={strategy!r} is not one of {', '.join(STRATEGIES)}")


def require_single_process(what: str) -> None:
    """Refuse, in one line, a stage that has no multi-process support yet: under torchrun with several
    processes it would otherwise run N identical copies writing to one run directory."""
    world = world_size_from_environ()
    if world > 1:
        raise ConfigError(
            f"{what} does not support several processes yet (torchrun WORLD_SIZE={world}); run it as "
            "one process (aha grpo, ppo, sft, rm and rlhf run under torchrun, docs/scaling.md)"
        )
