"""Read a W&B run's transaction log (run-<id>.wandb), the file an offline run writes its history to.

wandb >= 0.2x dropped its Python reader; the format is LevelDB's log format (records in 32 KiB blocks,
each chunk with a 7-byte header: CRC32, length, type full/first/middle/last) after a 7-byte ':W&B'
header, and each record is a wandb.proto Record message.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any

BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list[Any]:
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B transaction log (header {data[:7]!r})")
    pos, parts, records = 7, b"", []
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # a block's tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:  # zero padding to the block's end
            pos += BLOCK - pos % BLOCK
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        parts = chunk if kind in (FULL, FIRST) else parts + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            records.append(record)
    return records


def wait_until_complete(path: Path, timeout_s: float = 60.0) -> None:
    """Wait for the log's exit record: run.finish() returns before wandb-core (a separate process) has
    written everything to the file when the machine is busy."""
    deadline = time.monotonic() + timeout_s
    while not any(r.WhichOneof("record_type") == "exit" for r in read_records(path)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path}: no exit record after {timeout_s} s")
        time.sleep(0.2)


def history(path: Path) -> list[dict[str, Any]]:
    """The run's logged rows, in order, each {key: value, ..., '_step': step}."""
    rows = []
    for record in read_records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            )
    return rows


def config(path: Path) -> dict[str, Any]:
    """The run's config as sent at wandb.init (the run record's config items)."""
    out: dict[str, Any] = {}
    for record in read_records(path):
        if record.WhichOneof("record_type") == "run":
            out.update({i.key: json.loads(i.value_json) for i in record.run.config.update})
    return out
