"""What the machine can do and what a process used: fp32 matmul peak, peak RSS, a description of the box.

The matmul peak is the denominator of "fraction of the hardware limit": a GRPO step's model FLOPs divided
by (step seconds x the FLOP/s that a large, well-shaped fp32 matmul reaches here with the same threads).
It is a measured, practical peak (what torch's BLAS attains), not the vendor's theoretical number.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class MatmulPeak:
    gflops: float  # best over sizes and repeats
    size: int  # the n of the n x n @ n x n matmul that reached it
    threads: int
    per_size: dict[str, float]  # size -> best GFLOP/s over the repeats

    def to_dict(self) -> dict:
        return asdict(self)


def measure_matmul_peak(threads: int, sizes: tuple[int, ...] = (1024, 2048), repeats: int = 15) -> MatmulPeak:
    """Best GFLOP/s of an n x n fp32 matmul (2 n^3 FLOPs) over sizes and repeats. A peak is a maximum: a
    median lets one noisy neighbour on a shared machine lower the denominator, and the model's own
    matmuls then appear to run above the "peak" (measured here: 74 GFLOP/s median vs 160 best)."""
    import torch

    torch.set_num_threads(threads)
    per_size: dict[str, float] = {}
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        out = torch.empty(n, n)
        for _ in range(2):  # warm-up: thread pool start, page faults on `out`
            torch.mm(a, b, out=out)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.mm(a, b, out=out)
            times.append(time.perf_counter() - t0)
        per_size[str(n)] = 2 * n**3 / min(times) / 1e9
    best = max(per_size, key=per_size.get)
    return MatmulPeak(gflops=per_size[best], size=int(best), threads=threads, per_size=per_size)


def measure_decode_matmul_rate(
    weight_shapes: list[tuple[int, int]], rows: int, threads: int, repeats: int = 15, bf16: bool = False
) -> float:
    """Best GFLOP/s of one decoding step's matmuls: `rows` token rows times every weight (out, in) in
    `weight_shapes`, in the fastest form aha's decode steps use: the torch step's (`Projection`) or the
    compiled kernel's (MKL's packed sgemm, where the kernel loads). A product of a few rows with a large
    weight runs far below the square-matmul peak (the weights are streamed for little arithmetic), so
    this, not the peak, bounds how fast any sampler can decode. `bf16`: the forms of bf16 rollouts
    instead (torch's bf16 matmul, and the kernel's MKL gemm_bf16bf16f32 where it loads)."""
    import torch

    from aha.rollout.llama_decode import Projection

    torch.set_num_threads(threads)
    weights = [torch.randn(out_dim, in_dim) for out_dim, in_dim in weight_shapes]
    inputs = {in_dim: torch.randn(rows, in_dim) for _, in_dim in weight_shapes}
    if bf16:
        weights = [w.bfloat16() for w in weights]
        inputs = {in_dim: x.bfloat16() for in_dim, x in inputs.items()}
    projections = [Projection(w) for w in weights]
    steps = [lambda: [p(inputs[p.weight.shape[1]]) for p in projections]]
    kernel_step = (_bf16_gemm_step if bf16 else _packed_sgemm_step)(weights, inputs, rows)
    if kernel_step is not None:
        steps.append(kernel_step)
    flops = sum(2 * rows * out_dim * in_dim for out_dim, in_dim in weight_shapes)
    best = float("inf")
    for step in steps:
        for i in range(repeats + 2):  # the first two are warm-up
            t0 = time.perf_counter()
            step()
            if i >= 2:
                best = min(best, time.perf_counter() - t0)
    return flops / best / 1e9


def _packed_sgemm_step(weights: list, inputs: dict, rows: int):
    """One decoding step's matmuls as the compiled kernel runs them (weights packed for `rows` rows,
    W @ x.T through MKL's sgemm_compute), or None where the kernel does not load here."""
    import ctypes

    import torch

    from aha.rollout.decode_kernel import KernelModel, load_decode_kernel

    library = load_decode_kernel()
    if library is None:
        return None
    model = ctypes.byref(KernelModel(**library.mkl))
    packed = []
    for w in weights:
        out_dim, in_dim = w.shape
        buffer = torch.empty(library.packed_floats(model, rows, out_dim, in_dim))
        library.pack_weight(model, rows, w.data_ptr(), out_dim, in_dim, buffer.data_ptr())
        packed.append(buffer)
    int_p, float_p = ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_float)
    compute = ctypes.CFUNCTYPE(
        None, ctypes.c_char_p, ctypes.c_char_p, int_p, int_p, int_p,
        ctypes.c_void_p, int_p, ctypes.c_void_p, int_p, float_p, ctypes.c_void_p, int_p,
    )(library.mkl["compute"])  # fmt: skip
    out = torch.empty(rows * max(w.shape[0] for w in weights))
    zero = ctypes.c_float(0.0)
    calls = []
    for w, buffer in zip(weights, packed, strict=True):
        m, n, k = ctypes.c_int(rows), ctypes.c_int(w.shape[0]), ctypes.c_int(w.shape[1])
        x = inputs[w.shape[1]]
        args = (b"T", b"P", m, n, k, x.data_ptr(), k, buffer.data_ptr(), k, zero, out.data_ptr(), m)
        calls.append(args)

    def step() -> None:
        for ta, tb, m, n, k, x, lda, b, ldb, beta, c, ldc in calls:
            compute(ta, tb, ctypes.byref(m), ctypes.byref(n), ctypes.byref(k), x, ctypes.byref(lda), b,
                    ctypes.byref(ldb), ctypes.byref(beta), c, ctypes.byref(ldc))  # fmt: skip

    step.keep = (packed, out)  # the buffers live as long as the step
    return step


def _bf16_gemm_step(weights: list, inputs: dict, rows: int):
    """One decoding step's matmuls as the compiled kernel's bf16 form runs them (bf16 x and weights,
    float32 out, through MKL's gemm_bf16bf16f32), or None where the kernel or that routine is missing."""
    import ctypes

    import torch

    from aha.rollout.decode_kernel import load_decode_kernel

    library = load_decode_kernel()
    if library is None or library.mkl["gemm_bf16"] is None:
        return None
    int_p, float_p = ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_float)
    gemm = ctypes.CFUNCTYPE(
        None, ctypes.c_char_p, ctypes.c_char_p, int_p, int_p, int_p,
        float_p, ctypes.c_void_p, int_p, ctypes.c_void_p, int_p, float_p, ctypes.c_void_p, int_p,
    )(library.mkl["gemm_bf16"])  # fmt: skip
    out = torch.empty(rows * max(w.shape[0] for w in weights))
    one, zero = ctypes.c_float(1.0), ctypes.c_float(0.0)
    calls = []
    for w in weights:
        m, n, k = ctypes.c_int(rows), ctypes.c_int(w.shape[0]), ctypes.c_int(w.shape[1])
        x = inputs[w.shape[1]]
        calls.append((m, n, k, x.data_ptr(), w.data_ptr()))

    def step() -> None:
        for m, n, k, x, w in calls:
            gemm(b"T", b"N", ctypes.byref(m), ctypes.byref(n), ctypes.byref(k), ctypes.byref(one), x,
                 ctypes.byref(k), w, ctypes.byref(k), ctypes.byref(zero), out.data_ptr(), ctypes.byref(m))  # fmt: skip

    step.keep = out
    return step


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports ru_maxrss in KiB, macOS in bytes)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if platform.system() == "Darwin" else rss * 1024


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def busy_cpu_seconds() -> float | None:
    """CPU seconds all processes have kept the machine busy since boot, summed over CPUs (Linux /proc/stat:
    user + nice + system + irq + softirq + steal); None where /proc/stat does not exist."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU seconds used by this process and its finished children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class OtherLoad:
    """Cores kept busy by *other* processes while a block ran: the interference a timing suffered.

    with OtherLoad() as other: run_child(); then other.cores (None where /proc/stat is unavailable).
    """

    def __enter__(self) -> OtherLoad:
        self._busy, self._own, self._t = busy_cpu_seconds(), own_cpu_seconds(), time.perf_counter()
        self.cores: float | None = None
        return self

    def __exit__(self, *exc) -> None:
        busy = busy_cpu_seconds()
        if busy is not None and self._busy is not None:
            others = (busy - self._busy) - (own_cpu_seconds() - self._own)
            self.cores = max(0.0, others) / max(time.perf_counter() - self._t, 1e-9)


def wait_until_quiet(max_other_cores: float, timeout_s: float, sample_s: float = 3.0) -> float | None:
    """Wait until other processes use at most `max_other_cores` over `sample_s`, or `timeout_s` passed.
    Returns the last reading (None where it cannot be measured: then it does not wait)."""
    deadline = time.monotonic() + timeout_s
    while True:
        with OtherLoad() as other:
            time.sleep(sample_s)
        if other.cores is None or other.cores <= max_other_cores or time.monotonic() >= deadline:
            return other.cores


def machine_description() -> dict:
    """CPU model, core count, memory and library versions: enough to tell two benchmark machines apart."""
    import torch
    import transformers

    info = {
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "memory_gib": round(_total_memory_bytes() / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "allocator": memory_allocator(),
    }
    try:  # the version from the package metadata: importing trl here would cost seconds
        info["trl"] = importlib.metadata.version("trl")
    except importlib.metadata.PackageNotFoundError:
        info["trl"] = None
    return info


def memory_allocator() -> str:
    """The malloc the benchmark's processes use (they inherit the environment), with its tuning: peak RSS
    on the CPU depends on it as much as on the tool (bench/README: glibc vs jemalloc)."""
    preloaded = [Path(p).name for p in os.environ.get("LD_PRELOAD", "").replace(":", " ").split()]
    allocator = next((p for p in preloaded if "malloc" in p), None)
    if allocator is None:
        libc, version = platform.libc_ver()
        allocator = f"{libc} {version} malloc" if libc else "the C library's malloc"
    tuning = [f"{k}={os.environ[k]}" for k in ("GLIBC_TUNABLES", "MALLOC_CONF") if os.environ.get(k)]
    return " ".join([allocator, *tuning])


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _total_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0
