"""Workers for the 2-process gloo tests (tests/test_dist_*.py): each joins a process group as torchrun
would set it up (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT), runs its share, and rank 0 saves what
the test compares. Run with `spawn_workers`."""

from __future__ import annotations

import os
import socket
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

HELPERS = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_workers(fn, world: int, *args) -> None:
    """Run `fn(*args)` in `world` fresh processes joined in one gloo process group. The children start
    with this process's sys.path less tests/helpers itself, which other tests may have added: its
    `kernels` module would shadow the package transformers imports."""
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HELPERS]
    try:
        mp.spawn(_entry, args=(world, free_port(), fn, args), nprocs=world, join=True)
    finally:
        sys.path[:] = saved


def _entry(rank: int, world: int, port: int, fn, args) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
    )
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        fn(*args)
    finally:
        dist.destroy_process_group()
    # Leave without interpreter finalization: there, after the work and its results were done, a
    # spawned rank sometimes aborted ("terminate called without an active exception", SIGABRT: a
    # joinable native thread destroyed at exit), which failed the test in about 1 run in 5 on an idle
    # machine. os._exit(0) skipped it in 6 of 6 runs; an exception in `fn` still propagates above.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def update_worker(model_dir: str, strategy: str, cases: dict, out: str) -> None:
    """For each case (name -> (PolicyLossSettings, micro_batch_size, model variant, precision)): one
    policy_update on this rank's
    groups of the shared test batch; then one SFT step on this rank's rows of the SFT test batch. The
    model is wrapped by `strategy` each time; rank 0 saves the whole updated weights and the metrics."""
    from test_dist_update import GROUP, build, make_batch, sft_batch, sgd

    from aha.dist.wrap import full_state_dict, wrap_model
    from aha.models.loading import load_model
    from aha.train.policy_update import policy_update
    from aha.train.precision import Precision
    from aha.train.sft import rank_scaled_nll

    rank, world = dist.get_rank(), dist.get_world_size()
    results = {}
    for name, (settings, micro, variant, precision) in cases.items():
        model = build(model_dir, variant)
        batch = make_batch(load_model(model_dir))  # the same on every rank (seeded)
        per_rank = batch.input_ids.shape[0] // world
        mine = batch.select(torch.arange(rank * per_rank, (rank + 1) * per_rank))
        wrap_model(model, strategy, precision)
        metrics = policy_update(
            model,
            sgd(model),
            mine,
            settings,
            passes=1,
            minibatches=1,
            group_size=GROUP,
            grad_clip=1e9,  # measured, never clipping
            generator=torch.Generator().manual_seed(0),
            micro_batch_size=micro,
            precision=Precision(precision),
        )
        results[name] = {"weights": full_state_dict(model), "metrics": metrics}

    model = load_model(model_dir)
    batch = sft_batch()
    per_rank = batch.input_ids.shape[0] // world
    rows = slice(rank * per_rank, (rank + 1) * per_rank)
    wrap_model(model, strategy, "fp32")
    optimizer = sgd(model)
    loss, batch_loss = rank_scaled_nll(model, type(batch)(batch.input_ids[rows], batch.loss_mask[rows]))
    loss.backward()
    optimizer.step()
    results["sft"] = {"weights": full_state_dict(model), "loss": batch_loss}
    results["generation"] = generation_case(model_dir, strategy, rank)
    if rank == 0:
        torch.save(results, Path(out))


def generation_case(model_dir: str, strategy: str, rank: int) -> list[list[str]]:
    """Greedy completions of this rank's prompts (GENERATION[rank]: other prompts, another length, so
    the ranks run different numbers of forwards) from the wrapped model on weights gathered once
    (`full_weights`); every rank's, gathered to rank 0."""
    from test_dist_update import GENERATION

    from aha.dist.reduce import gather_lists
    from aha.dist.wrap import full_weights, wrap_model
    from aha.models.loading import load_model, load_tokenizer
    from aha.rollout import make_engine

    model = wrap_model(load_model(model_dir), strategy, "fp32")
    engine = make_engine("native", model, load_tokenizer(model_dir), decode="hf")
    prompts, params = GENERATION[rank]
    with full_weights(model):
        completions = engine.generate(prompts, params).completions
    return gather_lists([completions])


def rm_worker(model_dir: str, strategy: str, cases: list[str], out: str) -> None:
    """For each reward-model case of tests/test_dist_rm.py: one SGD step on this rank's rankings of the
    case's batch, the scalar model wrapped by `strategy`; rank 0 saves the whole weights, the logged
    loss and the batch's pair accuracy."""
    from test_dist_rm import CASES, features_of, rm_model, sgd, step

    from aha.dist.wrap import full_state_dict, wrap_model

    rank, world = dist.get_rank(), dist.get_world_size()
    results = {}
    for name in cases:
        batch, center_coef, frozen = CASES[name]
        per_rank = len(batch) // world
        mine = batch[rank * per_rank : (rank + 1) * per_rank]
        model = rm_model(model_dir, frozen)
        features = features_of(model, mine) if frozen else None
        wrap_model(model, strategy, "fp32")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loss, accuracy = step(model, sgd(model), mine, center_coef, features)
        results[name] = {
            "weights": full_state_dict(model),
            "loss": loss,
            "accuracy": accuracy,
            "warnings": [str(w.message) for w in caught],
        }
    if rank == 0:
        torch.save(results, Path(out))


def ppo_worker(model_dir: str, strategies: list[str], cases: list[str], out: str) -> None:
    """For each strategy and PPO case of tests/test_dist_ppo.py: the policy and a fresh critic, each
    wrapped by the strategy, take one PPO update on this rank's groups of the case's batch; rank 0 saves
    both models' whole weights and the metrics."""
    from test_dist_ppo import CASES, ppo_batch, ppo_critic, ppo_update

    from aha.dist.wrap import full_state_dict, wrap_model
    from aha.models.loading import load_model

    rank, world = dist.get_rank(), dist.get_world_size()
    results: dict = {}
    for strategy in strategies:
        results[strategy] = {}
        for name in cases:
            algo, micro = CASES[name]
            policy, critic = load_model(model_dir), ppo_critic(model_dir)
            batch, scores, noise = ppo_batch(model_dir)  # the same on every rank (seeded)
            per_rank = batch.input_ids.shape[0] // world
            rows = torch.arange(rank * per_rank, (rank + 1) * per_rank)
            for model in (policy, critic):
                wrap_model(model, strategy, "fp32")
            metrics, _ = ppo_update(
                policy, critic, batch.select(rows), scores[rows], noise[rows], algo, micro
            )
            results[strategy][name] = {
                "policy": full_state_dict(policy),
                "critic": full_state_dict(critic),
                "metrics": metrics,
            }
    if rank == 0:
        torch.save(results, Path(out))
