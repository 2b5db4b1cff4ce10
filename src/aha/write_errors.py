"""The one error a failed write into a run directory becomes (a full disk, an I/O error).

Raised by the metrics and sample writers, checkpoints and model exports alike, so the command line can
stop the run with one clear line saying which file failed and what is still intact, instead of a
traceback from deep inside torch or json.
"""

from __future__ import annotations

from pathlib import Path


class WriteFailed(OSError):
    """A file of the run directory could not be written (a full disk, an I/O error): the run stops here,
    and the message says what was kept."""


def write_failed(path: Path | str, exc: OSError, kept: str) -> WriteFailed:
    """The error to raise when writing `path` failed with `exc`; `kept` says what is still intact."""
    reason = exc.strerror or str(exc)
    code = f" (errno {exc.errno})" if exc.errno is not None else ""
    return WriteFailed(f"could not write {path}: {reason}{code}; {kept}")
