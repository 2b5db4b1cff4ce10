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
