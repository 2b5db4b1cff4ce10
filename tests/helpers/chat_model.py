"""A tiny chat model built here: the character tokenizer plus ChatML special tokens and a ChatML-style
chat template, and a tiny Llama sized for it. No hub access; saved and loaded like any HF model.

The tokenizer adds BOS itself (like Llama's) and the template also writes `{{ bos_token }}` (like
Llama 3's), so tokenising rendered text with the tokenizer's defaults would give two BOS tokens: the
case the trainers must avoid.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from aha.models.tiny import BOS, CHARACTERS, PAD

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
CHATML_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def build_chatml_tokenizer() -> PreTrainedTokenizerFast:
    """Characters + <pad>, <s>, <|im_start|>, <|im_end|> (the EOS: a reply ends at its end of turn)."""
    specials = [PAD, BOS, IM_START, IM_END]
    vocab = {tok: i for i, tok in enumerate([*specials, *CHARACTERS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=" "))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, vocab[BOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=IM_END,
        unk_token=" ",
        padding_side="left",
        clean_up_tokenization_spaces=False,
        chat_template=CHATML_TEMPLATE,
    )


def create_chatml_model(out_dir: str | Path, seed: int = 0) -> Path:
    """A seeded tiny Llama (~0.2M parameters) + the ChatML tokenizer, saved to `out_dir`."""
    out_dir = Path(out_dir)
    tokenizer = build_chatml_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
