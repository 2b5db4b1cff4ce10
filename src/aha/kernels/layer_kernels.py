"""SwiGLU, RMSNorm and the rotary embedding, forward and backward, as one compiled pass each
(`layer_kernels.c`), for float32 CPU tensors.

Used by the lean modules (aha.models.lean_activations), which fall back to torch ops where
`load_layer_kernels` returns None: no C compiler, a failed build, or `AHA_TRAIN_KERNELS=0`.
`bench/lean_activations.py` times the lean model's policy forward+backward with these and with torch's ops.
"""

from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path

import torch

from aha.kernels.build import load_library

SOURCE = Path(__file__).with_name("layer_kernels.c")


@functools.cache
def load_layer_kernels() -> ctypes.CDLL | None:
    if os.environ.get("AHA_TRAIN_KERNELS", "1") == "0":
        return None
    library = load_library(SOURCE, "layer kernels", "training uses torch ops")
    if library is None:
        return None
    library.swiglu_forward.restype = library.swiglu_backward.restype = None
    library.swiglu_forward.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64]
    library.swiglu_backward.argtypes = [ctypes.c_void_p] * 6 + [ctypes.c_int64]
    library.rms_norm_forward.restype = library.rms_norm_backward.restype = None
    library.rms_norm_forward.argtypes = [ctypes.c_void_p] * 4 + [
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_float,
    ]
    library.rms_norm_backward.argtypes = [ctypes.c_void_p] * 6 + [ctypes.c_int64] * 3
    library.rotary.restype = None
    int64_p = ctypes.POINTER(ctypes.c_int64)
    library.rotary.argtypes = [
        ctypes.c_void_p,
        int64_p,
        ctypes.c_void_p,
        ctypes.c_void_p,
        int64_p,
        ctypes.c_void_p,
        int64_p,
        int64_p,
        ctypes.c_int,
    ]
    return library


def kernel_applies(*tensors: torch.Tensor) -> bool:
    """Whether the compiled pass serves these tensors (float32, on the CPU, built here)."""
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors) and (
        load_layer_kernels() is not None
    )


def swiglu_forward(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    gate, up = gate.contiguous(), up.contiguous()
    hidden = torch.empty_like(gate)
    load_layer_kernels().swiglu_forward(gate.data_ptr(), up.data_ptr(), hidden.data_ptr(), hidden.numel())
    return hidden


def swiglu_backward(
    grad_hidden: torch.Tensor, gate: torch.Tensor, up: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(d/d gate, d/d up, silu(gate) * up) for the gradient `grad_hidden` of silu(gate) * up."""
    grad_hidden, gate, up = grad_hidden.contiguous(), gate.contiguous(), up.contiguous()
    grad_gate, grad_up, hidden = torch.empty_like(gate), torch.empty_like(gate), torch.empty_like(gate)
    load_layer_kernels().swiglu_backward(
        grad_hidden.data_ptr(),
        gate.data_ptr(),
        up.data_ptr(),
        grad_gate.data_ptr(),
        grad_up.data_ptr(),
        hidden.data_ptr(),
        hidden.numel(),
    )
    return grad_gate, grad_up, hidden


def rms_norm_forward(x: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight * x / rms(x) over the last dimension, the per-row scale 1 / rms(x) [rows])."""
    x = x.contiguous()
    features = x.shape[-1]
    rows = x.numel() // features
    out, scale = torch.empty_like(x), torch.empty(rows, dtype=torch.float32)
    load_layer_kernels().rms_norm_forward(
        x.data_ptr(), weight.contiguous().data_ptr(), out.data_ptr(), scale.data_ptr(), rows, features, eps
    )
    return out, scale


def rms_norm_backward(
    grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(d/dx, d/d weight) of `rms_norm_forward` given its output's gradient and saved scale."""
    grad_out, x, weight = grad_out.contiguous(), x.contiguous(), weight.contiguous()
    features = x.shape[-1]
    rows = x.numel() // features
    threads = torch.get_num_threads()
    grad_x, partials = torch.empty_like(x), torch.empty(threads, features, dtype=torch.float32)
    load_layer_kernels().rms_norm_backward(
        grad_out.data_ptr(),
        x.data_ptr(),
        weight.data_ptr(),
        scale.data_ptr(),
        grad_x.data_ptr(),
        partials.data_ptr(),
        threads,
        rows,
        features,
    )
    return grad_x, partials.sum(0)


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, adjoint: bool = False) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin for x [B, H, T, D] (any strides, last dimension contiguous) and
    cos, sin [B or 1, T, D]; `adjoint`: the transposed map (the backward of the same angles). The result
    has x's strides where x is dense, as torch's elementwise ops give."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    cos, sin = cos.contiguous(), sin.contiguous()
    out = torch.empty_like(x)
    batch_stride = cos.stride(0) if cos.shape[0] > 1 else 0
    load_layer_kernels().rotary(
        x.data_ptr(),
        _int64s(x.stride()[:3]),
        cos.data_ptr(),
        sin.data_ptr(),
        _int64s((batch_stride, cos.stride(1))),
        out.data_ptr(),
        _int64s(out.stride()[:3]),
        _int64s(x.shape),
        int(adjoint),
    )
    return out


def _int64s(values) -> ctypes.Array:
    return (ctypes.c_int64 * len(values))(*values)
