"""Whether a compiled path can run on this machine, and why not: kernel tests skip with that reason where
it cannot, and where it can they assert that the compiled path ran (not a silent torch fallback)."""

from __future__ import annotations

import collections
import os

import pytest

from aha.kernels import build, layer_kernels
from aha.rollout import decode_kernel


def _switched_off_or_no_compiler(switch: str) -> str | None:
    if os.environ.get(switch, "1") == "0":
        return f"{switch}=0 turns the compiled path off"
    if build.find_compiler() is None:
        return f"no C compiler: {os.environ.get('CC', 'cc')!r} is not on PATH (set CC to one)"
    return None


def layer_kernels_missing() -> str | None:
    """Why the compiled SwiGLU/RMSNorm/rotary passes cannot be built here, or None where they must be."""
    return _switched_off_or_no_compiler("AHA_TRAIN_KERNELS")


def decode_kernel_missing() -> str | None:
    """Why the compiled decoding step cannot be built here, or None where it must be (it calls MKL's
    sgemm, which only x86-64 torch builds with MKL export)."""
    reason = _switched_off_or_no_compiler("AHA_DECODE_KERNEL")
    if reason is None and decode_kernel._mkl_routines() is None:
        reason = "no MKL sgemm in this torch build (the decode kernel needs an x86-64 torch built with MKL)"
    return reason


def require_layer_kernels():
    """The built layer-kernel library; skips (naming what is missing) where it cannot be built here."""
    reason = layer_kernels_missing()
    if reason is not None:
        pytest.skip(f"the compiled layer kernels cannot run here: {reason}")
    library = layer_kernels.load_layer_kernels()
    assert library is not None, "a C compiler is here but the layer kernels did not build (see the log)"
    return library


def require_decode_kernel():
    """The built decode-kernel library; skips (naming what is missing) where it cannot be built here."""
    reason = decode_kernel_missing()
    if reason is not None:
        pytest.skip(f"the compiled decode kernel cannot run here: {reason}")
    library = decode_kernel.load_decode_kernel()
    assert library is not None, "a C compiler and MKL are here but the decode kernel did not build"
    return library


def require_bf16_decode_kernel():
    """The decode-kernel library where its bf16 form can run (MKL's gemm_bf16bf16f32 is in this torch);
    skips naming what is missing."""
    library = require_decode_kernel()
    if library.mkl["gemm_bf16"] is None:
        pytest.skip("this torch's MKL has no gemm_bf16bf16f32: bf16 rollouts use the torch step")
    return library


COMPILED_PASSES = ("swiglu_forward", "swiglu_backward", "rms_norm_forward", "rms_norm_backward", "rotary")


def count_compiled_passes(monkeypatch) -> collections.Counter:
    """Counts, by name, the calls the lean modules make to the compiled passes from now on."""
    calls: collections.Counter = collections.Counter()
    for name in COMPILED_PASSES:
        original = getattr(layer_kernels, name)

        def counted(*args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(layer_kernels, name, counted)
    return calls
