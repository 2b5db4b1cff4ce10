"""silu(gate) * up and its backward as one compiled pass each (`swiglu.c`), for float32 CPU tensors.

Used by the lean SwiGLU MLP (aha.models.lean_activations), which falls back to torch ops where this
returns None: no C compiler, a failed build, or `AHA_TRAIN_KERNELS=0`. Measured on the 2-core Xeon,
policy forward+backward with the kernel / with torch's ops, interleaved: 0.95 (25M bench model), 0.97
(3M), 0.96 (the demo model).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import subprocess
from pathlib import Path

import torch

from aha.kernels.build import build_library

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("swiglu.c")


@functools.cache
def load_swiglu_kernel() -> ctypes.CDLL | None:
    if os.environ.get("AHA_TRAIN_KERNELS", "1") == "0":
        return None
    try:
        library = ctypes.CDLL(str(build_library(SOURCE)))
    except subprocess.CalledProcessError as error:
        log.warning("the SwiGLU kernel did not compile, training uses torch ops:\n%s", error.stderr)
        return None
    except OSError as error:
        log.info("no SwiGLU kernel (%s): training uses torch ops", error)
        return None
    library.swiglu_forward.restype = library.swiglu_backward.restype = None
    library.swiglu_forward.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64]
    library.swiglu_backward.argtypes = [ctypes.c_void_p] * 6 + [ctypes.c_int64]
    return library


def kernel_applies(*tensors: torch.Tensor) -> bool:
    """Whether the compiled pass serves these tensors (float32, on the CPU, built here)."""
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors) and (
        load_swiglu_kernel() is not None
    )


def swiglu_forward(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    gate, up = gate.contiguous(), up.contiguous()
    hidden = torch.empty_like(gate)
    load_swiglu_kernel().swiglu_forward(gate.data_ptr(), up.data_ptr(), hidden.data_ptr(), hidden.numel())
    return hidden


def swiglu_backward(
    grad_hidden: torch.Tensor, gate: torch.Tensor, up: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(d/d gate, d/d up, silu(gate) * up) for the gradient `grad_hidden` of silu(gate) * up."""
    grad_hidden, gate, up = grad_hidden.contiguous(), gate.contiguous(), up.contiguous()
    grad_gate, grad_up, hidden = torch.empty_like(gate), torch.empty_like(gate), torch.empty_like(gate)
    load_swiglu_kernel().swiglu_backward(
        grad_hidden.data_ptr(),
        gate.data_ptr(),
        up.data_ptr(),
        grad_gate.data_ptr(),
        grad_up.data_ptr(),
        hidden.data_ptr(),
        hidden.numel(),
    )
    return grad_gate, grad_up, hidden
