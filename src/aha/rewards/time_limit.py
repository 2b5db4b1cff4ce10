"""Run a function in a child process under a hard wall-clock limit that works from any thread.

Why a process and not math-verify's own timeout: that one uses `signal.alarm`, which only works in the
main thread (trainers and reward servers often score elsewhere, and TRL simply switches the timeout off
there) and cannot interrupt a long C call such as a huge integer power or a regex. A child process can
always be killed. The child also sets a soft timer (an exception raised between bytecodes, so it
survives ordinary Python-level slowness and is reused), a CPU-time limit (so it dies even if the parent
is killed while it is stuck) and an address-space limit (so `10^(10^10)` fails with MemoryError instead
of eating the machine).

Only stdlib is imported here: the child imports this module, and must start fast and stay small.
"""

from __future__ import annotations

import importlib
import os
import pickle
import queue
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

GRACE_S = 1.0  # the hard limit is the soft limit plus this: time for the soft timer to fire first
STARTUP_TIMEOUT_S = 120.0  # spawning Python and importing sympy can be slow on a loaded machine
_HEADER = struct.Struct("!Q")


class TimeLimitExceeded(Exception):
    """The call ran past its limit (the soft timer fired, or the child was killed at the hard limit)."""


class WorkerCrashed(Exception):
    """The child process died during a call (a segfault, a resource limit) or could not start."""


class WorkerCallError(Exception):
    """The function raised inside the child; the message carries the child's traceback."""


class TimeLimitedWorker:
    """One child Python process that runs calls one at a time; thread-safe; restarted after a kill or crash.

    `startup` names "module:function" callables the child runs once before its first call (imports and
    warm-up), so their cost never counts against a call's time limit.
    """

    def __init__(self, startup: Sequence[str] = (), memory_limit_mb: int | None = 4096) -> None:
        self.startup = tuple(startup)
        self.memory_limit_mb = memory_limit_mb
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._to_child = self._from_child = -1
        self._owner_pid = -1
        self.restarts = 0  # how many times a child was killed or lost and replaced

    def call(self, function: str, args: tuple = (), timeout_s: float = 2.0) -> Any:
        """Run `function(*args)` ("package.module:function") in the child and return its (picklable) result."""
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        with self._lock:
            self._ensure_started()
            try:
                _write_frame(self._to_child, (function, args, timeout_s))
                status, value = _read_frame(self._from_child, time.monotonic() + timeout_s + GRACE_S)
            except TimeoutError:
                self._kill()
                raise TimeLimitExceeded(
                    f"{function} ran past {timeout_s + GRACE_S:.1f} s; child killed"
                ) from None
            except (EOFError, BrokenPipeError) as exc:
                code = self._kill()
                raise WorkerCrashed(f"worker died during {function} (exit status {code})") from exc
        if status == "ok":
            return value
        if status == "timeout":
            raise TimeLimitExceeded(f"{function} ran past {timeout_s:.1f} s")
        raise WorkerCallError(f"{function} raised in the worker:\n{value}")

    def close(self) -> None:
        """Stop the child (it exits when its input closes) and free the pipes."""
        with self._lock:
            if self._process is not None and self._owner_pid == os.getpid():
                os.close(self._to_child)
                os.close(self._from_child)
                try:
                    self._process.wait(timeout=2.0)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait()
            self._process = None

    def _ensure_started(self) -> None:
        # A forked copy of this object (e.g. in a DataLoader worker) must not share the parent's child.
        if self._process is not None and self._owner_pid == os.getpid() and self._process.poll() is None:
            return
        if self._process is not None and self._owner_pid == os.getpid():
            self._kill()
        child_in, self._to_child = os.pipe()
        self._from_child, child_out = os.pipe()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        # Not `python -m`: the package imports this module first, and runpy warns about running it twice.
        bootstrap = f"import sys; from {__name__} import serve_from_argv; serve_from_argv(sys.argv[1:])"
        arguments = [str(child_in), str(child_out), str(self.memory_limit_mb or 0), *self.startup]
        self._process = subprocess.Popen(
            [sys.executable, "-c", bootstrap, *arguments],
            pass_fds=(child_in, child_out),
            stdin=subprocess.DEVNULL,
            env=env,
        )
        self._owner_pid = os.getpid()
        os.close(child_in)
        os.close(child_out)
        try:
            status, value = _read_frame(self._from_child, time.monotonic() + STARTUP_TIMEOUT_S)
        except (TimeoutError, EOFError) as exc:
            self._kill()
            raise WorkerCrashed(f"worker did not start (startup {self.startup})") from exc
        if status != "ready":
            self._kill()
            raise WorkerCrashed(f"worker startup failed:\n{value}")

    def _kill(self) -> int | None:
        process, self._process = self._process, None
        if process is None:
            return None
        if process.poll() is None:
            process.kill()
        code = process.wait()
        for fd in (self._to_child, self._from_child):
            try:
                os.close(fd)
            except OSError:
                pass
        self.restarts += 1
        return code


class TimeLimitedPool:
    """`size` TimeLimitedWorkers, so independent calls run in parallel, each under the same hard limit.

    Why not a plain process pool: its workers cannot be killed one at a time at a deadline (a stuck
    call would hold its worker for good); each worker here is killed and replaced on its own. A call
    waits only for a free worker, never for another call's time limit.
    """

    def __init__(self, size: int, startup: Sequence[str] = (), memory_limit_mb: int | None = 4096) -> None:
        if size < 1:
            raise ValueError(f"a pool needs at least one worker, got size={size}")
        self.size = size
        self.workers = [TimeLimitedWorker(startup, memory_limit_mb) for _ in range(size)]
        self._idle: queue.SimpleQueue[TimeLimitedWorker] = queue.SimpleQueue()
        for worker in self.workers:
            self._idle.put(worker)
        self._threads = ThreadPoolExecutor(max_workers=size, thread_name_prefix="time-limited")

    def map(self, function: str, args_list: Sequence[tuple], timeout_s: float = 2.0) -> list[Any]:
        """`function(*args)` for each args, in order: the result, or the exception the call raised
        (TimeLimitExceeded, WorkerCrashed, WorkerCallError) in its place, so one bad call spoils none
        of the others."""
        return list(self._threads.map(lambda args: self._call(function, args, timeout_s), args_list))

    @property
    def restarts(self) -> int:
        return sum(worker.restarts for worker in self.workers)

    def close(self) -> None:
        self._threads.shutdown(wait=True)
        for worker in self.workers:
            worker.close()

    def _call(self, function: str, args: tuple, timeout_s: float) -> Any:
        worker = self._idle.get()
        try:
            return worker.call(function, args, timeout_s)
        except (TimeLimitExceeded, WorkerCrashed, WorkerCallError) as exc:
            return exc
        finally:
            self._idle.put(worker)


def _write_frame(fd: int, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


def _read_exact(fd: int, size: int, deadline: float | None) -> bytes:
    chunks, remaining = [], size
    while remaining:
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                raise TimeoutError
        chunk = os.read(fd, remaining)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _read_frame(fd: int, deadline: float | None) -> Any:
    (size,) = _HEADER.unpack(_read_exact(fd, _HEADER.size, deadline))
    return pickle.loads(_read_exact(fd, size, deadline))


# ----------------------------------------------------------------------------------------- child side


class _SoftTimeout(BaseException):
    """A BaseException, so library code's `except Exception` cannot swallow it."""


def _raise_soft_timeout(signum: int, frame: Any) -> None:
    raise _SoftTimeout


def _resolve(path: str, cache: dict[str, Callable]) -> Callable:
    if path not in cache:
        module, _, name = path.partition(":")
        cache[path] = getattr(importlib.import_module(module), name)
    return cache[path]


def _serve(read_fd: int, write_fd: int, memory_limit_mb: int, startup: Sequence[str]) -> None:
    import resource

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business; we exit on EOF
    signal.signal(signal.SIGALRM, _raise_soft_timeout)
    if memory_limit_mb > 0:
        limit = memory_limit_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    functions: dict[str, Callable] = {}
    try:
        for path in startup:
            _resolve(path, functions)()
    except Exception:
        _write_frame(write_fd, ("error", traceback.format_exc()))
        return
    _write_frame(write_fd, ("ready", None))
    cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    while True:
        try:
            function, args, timeout_s = _read_frame(read_fd, None)
        except EOFError:
            return
        # Orphan guard: SIGXCPU kills us if a C call outlives the parent's own kill.
        used = resource.getrusage(resource.RUSAGE_SELF)
        cpu_soft = int(used.ru_utime + used.ru_stime + timeout_s + GRACE_S) + 2
        if cpu_hard == resource.RLIM_INFINITY or cpu_soft < cpu_hard:
            resource.setrlimit(resource.RLIMIT_CPU, (cpu_soft, cpu_hard))
        try:
            signal.setitimer(signal.ITIMER_REAL, timeout_s)
            try:
                reply = ("ok", _resolve(function, functions)(*args))
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except _SoftTimeout:
            reply = ("timeout", None)
        except Exception:
            reply = ("error", traceback.format_exc())
        _write_frame(write_fd, reply)


def serve_from_argv(argv: Sequence[str]) -> None:
    """The child's entry point: read fd, write fd, memory limit in MiB (0 = none), startup callables."""
    _serve(int(argv[0]), int(argv[1]), int(argv[2]), argv[3:])
