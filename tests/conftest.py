"""Session-wide fixtures: tiny models built once per test run (no hub access), loaded like real ones."""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning. Tests share few cores with other processes; spinning
# threads then fight over them and make small-model tests 5-50x slower. Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import gzip  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM  # noqa: E402

from aha.models.loading import load_model, load_tokenizer  # noqa: E402
from aha.models.tiny import build_char_tokenizer, create_tiny_model  # noqa: E402

DATA = Path(__file__).parent / "data"  # real public data kept with the tests (its README: source, licence)


def _unpacked(tmp_path_factory, name: str) -> Path:
    """tests/data/<name>.jsonl.gz as the plain JSONL file the loaders read."""
    out = tmp_path_factory.mktemp("data") / "test.jsonl"
    out.write_bytes(gzip.decompress((DATA / f"{name}.jsonl.gz").read_bytes()))
    return out


@pytest.fixture(scope="session")
def gsm8k_test(tmp_path_factory) -> Path:
    """GSM8K's test split, 1,319 problems (tests/data/gsm8k)."""
    return _unpacked(tmp_path_factory, "gsm8k/test")


@pytest.fixture(scope="session")
def math500_test(tmp_path_factory) -> Path:
    """MATH-500, 500 problems (tests/data/math500)."""
    return _unpacked(tmp_path_factory, "math500/test")


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


def _char_tokenizer_model(model_class, config_class, out_dir, **config):
    """A seeded `model_class` sized for the character tokenizer (its vocabulary and pad/BOS/EOS ids),
    matrices redrawn at std 0.2 (varied greedy text, see conftest), saved and loaded like any HF model."""
    tokenizer = build_char_tokenizer()
    torch.manual_seed(0)
    model = model_class(
        config_class(vocab_size=len(tokenizer), pad_token_id=0, bos_token_id=1, eos_token_id=2, **config)
    )
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.2, generator=generator)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return load_model(str(out_dir)), load_tokenizer(str(out_dir))


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory):
    """Grouped-query attention (4 query heads share 2 KV heads) and q/k/v biases: the parts Llama lacks."""
    return _char_tokenizer_model(
        Qwen2ForCausalLM,
        Qwen2Config,
        tmp_path_factory.mktemp("qwen2"),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory):
    """Learned absolute positions: only correct if left-padded positions are handled."""
    return _char_tokenizer_model(
        GPT2LMHeadModel,
        GPT2Config,
        tmp_path_factory.mktemp("gpt2"),
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=128,
    )
