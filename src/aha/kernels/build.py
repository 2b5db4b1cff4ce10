"""Build a C source in this package's style into a shared library on first use, cached per machine.

Why compiled on first use rather than at install: each kernel is one small C file with no torch headers,
so a C compiler builds it in under a second (a torch C++ extension takes ~35 s), and `-march=native`
fits it to the machine it runs on. Builds are cached under `$AHA_CACHE_DIR` (default ~/.cache/aha)
keyed by the sources, the flags, the compiler and the CPU (model and instruction-set flags, so an
AVX-512 build is never loaded on an AVX2 machine sharing the home directory), and written atomically.

Loading a shared library runs its code, so a cached one is loaded only if this user wrote it: the cache
directory and the library must be owned by the current user and writable by no one else (a build is
written 0755 into a 0700 directory). Otherwise, as where there is no compiler or the build fails,
`load_library` returns None and says why in the log; callers then keep their torch ops.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import stat
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


class UnsafeCacheError(RuntimeError):
    """The kernel cache (directory or library) could have been written by another user: not loaded."""


def load_library(source: Path, name: str, fallback: str) -> ctypes.CDLL | None:
    """`source` built and loaded, or None where that is not possible; `name` and `fallback` (what the
    caller does instead) go into the log message."""
    try:
        return ctypes.CDLL(str(build_library(source)))
    except subprocess.CalledProcessError as error:
        log.warning("%s did not compile, %s:\n%s", name, fallback, error.stderr)
    except OSError as error:  # no compiler, or a build that does not load
        log.info("no %s (%s): %s", name, error, fallback)
    except UnsafeCacheError as error:
        log.warning("%s not loaded: %s; %s", name, error, fallback)
    return None


def build_library(source: Path) -> Path:
    """Compile `source` unless a build for it (and the headers here), the compiler and the CPU is cached;
    return the library's path. Raises UnsafeCacheError where the cache is not this user's alone."""
    cache = Path(os.environ.get("AHA_CACHE_DIR", Path.home() / ".cache" / "aha")) / "kernels"
    cache.mkdir(mode=0o700, parents=True, exist_ok=True)
    check_private(cache)
    compiler = find_compiler()
    if compiler is None:
        raise FileNotFoundError(f"no C compiler: {os.environ.get('CC', 'cc')!r} is not on PATH (set CC)")
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True).stdout
    target = cache / f"{source.stem}-{cache_key(source, version)}.so"
    if target.exists():
        check_private(target)
        return target
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        built = Path(tmp) / target.name
        subprocess.run(
            [compiler, *CFLAGS, f"-I{INCLUDE_DIR}", str(source), "-o", str(built), "-lm"],
            capture_output=True,
            text=True,
            check=True,
        )
        built.chmod(0o755)  # not group-writable whatever the umask, so check_private accepts it
        os.replace(built, target)
    return target


def check_private(path: Path) -> None:
    """Raise UnsafeCacheError unless `path` is owned by this user and not group- or world-writable."""
    info = os.stat(path)
    kind = "cache directory" if stat.S_ISDIR(info.st_mode) else "cached library"
    if info.st_uid != os.getuid():
        raise UnsafeCacheError(
            f"{kind} {path} is owned by uid {info.st_uid}, not this user (uid {os.getuid()}); "
            "set AHA_CACHE_DIR to a directory of your own"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeCacheError(
            f"{kind} {path} is writable by {'others' if info.st_mode & stat.S_IWOTH else 'its group'} "
            f"(mode {stat.filemode(info.st_mode)}); run `chmod go-w {path}` or set AHA_CACHE_DIR"
        )


def cache_key(source: Path, compiler_version: str) -> str:
    """What a build depends on, hashed: the source, the headers here, the flags, the compiler and the CPU."""
    headers = [path.read_bytes() for path in sorted(INCLUDE_DIR.glob("*.h"))]
    parts = [source.read_bytes(), *headers, " ".join(CFLAGS).encode(), compiler_version.encode()]
    return hashlib.sha256(b"\0".join([*parts, cpu_signature().encode()])).hexdigest()[:16]


def find_compiler() -> str | None:
    """The C compiler's path: `$CC` if set, else `cc`, looked up on PATH; None where there is none."""
    return shutil.which(os.environ.get("CC", "cc"))


def cpu_signature(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """What -march=native depends on: the CPU model and its feature flags (a shared home directory may
    serve machines with different CPUs)."""
    try:
        lines = cpuinfo.read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    wanted = [line for line in lines if line.startswith(("model name", "flags"))]
    return "\n".join(dict.fromkeys(wanted)) or platform.machine()
