"""configs/gsm8k-grpo.yaml works as written: one step of it on a tiny Qwen2 with a ChatML template (the
architecture family and chat format of Qwen2.5-Instruct), on real GSM8K prompts, on the CPU, with the
recipe's own precision, gradient checkpointing and chat-template settings; and its LoRA variant."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from aha.config import load_config
from aha.data.gsm8k import load_gsm8k
from aha.train.grpo import GRPORunConfig, run_grpo

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
from chat_model import build_chatml_tokenizer  # noqa: E402

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "gsm8k-grpo.yaml"


@pytest.fixture(scope="module")
def tiny_qwen2_chat(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny_qwen2_chat")
    tokenizer = build_chatml_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def gsm8k_prompt_files(gsm8k_test, tmp_path_factory) -> tuple[Path, Path]:
    """What the recipe's step 1 writes (`python -m aha.data.gsm8k ... --template think_answer`), from
    the real GSM8K test split kept with the tests."""
    out = tmp_path_factory.mktemp("gsm8k_prompts")
    records = load_gsm8k(gsm8k_test, limit=12, prompt_template="think_answer")
    train, held_out = out / "train.jsonl", out / "test.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in records[:8]))
    held_out.write_text("".join(json.dumps(r) + "\n" for r in records[8:]))
    return train, held_out


def _one_step(model_dir: Path, files: tuple[Path, Path], run_dir: Path, *extra: str):
    cfg = load_config(
        GRPORunConfig,
        path=RECIPE,
        overrides=[
            f"model.path={model_dir}",
            "model.device=cpu",
            f"data.train_file={files[0]}",
            f"data.eval_file={files[1]}",
            "train.steps=1",
            "train.prompts_per_step=2",
            "rollout.group_size=2",
            "rollout.max_new_tokens=8",
            "optim.warmup_steps=0",
            "eval.num_prompts=2",
            "run.save_every=0",
            "track.sample_every=1",
            "run.progress=false",
            f"run.output_dir={run_dir}",
            *extra,
        ],
    )
    return cfg, run_grpo(cfg)


def test_one_step_of_the_recipe_runs_with_its_own_settings(tiny_qwen2_chat, gsm8k_prompt_files, tmp_path):
    cfg, result = _one_step(tiny_qwen2_chat, gsm8k_prompt_files, tmp_path / "run")
    # The settings under test are the recipe's, not overridden.
    assert cfg.model.precision == "bf16-mixed"
    assert cfg.train.gradient_checkpointing and cfg.data.chat_template == "always"
    assert cfg.algo.beta > 0 and cfg.rewards.functions == ["gsm8k", "format_think_answer"]
    step = next(row for row in result.history if row["step"] == 1)
    assert math.isfinite(step["loss"]) and math.isfinite(step["kl"])
    assert (tmp_path / "run" / "checkpoints").is_dir()
    # The trainer rendered the chat template: the samples' prompts are ChatML user turns.
    sample = json.loads((tmp_path / "run" / "samples.jsonl").read_text().splitlines()[0])
    assert sample["prompt"].startswith("<s><|im_start|>user\n")
    assert sample["prompt"].endswith("<|im_start|>assistant\n")


def test_its_lora_variant_trains_adapters_only(tiny_qwen2_chat, gsm8k_prompt_files, tmp_path):
    lora = ["model.lora.r=4", "model.lora.alpha=8", "optim.lr=1.0e-5"]
    _, result = _one_step(tiny_qwen2_chat, gsm8k_prompt_files, tmp_path / "run", *lora)
    step = next(row for row in result.history if row["step"] == 1)
    assert math.isfinite(step["loss"])
    ckpt = next((tmp_path / "run" / "checkpoints").iterdir())
    assert (ckpt / "adapter_model.safetensors").is_file() and not (ckpt / "model.safetensors").exists()
