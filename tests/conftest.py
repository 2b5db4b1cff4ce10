"""Session-wide fixtures: tiny models built once per test run (no hub access), loaded like real ones."""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning. Tests share few cores with other processes; spinning
# threads then fight over them and make small-model tests 5-50x slower. Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from aha.models.loading import load_model, load_tokenizer  # noqa: E402
from aha.models.tiny import create_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """The default built-in tiny Llama + char tokenizer, as saved by `create_tiny_model`."""
    return create_tiny_model(tmp_path_factory.mktemp("tiny_model"), seed=0)


@pytest.fixture(scope="session")
def tiny_varied_model_dir(tiny_model_dir: Path, tmp_path_factory) -> Path:
    """The tiny model with its matrices redrawn at std 0.2 (seeded): at the default init (std 0.02) greedy
    decoding repeats one character forever, which makes comparisons between decoders nearly vacuous;
    these weights give varied, prompt-dependent completions."""
    out_dir = tmp_path_factory.mktemp("tiny_varied_model")
    model = load_model(str(tiny_model_dir))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.2, generator=generator)
    model.save_pretrained(out_dir)
    load_tokenizer(str(tiny_model_dir)).save_pretrained(out_dir)
    return out_dir
