"""Build a C source in this package's style into a shared library on first use, cached per machine.

Why compiled on first use rather than at install: each kernel is one small C file with no torch headers,
so a C compiler builds it in under a second (a torch C++ extension takes ~35 s), and `-march=native`
fits it to the machine it runs on. Builds are cached under `$AHA_CACHE_DIR` (default ~/.cache/aha)
keyed by the sources, the flags, the compiler and the CPU, and written atomically. `load_library`
returns None (and says why in the log) where there is no compiler or the build fails; callers then keep
their torch ops.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

INCLUDE_DIR = Path(__file__).parent  # exp_approx.h
# Reassociation lets the reductions vectorize. Not -ffast-math: linked into a shared library it sets the
# CPU's flush-to-zero mode for the whole process (torch included) when the library loads.
CFLAGS = [
    "-O3",
    "-march=native",
    "-fno-math-errno",
    "-fno-trapping-math",
    "-fassociative-math",
    "-fno-signed-zeros",
    "-fopenmp",
    "-shared",
    "-fPIC",
]


def load_library(source: Path, name: str, fallback: str) -> ctypes.CDLL | None:
    """`source` built and loaded, or None where that is not possible; `name` and `fallback` (what the
    caller does instead) go into the log message."""
    try:
        return ctypes.CDLL(str(build_library(source)))
    except subprocess.CalledProcessError as error:
        log.warning("%s did not compile, %s:\n%s", name, fallback, error.stderr)
    except OSError as error:  # no compiler, or a build that does not load
        log.info("no %s (%s): %s", name, error, fallback)
    return None


def build_library(source: Path) -> Path:
    """Compile `source` unless a build for it (and the headers here), the compiler and the CPU is cached;
    return the library's path."""
    compiler = find_compiler()
    if compiler is None:
        raise FileNotFoundError(f"no C compiler: {os.environ.get('CC', 'cc')!r} is not on PATH (set CC)")
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True).stdout
    headers = [path.read_bytes() for path in sorted(INCLUDE_DIR.glob("*.h"))]
    key = hashlib.sha256(
        b"\0".join(
            [
                source.read_bytes(),
                *headers,
                " ".join(CFLAGS).encode(),
                version.encode(),
                cpu_signature().encode(),
            ]
        )
    ).hexdigest()[:16]
    cache = Path(os.environ.get("AHA_CACHE_DIR", Path.home() / ".cache" / "aha")) / "kernels"
    target = cache / f"{source.stem}-{key}.so"
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        built = Path(tmp) / target.name
        subprocess.run(
            [compiler, *CFLAGS, f"-I{INCLUDE_DIR}", str(source), "-o", str(built), "-lm"],
            capture_output=True,
            text=True,
            check=True,
        )
        os.replace(built, target)
    return target


def find_compiler() -> str | None:
    """The C compiler's path: `$CC` if set, else `cc`, looked up on PATH; None where there is none."""
    return shutil.which(os.environ.get("CC", "cc"))


def cpu_signature() -> str:
    """What -march=native depends on: the CPU model and its feature flags (a shared home directory may
    serve machines with different CPUs)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    wanted = [line for line in lines if line.startswith(("model name", "flags"))]
    return "\n".join(dict.fromkeys(wanted)) or platform.machine()
