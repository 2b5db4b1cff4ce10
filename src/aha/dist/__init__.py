"""Running under `torchrun`: the process group, per-rank seeds, reductions and model wrapping (DDP or
FSDP2's `fully_shard`). Everything here is a no-op in a plain single process."""
