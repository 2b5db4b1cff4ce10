"""Damaged copies of a good safetensors or GGUF file, drawn from a seeded random.Random: truncations,
flipped header bytes, and absurd lengths, counts, offsets, dims and dtypes written where the header keeps
them. Each mutant is (description, bytes); the description says what was changed, so a failure can be
reproduced by hand.

The places to damage are found with independent readers (json for safetensors, the gguf package's own
reader for GGUF), not with the aha code under test.
"""

from __future__ import annotations

import json
import random
import struct
from collections.abc import Iterator
from pathlib import Path

ABSURD_U64 = [0, 1, 2**31, 2**32 - 1, 2**40, 2**63, 2**64 - 1]
ABSURD_U32 = [0, 1, 5, 255, 2**16, 2**31, 2**32 - 1]


def safetensors_mutants(good: bytes, rng: random.Random, count: int) -> Iterator[tuple[str, bytes]]:
    (n,) = struct.unpack("<Q", good[:8])
    header = json.loads(good[8 : 8 + n])
    data = good[8 + n :]
    names = sorted(k for k in header if k != "__metadata__")

    def rewrite(new_header: object) -> bytes:
        raw = json.dumps(new_header).encode()
        return struct.pack("<Q", len(raw)) + raw + data

    for _ in range(count):
        kind = rng.randrange(8)
        name = rng.choice(names)
        if kind == 0:
            cut = rng.randrange(len(good))
            yield f"cut to {cut} bytes", good[:cut]
        elif kind == 1:
            value = rng.choice([*ABSURD_U64, n - 1, n + 1, len(good), rng.randrange(2**64)])
            yield f"header length {value}", struct.pack("<Q", value) + good[8:]
        elif kind == 2:
            at, bits = 8 + rng.randrange(n), rng.randrange(1, 256)
            yield f"header byte {at} xor {bits}", good[:at] + bytes([good[at] ^ bits]) + good[at + 1 :]
        elif kind == 3:
            shape = rng.choice(
                [
                    [2**62, 2**62],
                    [2**64],
                    [-1],
                    [],
                    [1.5],
                    "x",
                    None,
                    [True],
                    [2**40, 0],
                    header[name]["shape"][::-1],
                ]
            )
            yield f"{name} shape {shape}", rewrite({**header, name: {**header[name], "shape": shape}})
        elif kind == 4:
            begin, end = header[name]["data_offsets"]
            offsets = rng.choice(
                [
                    [0, 2**64 - 1],
                    [end, begin],
                    [begin, begin],
                    [begin + 1, end + 1],
                    [begin, 2**40],
                    [-1, end],
                    [begin],
                ]
            )
            yield (
                f"{name} data_offsets {offsets}",
                rewrite({**header, name: {**header[name], "data_offsets": offsets}}),
            )
        elif kind == 5:
            dtype = rng.choice(["F33", "", 7, None, "F64", "F16", "I8", "BOOL"])
            yield f"{name} dtype {dtype!r}", rewrite({**header, name: {**header[name], "dtype": dtype}})
        elif kind == 6:
            many = rng.choice([10, 1000])
            extra = {
                f"extra.{i}": {"dtype": "F32", "shape": [2**40], "data_offsets": [0, 2**42]}
                for i in range(many)
            }
            yield f"{many} more tensors of 2**40 floats", rewrite({**header, **extra})
        else:
            bad = rng.choice([[], 3, "x", {"__metadata__": {"format": 1}}, {name: 1}, {name: {}}])
            yield f"header replaced by {str(bad)[:40]}", rewrite(bad)


def gguf_fields(path: Path) -> tuple[list[tuple[int, int, str]], int]:
    """(offset, width in bytes, what) of every length, count, type, dim and offset in a GGUF header, and
    where the tensor data starts; read with the gguf package's reader."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    base = reader.data.ctypes.data
    places = [(8, 8, "tensor count"), (16, 8, "key count")]
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        at = [int(part.ctypes.data - base) for part in field.parts]
        places += [(at[0], 8, f"{key} key length"), (at[2], 4, f"{key} value type")]
        if len(field.parts) > 4 and field.types[0].name == "ARRAY":
            places += [(at[3], 4, f"{key} item type"), (at[4], 8, f"{key} array length")]
            if len(field.parts) > 5 and field.types[-1].name == "STRING":
                places.append((at[5], 8, f"{key}[0] string length"))
        elif field.types[0].name == "STRING":
            places.append((at[3], 8, f"{key} string length"))
        else:
            width = int(field.parts[3].nbytes)
            places.append((at[3], width, f"{key} value"))
    for tensor in reader.tensors:
        name_len, _, n_dims, dims, dtype, offset = tensor.field.parts
        at = lambda part: int(part.ctypes.data - base)  # noqa: E731
        places += [
            (at(name_len), 8, f"{tensor.name} name length"),
            (at(n_dims), 4, f"{tensor.name} dim count"),
            (at(dtype), 4, f"{tensor.name} type"),
            (at(offset), 8, f"{tensor.name} data offset"),
        ]
        places += [(at(dims) + 8 * d, 8, f"{tensor.name} dim {d}") for d in range(len(dims))]
    return places, reader.data_offset


def gguf_mutants(path: Path, rng: random.Random, count: int) -> Iterator[tuple[str, bytes]]:
    good = path.read_bytes()
    places, data_start = gguf_fields(path)
    for _ in range(count):
        kind = rng.randrange(4)
        if kind == 0:
            cut = rng.randrange(data_start) if rng.random() < 0.7 else rng.randrange(len(good))
            yield f"cut to {cut} bytes", good[:cut]
        elif kind == 1:
            at, bits = rng.randrange(data_start), rng.randrange(1, 256)
            yield f"header byte {at} xor {bits}", good[:at] + bytes([good[at] ^ bits]) + good[at + 1 :]
        else:
            at, width, what = rng.choice(places)
            old = int.from_bytes(good[at : at + width], "little")
            values = ABSURD_U64 if width == 8 else ABSURD_U32 if width == 4 else [0, 1, 2 ** (8 * width) - 1]
            value = rng.choice([*values, old + 1, max(old - 1, 0), old * 2 % 2 ** (8 * width)])
            value %= 2 ** (8 * width)
            yield (
                f"{what} = {value} (was {old})",
                good[:at] + value.to_bytes(width, "little") + good[at + width :],
            )
