"""Writes that survive a power cut, not only a killed process: a rename makes a write atomic, but the
page cache may still lose the renamed file's bytes, or the rename itself, unless both are fsynced.

`fsync_path` is what checkpoints (aha.train.checkpoint), the cut-back of a run's JSON-lines files on
resume (aha.train.session.cut_jsonl) and `write_text_atomically` use.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_path(path: Path) -> None:
    """fsync a file's data, or a directory's entries (a rename into it); directories cannot be opened
    for fsync on Windows, where this skips them."""
    if path.is_dir() and os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomically(path: Path, text: str) -> None:
    """Write `text` to `path` through a temp file beside it (`<name>.tmp`), fsynced before it is renamed
    into place and the directory fsynced after: a crash or a power cut leaves the old file or the new
    one, never a part."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        fsync_path(tmp)
    except OSError:  # a full disk: the old file stays; a part-written temp file is of no use
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)
    fsync_path(path.parent)
