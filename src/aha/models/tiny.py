"""The built-in tiny model: a character-level tokenizer and a small Llama, saved like any HF model.

Everything is created locally (no hub access) and then loaded back through the same
`from_pretrained` path a user's real model takes, so tests exercise the real code path.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from aha.config import option

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
# Printable ASCII covers arithmetic, countdown, GSM8K-style text and think/answer tags.
CHARACTERS = [c for c in string.printable if c not in "\x0b\x0c\r"]


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """A real HF fast tokenizer with one token per printable ASCII character."""
    vocab = {tok: i for i, tok in enumerate([PAD, BOS, EOS, *CHARACTERS])}
    unk = " "  # unseen characters (e.g. unicode) fall back to a space rather than failing
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=unk,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )


@dataclass(frozen=True)
class TinyModelSpec:
    """Size of the built-in Llama. The default (~0.4M parameters) learns the demo tasks in seconds."""

    hidden_size: int = 96
    num_layers: int = 3
    num_heads: int = 4
    intermediate_size: int = 256
    max_position_embeddings: int = 256
    init_std: float = 0.02  # HF's default; larger (e.g. 0.08) leaves the early loss plateau sooner


def create_tiny_model(out_dir: str | Path, spec: TinyModelSpec = TinyModelSpec(), seed: int = 0) -> Path:
    """Create a randomly initialised tiny Llama + char tokenizer and save both to `out_dir`."""
    out_dir = Path(out_dir)
    tokenizer = build_char_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=spec.max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
        initializer_range=spec.init_std,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


@dataclass
class TinyModelCommand:
    """`aha tiny-model`: write the built-in tiny model to a directory any HF tool can load."""

    output_dir: str = option("runs/tiny-model", help="Directory to write the model and tokenizer to.")
    hidden_size: int = option(TinyModelSpec.hidden_size, help="Hidden size of the Llama.")
    num_layers: int = option(TinyModelSpec.num_layers, help="Number of transformer layers.")
    num_heads: int = option(TinyModelSpec.num_heads, help="Attention heads.")
    intermediate_size: int = option(TinyModelSpec.intermediate_size, help="MLP width.")
    seed: int = option(0, help="Seed of the random initialisation.")


def run_tiny_model(cfg: TinyModelCommand) -> Path:
    spec = TinyModelSpec(cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.intermediate_size)
    path = create_tiny_model(cfg.output_dir, spec, seed=cfg.seed)
    print(f"wrote a tiny Llama and its character tokenizer to {path}")
    return path
