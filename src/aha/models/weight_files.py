"""Check the header of a safetensors or GGUF file before a library reads it.

The readers behind `from_pretrained` and `aha convert-gguf` trust the header: a damaged GGUF file makes
the gguf package run out of memory on an array length of 2**63, index past the end (a raw IndexError) or
decode garbage (UnicodeDecodeError), and a damaged safetensors file fails with an error that does not
say which file it was (tests/test_faults_fuzz.py found these). Here the header is walked with every length checked against the bytes that are
really there, so the work is bounded by the file's size, and anything inconsistent is one
`WeightFileError` naming the file, the place and what is wrong.
"""

from __future__ import annotations

import json
import math
import mmap
import re
import struct
from pathlib import Path


class WeightFileError(ValueError):
    """A weights file (safetensors, GGUF) is damaged or is not what its header says."""


def check_model_dir(path: str | Path) -> None:
    """Check every safetensors file of a local model directory (a hub id or other path: nothing to do)."""
    path = Path(path)
    if path.is_dir():
        for file in sorted(path.glob("*.safetensors")):
            check_safetensors(file)


def load_safetensors(path: str | Path) -> dict:
    """The tensors of a safetensors file on the CPU, its header checked first."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    check_safetensors(path)
    try:
        return load_file(path, device="cpu")
    except SafetensorError as err:  # a rule of the library's that the check above does not repeat
        raise WeightFileError(f"{path}: {err}") from err


# ---------------------------------------------------------------------------------------------------------
# safetensors: 8-byte little-endian header length N, N bytes of JSON, then the tensors' bytes.

SAFETENSORS_MAX_HEADER = 100_000_000  # the safetensors library's own limit
SAFETENSORS_BITS = {
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64, "C64": 64,
}  # fmt: skip


def check_safetensors(path: str | Path) -> None:
    """Raise WeightFileError unless `path` is a complete, self-consistent safetensors file: header
    length within the file, a JSON object of tensors with known dtypes and non-negative integer shapes,
    each tensor's byte range the size its shape and dtype need, the ranges back to back and covering
    exactly the data that follows the header."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise WeightFileError(
                f"{path}: not a safetensors file ({size} bytes, shorter than its 8-byte header length)"
            )
        (n,) = struct.unpack("<Q", prefix)
        if n > min(size - 8, SAFETENSORS_MAX_HEADER):
            raise WeightFileError(
                f"{path}: header length {n} runs past the end of the file ({size} bytes; cut short or damaged)"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise WeightFileError(f"{path}: header is not UTF-8 JSON ({err})") from None
    if not isinstance(header, dict):
        raise WeightFileError(f"{path}: header is a JSON {type(header).__name__}, not an object")
    data_size = size - 8 - n
    ranges = []
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise WeightFileError(f"{path}: __metadata__ must map names to strings")
            continue
        ranges.append((*_safetensors_range(path, name, info), name))
    end = 0
    for begin, stop, name in sorted(ranges):
        if begin != end:
            raise WeightFileError(
                f"{path}: tensor {name!r} starts at byte {begin} of the data, expected {end} "
                "(tensors must follow each other without gaps or overlaps)"
            )
        end = stop
    if end != data_size:
        raise WeightFileError(
            f"{path}: the tensors take {end} bytes but the file holds {data_size} after the header "
            "(cut short or damaged)"
        )


def _safetensors_range(path: Path, name: str, info: object) -> tuple[int, int]:
    where = f"{path}: tensor {name!r}"
    if not isinstance(info, dict):
        raise WeightFileError(f"{where}: expected an object with dtype, shape and data_offsets")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in SAFETENSORS_BITS:
        raise WeightFileError(f"{where}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise WeightFileError(f"{where}: shape {shape!r} is not a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
        raise WeightFileError(f"{where}: data_offsets {offsets!r} is not [begin, end]")
    begin, end = offsets
    bits = math.prod(shape) * SAFETENSORS_BITS[dtype]
    needed = bits // 8
    if bits % 8 or end - begin != needed:
        raise WeightFileError(
            f"{where}: data_offsets {offsets} hold {end - begin} bytes, but shape {shape} of {dtype} "
            f"needs {bits / 8:g}"
        )
    return begin, end


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# ---------------------------------------------------------------------------------------------------------
# GGUF: magic, version, tensor and key counts, key/value metadata, tensor infos, aligned tensor data.

GGUF_MAX_DIMS = 4  # ggml's GGML_MAX_DIMS
GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
GGUF_STRING, GGUF_ARRAY = 8, 9


class _GGUFCursor:
    """Reads a GGUF file front to back; every read is checked against the end of the file."""

    def __init__(self, path: Path, data: mmap.mmap | bytes, order: str):
        self.path, self.data, self.order, self.pos = path, data, order, 0

    def fail(self, what: str) -> WeightFileError:
        return WeightFileError(f"{self.path}: byte {self.pos}: {what}")

    def need(self, n: int, what: str) -> None:
        if n > len(self.data) - self.pos:
            raise self.fail(
                f"{what} needs {n} bytes, the file has {len(self.data) - self.pos} left (cut short or damaged)"
            )

    def unpack(self, fmt: str, what: str) -> int | float | bool:
        size = struct.calcsize(fmt)
        self.need(size, what)
        (value,) = struct.unpack_from(self.order + fmt, self.data, self.pos)
        self.pos += size
        return value

    def string(self, what: str) -> str:
        n = self.unpack("Q", f"{what}'s length")
        self.need(n, f"{what} ({n} bytes)")
        raw = bytes(self.data[self.pos : self.pos + n])
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not UTF-8") from None
        self.pos += n
        return text

    def count(self, what: str, min_item_size: int) -> int:
        """A u64 count of items that take at least `min_item_size` bytes each: more than the rest of the
        file can hold is damage (this bound keeps every loop over it short)."""
        n = self.unpack("Q", what)
        if min_item_size and n > (len(self.data) - self.pos) // min_item_size:
            raise self.fail(f"{what} is {n}, more than the rest of the file can hold")
        return n

    def value(self, kind: int, what: str) -> object:
        if kind in GGUF_SCALARS:
            return self.unpack(GGUF_SCALARS[kind], what)
        if kind == GGUF_STRING:
            return self.string(what)
        if kind == GGUF_ARRAY:
            item = self.unpack("I", f"{what}'s item type")
            if item in GGUF_SCALARS:
                size = struct.calcsize(GGUF_SCALARS[item])
                n = self.count(f"{what}'s length", size)
                self.pos += n * size  # numbers are not needed here, only where the next entry starts
                return None
            n = self.count(f"{what}'s length", 8 if item == GGUF_STRING else 12)
            return [self.value(item, f"{what}[{i}]") for i in range(n)]
        raise self.fail(f"{what} has unknown value type {kind}")


def check_gguf(path: str | Path) -> int:
    """Raise WeightFileError unless `path` is a well-formed GGUF file (version 2 or 3): counts, string and
    array lengths within the file, UTF-8 keys and strings, unique keys and tensor names, at most 4 dims,
    known tensor types, and each tensor's data aligned and inside the file. Returns the number of
    tensor elements the file holds."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    path = Path(path)
    with path.open("rb") as f:
        if path.stat().st_size < 24:
            raise WeightFileError(
                f"{path}: not a GGUF file ({path.stat().st_size} bytes, shorter than its header)"
            )
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        if data[:4] != b"GGUF":
            raise WeightFileError(f"{path}: not a GGUF file (it does not start with GGUF)")
        order = "<" if struct.unpack_from("<I", data, 4)[0] & 0xFFFF else ">"  # as the gguf reader decides
        cursor = _GGUFCursor(path, data, order)
        cursor.pos = 4
        version = cursor.unpack("I", "version")
        if version not in (2, 3):
            raise cursor.fail(f"GGUF version {version}; only versions 2 and 3 can be read")
        n_tensors = cursor.count("tensor count", 8 + 4 + 4 + 8)
        n_keys = cursor.count("key count", 8 + 4 + 1)
        metadata = {}
        for i in range(n_keys):
            key = cursor.string(f"key {i}")
            if key in metadata:
                raise cursor.fail(f"key {key!r} appears twice")
            kind = cursor.unpack("I", f"{key}'s value type")
            metadata[key] = (kind, cursor.value(kind, key))
        kind, alignment = metadata.get("general.alignment", (4, 32))
        if (
            kind != 4 or alignment <= 0 or alignment & (alignment - 1)
        ):  # 4: uint32, as the gguf reader requires
            raise WeightFileError(f"{path}: general.alignment {alignment!r} is not a uint32 power of two")
        tensors = []
        for i in range(n_tensors):
            name = cursor.string(f"tensor {i}'s name")
            n_dims = cursor.unpack("I", f"tensor {name!r}'s dimension count")
            if n_dims > GGUF_MAX_DIMS:
                raise cursor.fail(f"tensor {name!r} has {n_dims} dimensions, more than {GGUF_MAX_DIMS}")
            dims = [cursor.unpack("Q", f"tensor {name!r}'s dimension {d}") for d in range(n_dims)]
            kind = cursor.unpack("I", f"tensor {name!r}'s type")
            offset = cursor.unpack("Q", f"tensor {name!r}'s data offset")
            tensors.append((name, dims, kind, offset))
        _check_block_count(path, metadata, [name for name, *_ in tensors])
        data_start = -(-cursor.pos // alignment) * alignment
        names: set[str] = set()
        elements, spans = 0, []
        for name, dims, kind, offset in tensors:
            where = f"{path}: tensor {name!r}"
            if name in names:
                raise WeightFileError(f"{where} appears twice")
            names.add(name)
            try:
                block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
            except (ValueError, KeyError):
                raise WeightFileError(f"{where}: unknown tensor type {kind}") from None
            n = math.prod(dims)
            if dims and dims[0] % block:
                raise WeightFileError(
                    f"{where}: first dimension {dims[0]} is not a multiple of its block ({block})"
                )
            if offset % alignment:
                raise WeightFileError(
                    f"{where}: data offset {offset} is not a multiple of the alignment {alignment}"
                )
            end = data_start + offset + n // block * block_bytes
            if end > len(data):
                raise WeightFileError(
                    f"{where}: shape {dims} at data offset {offset} ends at byte {end}, past the end of the "
                    f"file ({len(data)} bytes; cut short or damaged)"
                )
            elements += n
            spans.append((offset, end - data_start, name))
        spans.sort()
        for (_, end, first), (begin, _, second) in zip(spans, spans[1:], strict=False):
            if begin < end:
                raise WeightFileError(f"{path}: tensors {first!r} and {second!r} overlap in the file")
        return elements
    finally:
        data.close()


def _check_block_count(path: Path, metadata: dict[str, tuple[int, object]], names: list[str]) -> None:
    """`<architecture>.block_count` must be the number of blocks whose tensors (`blk.N.*`) the file holds:
    a damaged count would have transformers build that many layers (2**31 never finishes) or silently
    leave blocks out."""
    architecture = metadata.get("general.architecture", (None, None))[1]
    _, blocks = metadata.get(f"{architecture}.block_count", (None, None))
    if not isinstance(blocks, int) or isinstance(blocks, bool):
        return
    held = {match.group(1) for match in map(_BLOCK_TENSOR.search, names) if match}
    if held and blocks != len(held):
        raise WeightFileError(
            f"{path}: {architecture}.block_count is {blocks} but the file holds tensors of {len(held)} blocks"
        )


_BLOCK_TENSOR = re.compile(r"(?:^|\.)blk\.(\d+)\.")
