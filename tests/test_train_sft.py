"""SFT: completion-only loss, learning on a tiny model, the run directory, and exact resume."""

from __future__ import annotations

import json
import random
import shutil
import string
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from aha.config import load_config
from aha.data.prompts import DataError, load_prompt_file
from aha.models.checkpointing import is_checkpointing
from aha.models.loading import load_model, load_tokenizer
from aha.rewards.base import make_reward_specs
from aha.rollout import make_engine
from aha.rollout.base import SamplingParams
from aha.train.evaluate import evaluate
from aha.train.session import TrainingSession
from aha.train.sft import (
    SFTRunConfig,
    completion_nll,
    encode_demonstrations,
    load_demonstrations,
    pad_demonstrations,
    run_sft,
)


def _copy_task(n: int, seed: int, exclude: set[str] = frozenset()) -> list[dict]:
    """Prompt "kqz=" -> completion "kqz": learnable from a few thousand examples, and held-out prompts
    (letter triples never trained on) test the skill, not memory."""
    rng = random.Random(seed)
    rows, seen = [], set(exclude)
    while len(rows) < n:
        word = "".join(rng.choice(string.ascii_lowercase[:12]) for _ in range(3))
        if word not in seen:
            seen.add(word)
            rows.append({"prompt": f"{word}=", "completion": word, "answer": word})
    return rows


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def copy_files(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("sft_data")
    heldout = _copy_task(100, seed=1)
    train = _copy_task(1200, seed=2, exclude={r["completion"] for r in heldout})
    return _write_jsonl(root / "train.jsonl", train), _write_jsonl(root / "heldout.jsonl", heldout)


def _config(model_dir: Path, train: Path, out: Path, *overrides: str) -> SFTRunConfig:
    base = [
        f"model.path={model_dir}",
        f"data.train_file={train}",
        f"run.output_dir={out}",
        "run.progress=false",
        "train.batch_size=32",
        "optim.lr=3e-3",
        "optim.warmup_steps=10",
    ]
    return load_config(SFTRunConfig, overrides=[*base, *overrides])


def _exact_match(model_dir: Path, heldout: Path) -> float:
    engine = make_engine("native", load_model(str(model_dir)), load_tokenizer(str(model_dir)))
    params = SamplingParams(max_new_tokens=6, temperature=0.0)
    return evaluate(engine, load_prompt_file(heldout), make_reward_specs(["exact_answer"]), params).accuracy


def _batch(tokenizer, prompts: list[str], completions: list[str], max_length: int):
    rows = encode_demonstrations(tokenizer, prompts, completions, max_length)
    return pad_demonstrations(rows, tokenizer.pad_token_id)


def test_tokenize_masks_the_prompt_and_appends_eos(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    batch = _batch(tokenizer, ["12+3=", "1+1="], ["15", "2"], max_length=16)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    ids = tokenizer(["12+3=15", "1+1=2"], add_special_tokens=False)["input_ids"]
    # Row 0: 5 prompt + 2 completion tokens + EOS = 8; row 1: 4 + 1 + EOS = 6, right-padded to 8.
    assert batch.input_ids.tolist() == [ids[0] + [eos], ids[1] + [eos, pad, pad]]
    assert batch.loss_mask.tolist() == [[0] * 5 + [1] * 3, [0] * 4 + [1] * 2 + [0, 0]]
    with pytest.raises(ValueError, match="max_length=6"):
        _batch(tokenizer, ["12+3="], ["15"], max_length=6)


def test_overlong_demonstration_names_the_file_and_record(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    with pytest.raises(
        ValueError, match=r"^sft\.jsonl: record 2 \('12\+3='\) is 8 tokens, over data\.max_length=6"
    ):
        encode_demonstrations(tokenizer, ["1=", "12+3="], ["1", "15"], max_length=6, source="sft.jsonl")


def test_loss_ignores_prompt_tokens(tiny_varied_model_dir):
    """Changing the prompt's *targets* cannot change the loss: only completion tokens are scored.
    Reference: the same NLL computed by hand from log_softmax over the completion positions."""
    model = load_model(str(tiny_varied_model_dir))
    tokenizer = load_tokenizer(str(tiny_varied_model_dir))
    batch = _batch(tokenizer, ["ab=", "abcd="], ["ba", "x"], max_length=16)
    with torch.no_grad():
        loss = completion_nll(model, batch)
        logp = torch.log_softmax(model(input_ids=batch.input_ids).logits.float(), -1)
    # Row 0 ("ab=" + "ba" + EOS, no padding): targets at positions 3, 4, 5 predicted from 2, 3, 4.
    # Row 1 ("abcd=" + "x" + EOS): targets at 5, 6 predicted from 4, 5. Mean over all 5 tokens.
    terms = [logp[0, t - 1, batch.input_ids[0, t]] for t in (3, 4, 5)]
    terms += [logp[1, t - 1, batch.input_ids[1, t]] for t in (5, 6)]
    assert loss.item() == pytest.approx(-torch.stack(terms).mean().item(), rel=1e-5)


def test_sft_learns_the_task_and_writes_a_loadable_model(tiny_model_dir, copy_files, tmp_path):
    train, heldout = copy_files
    before = _exact_match(tiny_model_dir, heldout)
    cfg = _config(
        tiny_model_dir,
        train,
        tmp_path / "run",
        "train.steps=150",
        f"data.eval_file={heldout}",
        "eval.every=50",
    )
    result = run_sft(cfg)
    losses = [row["loss"] for row in result.history if "loss" in row]
    assert len(losses) == 150
    assert sum(losses[-10:]) / 10 < 0.3 * sum(losses[:10]) / 10, losses[::10]
    evals = [row["eval/loss"] for row in result.history if "eval/loss" in row]
    assert len(evals) == 4 and evals[-1] < 0.3 * evals[0], evals  # steps 0, 50, 100, 150
    after = _exact_match(result.final_dir, heldout)  # loads through from_pretrained, as GRPO would
    assert before < 0.05 and after > 0.8, (before, after)
    run_dir = tmp_path / "run"
    assert (run_dir / "config.yaml").exists() and (run_dir / "plots.png").exists()
    assert (result.final_dir / "tokenizer_config.json").exists()


def test_resume_reproduces_the_uninterrupted_run(tiny_model_dir, copy_files, tmp_path):
    train, _ = copy_files
    out = tmp_path / "run"
    cfg = _config(tiny_model_dir, train, out, "train.steps=6", "run.save_every=3", "optim.warmup_steps=2")
    run_sft(cfg)
    uninterrupted = load_file(out / "final" / "model.safetensors")
    # Pretend the run died after step 3: drop the step-6 checkpoint and the final model.
    shutil.rmtree(out / "checkpoints" / "step-00000006")
    shutil.rmtree(out / "final")
    result = run_sft(cfg, resume=True)
    resumed = load_file(out / "final" / "model.safetensors")
    assert [row["step"] for row in result.history] == [1, 2, 3, 4, 5, 6]
    for name, tensor in uninterrupted.items():
        assert torch.equal(tensor, resumed[name]), name


def test_epochs_set_the_number_of_steps(tiny_model_dir, tmp_path):
    train = _write_jsonl(tmp_path / "train.jsonl", _copy_task(40, seed=0))
    # 40 examples, batch 32, 1.5 epochs -> ceil(1.5 * 40 / 32) = 2 steps.
    result = run_sft(
        _config(tiny_model_dir, train, tmp_path / "run", "train.epochs=1.5", "optim.warmup_steps=0")
    )
    assert [row["step"] for row in result.history] == [1, 2]


def test_bad_demonstrations_name_file_and_record(tmp_path):
    missing = tmp_path / "missing.jsonl"
    missing.write_text('{"prompt": "1+1=", "completion": "2"}\n{"prompt": "2+2="}\n')
    with pytest.raises(DataError, match=r"missing\.jsonl: line 2: missing required field \"completion\""):
        load_demonstrations(str(missing))
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text('{"prompt": "1+1=", "completion": 2}\n')
    with pytest.raises(DataError, match=r"wrong\.jsonl: record 1: field \"completion\" must be a string"):
        load_demonstrations(str(wrong))


@pytest.mark.parametrize("lean", [True, False])
def test_the_session_trains_lean_modules_unless_told_not_to(tiny_model_dir, tmp_path, lean):
    train = _write_jsonl(tmp_path / "train.jsonl", _copy_task(4, seed=0))
    cfg = _config(
        tiny_model_dir,
        train,
        tmp_path / "run",
        f"model.lean_activations={str(lean).lower()}",
        "optim.warmup_steps=0",
    )
    session = TrainingSession.start(cfg, resume=False, total_steps=1)
    session.finish()
    assert type(session.model.model.norm).__name__ == ("LeanLlamaRMSNorm" if lean else "LlamaRMSNorm")
    assert type(session.model.model.layers[0].mlp).__name__ == ("LeanLlamaMLP" if lean else "LlamaMLP")


@pytest.mark.parametrize("checkpointing", [True, False])
def test_the_session_enables_gradient_checkpointing_when_told(tiny_model_dir, tmp_path, checkpointing):
    train = _write_jsonl(tmp_path / "train.jsonl", _copy_task(4, seed=0))
    cfg = _config(
        tiny_model_dir,
        train,
        tmp_path / "run",
        f"train.gradient_checkpointing={str(checkpointing).lower()}",
        "optim.warmup_steps=0",
    )
    session = TrainingSession.start(cfg, resume=False, total_steps=1)
    session.finish()
    assert is_checkpointing(session.model) == checkpointing
    assert type(session.model.model.norm).__name__ == "LeanLlamaRMSNorm"  # the two compose (tested)
