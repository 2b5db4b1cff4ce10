"""The compiled CPU forward of the sampler (`llama_decode_kernel.c`: decoding steps and the prompts'
prefill), built on first use (`aha.kernels.build`: under a second, 0.65 s here) and called through ctypes.
It runs in fp32, or under CPU bf16 autocast (rollout.dtype=bfloat16) with bf16 matmuls and autocast's
roundings where this torch's MKL has gemm_bf16bf16f32.

Where no compiler, no MKL sgemm or no build works, `load_decode_kernel` returns None and the sampler keeps
the torch step; `AHA_DECODE_KERNEL=0` turns the kernel off.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
from pathlib import Path

import torch

from aha.kernels.build import load_library

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("llama_decode_kernel.c")


class KernelWeight(ctypes.Structure):
    _fields_ = [("weight", ctypes.c_void_p), ("packed", ctypes.c_void_p)]


PROJECTIONS = ("qkv", "out", "gate_up", "down")


class KernelLayer(ctypes.Structure):
    _fields_ = [
        ("input_norm", ctypes.c_void_p),
        ("qkv", KernelWeight),
        ("qkv_bias", ctypes.c_void_p),
        ("out", KernelWeight),
        ("post_norm", ctypes.c_void_p),
        ("gate_up", KernelWeight),
        ("down", KernelWeight),
    ]


class KernelModel(ctypes.Structure):
    _fields_ = [
        *[
            (name, ctypes.c_int64)
            for name in (
                "num_layers",
                "hidden",
                "heads",
                "kv_heads",
                "head_dim",
                "intermediate",
                "vocab",
                "packed_rows",
                "low_precision",
            )
        ],
        ("eps", ctypes.c_float),
        ("scale", ctypes.c_float),
        *[(name, ctypes.c_void_p) for name in ("embed", "final_norm", "lm_head", "cos", "sin")],
        ("layers", ctypes.POINTER(KernelLayer)),
        *[(name, ctypes.c_void_p) for name in ("sgemm", "pack_size", "pack", "compute", "gemm_bf16")],
    ]


@functools.cache
def load_decode_kernel() -> ctypes.CDLL | None:
    """The built kernel library with MKL's routines in `library.mkl` (its "gemm_bf16" None where MKL has
    none), or None where unavailable."""
    if os.environ.get("AHA_DECODE_KERNEL", "1") == "0":
        return None
    mkl = _mkl_routines()
    if mkl is None:
        log.info("no MKL sgemm in this torch build: decoding uses the torch step")
        return None
    library = load_library(SOURCE, "decode kernel", "decoding uses the torch step")
    if library is None:
        return None
    library.workspace_floats.restype = ctypes.c_int64
    library.workspace_floats.argtypes = [ctypes.POINTER(KernelModel), ctypes.c_int64]
    library.forward_tokens.restype = None
    library.forward_tokens.argtypes = [
        ctypes.POINTER(KernelModel),
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_void_p,
        ctypes.c_void_p,
    ]
    library.packed_floats.restype = ctypes.c_int64
    library.packed_floats.argtypes = [ctypes.POINTER(KernelModel), *[ctypes.c_int64] * 3]
    library.pack_weight.restype = None
    library.pack_weight.argtypes = [
        ctypes.POINTER(KernelModel),
        ctypes.c_int64,
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_void_p,
    ]
    library.mkl = mkl
    return library


MKL_ROUTINES = {
    "sgemm": "sgemm_",
    "pack_size": "sgemm_pack_get_size",
    "pack": "sgemm_pack",
    "compute": "sgemm_compute",
}
OPTIONAL_MKL_ROUTINES = {"gemm_bf16": "gemm_bf16bf16f32_"}  # bf16 x bf16 -> fp32 (MKL 2019 and later)


def _mkl_routines() -> dict[str, int] | None:
    """Addresses of MKL's Fortran sgemm and packed-sgemm routines inside libtorch_cpu (MKL builds export
    them), else None; the optional ones are None where missing."""
    path = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    if "mkl" not in torch.__config__.show().lower() or not path.exists():
        return None
    try:
        library = ctypes.CDLL(str(path))
        routines = {
            name: ctypes.cast(getattr(library, symbol), ctypes.c_void_p).value
            for name, symbol in MKL_ROUTINES.items()
        }
    except (OSError, AttributeError):
        return None
    for name, symbol in OPTIONAL_MKL_ROUTINES.items():
        found = getattr(library, symbol, None)
        routines[name] = ctypes.cast(found, ctypes.c_void_p).value if found is not None else None
    return routines


class KernelDecodeStep:
    """`LlamaDecodeStep`'s math in one compiled call per token (same fused weights, same interface), and
    a prefill (`forward_tokens`). Built per `generate` call, so it always reads the current weights.
    A torch step built under bf16 autocast (bf16 fused weights) gives the kernel's bf16 form."""

    def __init__(self, torch_step, library: ctypes.CDLL):
        self.library = library
        self.low_precision = torch_step.matmul_dtype == torch.bfloat16
        if self.low_precision and library.mkl["gemm_bf16"] is None:
            raise ValueError("the bf16 decode kernel needs MKL's gemm_bf16bf16f32, which this torch lacks")
        if torch_step.matmul_dtype not in (None, torch.bfloat16):
            raise ValueError(f"the decode kernel computes in fp32 or bf16, not {torch_step.matmul_dtype}")
        self._torch_step = torch_step  # owns the fused weight tensors the struct points into
        layers = torch_step.layers
        self._layers = (KernelLayer * len(layers))(
            *[
                KernelLayer(
                    input_norm=w.input_norm.data_ptr(),
                    qkv=KernelWeight(w.qkv.weight.data_ptr()),
                    qkv_bias=w.qkv_bias.data_ptr() if w.qkv_bias is not None else None,
                    out=KernelWeight(w.out.weight.data_ptr()),
                    post_norm=w.post_norm.data_ptr(),
                    gate_up=KernelWeight(w.gate_up.weight.data_ptr()),
                    down=KernelWeight(w.down.weight.data_ptr()),
                )
                for w in layers
            ]
        )
        self.vocab = torch_step.lm_head.weight.shape[0]
        self.kv_heads, self.head_dim = torch_step.kv_heads, torch_step.head_dim
        self.model = KernelModel(
            num_layers=len(layers),
            hidden=torch_step.embed.shape[1],
            heads=torch_step.heads,
            kv_heads=torch_step.kv_heads,
            head_dim=torch_step.head_dim,
            intermediate=torch_step.intermediate,
            vocab=self.vocab,
            eps=torch_step.eps,
            scale=torch_step.scaling,
            embed=torch_step.embed.data_ptr(),
            final_norm=torch_step.final_norm.data_ptr(),
            lm_head=torch_step.lm_head.weight.data_ptr(),
            cos=torch_step.cos.data_ptr(),
            sin=torch_step.sin.data_ptr(),
            layers=self._layers,
            low_precision=int(self.low_precision),
            **library.mkl,
        )
        self._packed: list[torch.Tensor] = []
        self._workspaces: dict[int, torch.Tensor] = {}

    def __call__(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        key_buffers: list[torch.Tensor],
        value_buffers: list[torch.Tensor],
        length: int,
        attention: torch.Tensor | None,
    ) -> torch.Tensor:
        """As `LlamaDecodeStep.__call__`: one new token per row."""
        if not self._packed and tokens.shape[0] > 1 and not self.low_precision:  # MKL packs fp32 only
            self._pack(tokens.shape[0])
        return self.forward_tokens(
            tokens[:, None], positions[:, None], key_buffers, value_buffers, length, attention
        )

    def forward_tokens(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor,
        key_buffers: list[torch.Tensor],
        value_buffers: list[torch.Tensor],
        length: int,
        attention: torch.Tensor | None,
    ) -> torch.Tensor:
        """Logits [B, V] after each row's last new token, for new tokens `ids` at `positions` (both
        [B, T] int64). Each layer's cache buffers [B, kv_heads, capacity, head_dim] (float32,
        contiguous; bf16-rounded values in the bf16 form) hold `length` positions; the new keys/values
        are written after them, and token j attends to the cache indices [0, length + j] where
        `attention` [B, >= length + T] (int64) is 1 (None: all of them). T = 1 is a decoding step, T > 1
        a prefill."""
        rows, count = ids.shape
        tokens = rows * count
        workspace = self._workspaces.get(tokens)
        if workspace is None:
            workspace = torch.empty(self.library.workspace_floats(ctypes.byref(self.model), tokens))
            self._workspaces[tokens] = workspace
        ids, positions = ids.contiguous(), positions.contiguous()
        if attention is not None:
            attention = attention.contiguous()
        pointers = ctypes.c_void_p * len(key_buffers)
        logits = torch.empty(rows, self.vocab)
        self.library.forward_tokens(
            ctypes.byref(self.model),
            rows,
            count,
            ids.data_ptr(),
            positions.data_ptr(),
            pointers(*[k.data_ptr() for k in key_buffers]),
            pointers(*[v.data_ptr() for v in value_buffers]),
            key_buffers[0].shape[2],
            length,
            attention.data_ptr() if attention is not None else None,
            attention.shape[1] if attention is not None else 0,
            workspace.data_ptr(),
            logits.data_ptr(),
        )
        return logits

    def _pack(self, rows: int) -> None:
        """Pack every projection's weight for products with `rows` rows (the batch's size until it is
        compacted; other sizes use the plain weights)."""
        model = ctypes.byref(self.model)
        for layer, fused in zip(self._layers, self._torch_step.layers, strict=True):
            for name in PROJECTIONS:
                weight = getattr(fused, name).weight
                features, in_features = weight.shape
                packed = torch.empty(self.library.packed_floats(model, rows, features, in_features))
                self.library.pack_weight(
                    model, rows, weight.data_ptr(), features, in_features, packed.data_ptr()
                )
                getattr(layer, name).packed = packed.data_ptr()
                self._packed.append(packed)
        self.model.packed_rows = rows
