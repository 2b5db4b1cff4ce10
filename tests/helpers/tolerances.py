"""Float32 tolerances for comparing two computations of one model's outputs, derived from the numerics.

Two float32 forwards of the same weights that differ only in how they round (a compiled kernel vs torch
ops, a KV cache vs one full pass, another BLAS kernel for another row count or ISA) differ by rounding
alone. A dot product over n terms accumulates about sqrt(n) float32 epsilons of its result's magnitude
(random-walk rounding; a blocked or fused-multiply-add order changes which roundings, not how many), with
n the widest sum in a layer (the MLP's down projection sums over its intermediate size). The residual
stream passes 2 norms per layer and a final one, each of which rescales the error with the signal, so an
output of magnitude M differs by about (2 * layers + 1) * sqrt(n) * eps * M. A log-prob is a logit minus
a logsumexp over the vocabulary: two such errors, so twice that, and divided by the temperature like the
logits. tests/test_models_lean_activations.py uses a bound of the same form (sqrt(hidden)) for the lean modules' logits: on a
2-core AMD EPYC they differed by 1.0e-5 (1 thread) and 1.2e-5 (2 threads) against its 7.3e-5.
"""

from __future__ import annotations

import torch

EPS = torch.finfo(torch.float32).eps


def forward_atol(config, magnitude: float) -> float:
    """Absolute tolerance for an output of `magnitude` (e.g. max |logit|) of a float32 forward of `config`."""
    config = config.get_text_config()
    widest_sum = max(config.hidden_size, getattr(config, "intermediate_size", None) or 4 * config.hidden_size)
    passes = 2 * config.num_hidden_layers + 1
    return passes * widest_sum**0.5 * EPS * magnitude


def logprob_atol(config, max_abs_logit: float, temperature: float = 1.0) -> float:
    """Absolute tolerance for log-probs at `temperature` (0 means greedy: the unscaled distribution)."""
    scale = temperature if temperature else 1.0
    return 2 * forward_atol(config, max_abs_logit) / scale


BF16_UNIT_ROUNDOFF = 2.0**-8  # bf16 keeps 8 significant bits: rounding moves a value by <= 2^-8 of it


def bf16_logprob_atol(config, max_abs_logit: float, temperature: float = 1.0) -> float:
    """Absolute tolerance for log-probs of two bf16-autocast forwards of the same weights that round at
    different places (a decode step vs one teacher-forced pass: other kernels, other accumulation orders,
    bf16 outputs of different intermediate products). Each of the 2 * layers + 1 normalised passes over
    the residual stream can carry one bf16 rounding of its output, a relative u = 2^-8 of the signal, into
    the logits (products accumulate in float32, so their own sums add far less than that); a log-prob
    is a logit minus a logsumexp, two such errors, divided by the temperature like the logits."""
    config = config.get_text_config()
    passes = 2 * config.num_hidden_layers + 1
    scale = temperature if temperature else 1.0
    return 2 * passes * BF16_UNIT_ROUNDOFF * max_abs_logit / scale


def bf16_forward_atol(config, magnitude: float) -> float:
    """Absolute tolerance for an output of `magnitude` (a logit, a cached key) of two bf16-autocast
    computations of the same weights in other accumulation orders (the compiled step's bf16 form vs the
    torch step or the HF forward). Where both round the same value to bf16 and their float32 sums straddle
    a rounding boundary they land one bf16 ulp apart, 2u of the value; each of the 2 * layers + 1
    normalised passes over the residual stream can carry one such difference of its output into the
    result (products accumulate in float32, so their own sums add far less)."""
    passes = 2 * config.get_text_config().num_hidden_layers + 1
    return passes * 2 * BF16_UNIT_ROUNDOFF * magnitude
