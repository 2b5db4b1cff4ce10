"""Write a tiny Llama as a GGUF file with the gguf package's writer, laid out as llama.cpp's converter
lays out a Hugging Face Llama: F32 tensors, Q/K rows permuted for its rotary layout, a byte-level BPE
vocabulary with ChatML control tokens, and a chat template. No download needed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.convert_slow_tokenizer import bytes_to_unicode

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he"]  # a few, so the file carries a real merge list


def tiny_vocabulary() -> tuple[list[str], list[int]]:
    """Tokens (specials, the 256 byte symbols, the merged tokens) and their GGUF token types."""
    byte_symbols = list(bytes_to_unicode().values())
    merged = ["".join(m.split(" ")) for m in MERGES]
    tokens = SPECIALS + byte_symbols + merged
    types = [3] * len(SPECIALS) + [1] * (len(byte_symbols) + len(merged))  # 3 = CONTROL, 1 = NORMAL
    return tokens, types


def _permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's `permute` of Q/K rows (convert_hf_to_gguf.py), which transformers reverses on load."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def write_tiny_llama_gguf(path: str | Path, seed: int = 0) -> LlamaForCausalLM:
    """Write a seeded tiny Llama to `path` (GGUF, F32) and return the source model."""
    import gguf

    tokens, types = tiny_vocabulary()
    config = LlamaConfig(
        vocab_size=len(tokens),
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        bos_token_id=0,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # varied weights (norms included), so a wrong layout cannot go unnoticed
        for param in model.parameters():
            param.normal_(0.0, 0.2) if param.dim() == 2 else param.uniform_(0.5, 1.5)
    head_dim = config.hidden_size // config.num_attention_heads

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(0)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        q = _permute(state[p + "self_attn.q_proj.weight"], config.num_attention_heads)
        k = _permute(state[p + "self_attn.k_proj.weight"], config.num_key_value_heads)
        tensors = {
            "attn_norm": state[p + "input_layernorm.weight"],
            "attn_q": q,
            "attn_k": k,
            "attn_v": state[p + "self_attn.v_proj.weight"],
            "attn_output": state[p + "self_attn.o_proj.weight"],
            "ffn_norm": state[p + "post_attention_layernorm.weight"],
            "ffn_gate": state[p + "mlp.gate_proj.weight"],
            "ffn_up": state[p + "mlp.up_proj.weight"],
            "ffn_down": state[p + "mlp.down_proj.weight"],
        }
        for name, tensor in tensors.items():
            writer.add_tensor(f"blk.{i}.{name}.weight", np.ascontiguousarray(tensor))
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    writer.add_tensor("output.weight", state["lm_head.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model
