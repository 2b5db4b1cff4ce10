"""LoRA runs end to end: only adapters train, checkpoints hold adapters and resume exactly, SFT with LoRA
learns, and its output is the next stage's model."""

from __future__ import annotations

import json
import random
import string
from pathlib import Path

import pytest
import torch
from helpers.rl_configs import tiny_rl_overrides
from safetensors.torch import load_file

from aha.config import ConfigError, load_config
from aha.models.loading import load_model
from aha.models.tiny import TinyModelSpec, create_tiny_model
from aha.train.grpo import GRPORunConfig, run_grpo
from aha.train.session import TrainingSession
from aha.train.sft import SFTRunConfig, run_sft

pytest.importorskip("peft", reason="LoRA needs the optional peft extra (pip install 'aha[lora]')")

HELPERS = Path(__file__).parent / "helpers"
LORA = ["model.lora.r=4", "model.lora.alpha=8"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return create_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(autouse=True)
def _toy_rewards_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(HELPERS))


def _grpo_config(model_dir: Path, out: Path, *overrides: str) -> GRPORunConfig:
    base = [
        *tiny_rl_overrides(model_dir, out, group_size=4, prompts_per_step=4, train_size=50, eval_size=8),
        "track.plot=false",
        *LORA,
    ]
    return load_config(GRPORunConfig, overrides=[*base, *overrides])


def _copy_rows(n: int, seed: int, exclude: set[str] = frozenset()) -> list[dict]:
    """Prompt "kqz=" -> completion "kqz" (as in test_train_sft); held-out triples are never trained on."""
    rng = random.Random(seed)
    rows, seen = [], set(exclude)
    while len(rows) < n:
        word = "".join(rng.choice(string.ascii_lowercase[:12]) for _ in range(3))
        if word not in seen:
            seen.add(word)
            rows.append({"prompt": f"{word}=", "completion": word})
    return rows


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _sft_config(model_dir: Path, root: Path, *overrides: str) -> SFTRunConfig:
    heldout = _copy_rows(60, seed=1)
    train = _copy_rows(800, seed=2, exclude={r["completion"] for r in heldout})
    base = [
        f"model.path={model_dir}",
        f"data.train_file={_write_jsonl(root / 'train.jsonl', train)}",
        f"data.eval_file={_write_jsonl(root / 'heldout.jsonl', heldout)}",
        f"run.output_dir={root / 'run'}",
        "run.progress=false",
        "train.batch_size=32",
        "optim.lr=1e-2",
        "optim.warmup_steps=5",
        *LORA,
    ]
    return load_config(SFTRunConfig, overrides=[*base, *overrides])


def test_grpo_checkpoints_hold_adapters_and_resume_exactly(tiny_dir, tmp_path):
    """4 steps in one go == 2 steps, stop, resume to 4 (beta > 0: the reference pass runs with the
    adapters off); the checkpoint is adapters only, and only adapters reach the optimizer."""
    run_grpo(_grpo_config(tiny_dir, tmp_path / "straight", "train.steps=4", "algo.beta=0.04"))
    run_grpo(_grpo_config(tiny_dir, tmp_path / "split", "train.steps=2", "algo.beta=0.04"))
    run_grpo(_grpo_config(tiny_dir, tmp_path / "split", "train.steps=4", "algo.beta=0.04"), resume=True)
    ckpt = tmp_path / "straight/checkpoints/step-00000004"
    assert not (ckpt / "model.safetensors").exists()
    a = load_file(ckpt / "adapter_model.safetensors")
    b = load_file(tmp_path / "split/checkpoints/step-00000004/adapter_model.safetensors")
    assert a.keys() == b.keys() and len(a) == 3 * 7 * 2 and all("lora_" in k for k in a)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # B starts at 0: nonzero B everywhere means every adapter was trained.
    assert all(a[k].abs().sum() > 0 for k in a if "lora_B" in k)
    session_cfg = _grpo_config(tiny_dir, tmp_path / "session", "train.steps=1")
    session = TrainingSession.start(session_cfg, resume=False, total_steps=1)
    session.finish()
    trainable = [p for group in session.optimizer.param_groups for p in group["params"]]
    assert len(trainable) == len(a) and all(p.requires_grad for p in trainable)
    # No lean forwards under LoRA: they would read the projections' weights and bypass the adapters.
    assert not any(type(m).__name__.startswith("Lean") for m in session.model.modules())
    steps = [json.loads(line)["step"] for line in (tmp_path / "split/metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3, 4]
    # Fresh adapters (B = 0) leave the policy equal to the adapter-disabled reference: KL 0 at the first
    # update (to rounding), then the trained adapters move the policy away from it.
    kl = [
        json.loads(line).get("kl") for line in (tmp_path / "straight/metrics.jsonl").read_text().splitlines()
    ]
    assert kl[1] < 1e-7 and kl[4] > 1e-5, kl


def test_ref_sync_is_refused_under_lora(tiny_dir, tmp_path):
    with pytest.raises(ConfigError, match="ref_sync_every"):
        _grpo_config(tiny_dir, tmp_path / "x", "algo.ref_sync_every=5")


def test_sft_with_lora_learns_and_feeds_grpo(tmp_path):
    """Held-out loss of the copy task falls under LoRA alone (embeddings, norms and LM head frozen at their
    random values); final/ holds adapters, merged/ the merged model, and final/ is a valid model.path
    for a GRPO stage with fresh adapters."""
    # At init std 0.02 the frozen random embeddings are too alike to copy from (held-out loss stalls at
    # ~2.7, near a uniform guess over the 12 letters, ln 12 = 2.5); at 0.08 they are distinct enough.
    tiny_dir = create_tiny_model(tmp_path / "model", TinyModelSpec(init_std=0.08), seed=0)
    cfg = _sft_config(
        tiny_dir, tmp_path, "train.steps=100", "model.lora.r=16", "model.lora.alpha=32", "eval.every=50"
    )
    cfg.model.lora.save_merged = True
    result = run_sft(cfg)
    evals = [row["eval/loss"] for row in result.history if "eval/loss" in row]
    assert len(evals) == 3 and evals[0] > 2.5, evals  # steps 0, 50, 100: the random model cannot copy
    assert evals[-1] < 0.5, evals  # far below ln 12: the held-out words are copied, not guessed
    assert (result.final_dir / "adapter_model.safetensors").exists()
    assert not (result.final_dir / "model.safetensors").exists()
    merged = load_file(result.run_dir / "merged" / "model.safetensors")
    base = load_model(str(tiny_dir)).state_dict()
    moved = [k for k in merged if not torch.equal(merged[k], base[k])]
    assert moved and all("proj" in k for k in moved), moved
    run_grpo(
        _grpo_config(result.final_dir, tmp_path / "grpo", "train.steps=1", "model.lora.save_merged=true")
    )
    assert (tmp_path / "grpo" / "merged" / "model.safetensors").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_lora_grpo_on_cuda_in_bfloat16(tiny_dir, tmp_path):
    """bf16-mixed on the GPU (float32 master weights and adapters): the reference under disable_adapter
    computes what the plain base model computes under the same autocast, and a 3-step run trains every
    adapter."""
    from aha.models.lora import adapters_disabled
    from aha.rollout.completions import tokenize_prompts

    cfg = _grpo_config(
        tiny_dir, tmp_path / "run", "model.device=cuda", "model.precision=bf16-mixed", "train.steps=1"
    )
    session = TrainingSession.start(cfg, resume=False, total_steps=1)
    session.finish()
    model = session.model
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    base = load_model(str(tiny_dir), "float32", "cuda").eval()
    ids, mask = tokenize_prompts(session.tokenizer, ["12+7=", "3*4=hello"], "cuda")
    with torch.no_grad(), adapters_disabled(model), torch.autocast("cuda", torch.bfloat16):
        ref = model.eval()(input_ids=ids, attention_mask=mask).logits
        expected = base(input_ids=ids, attention_mask=mask).logits
    # Both float32 weights cast to bf16 by autocast: the same bf16 ops; allow 2 bf16 ulps of the largest
    # logit in case the GPU library picks kernels that round differently.
    tol = 2 * torch.finfo(torch.bfloat16).eps * float(expected.abs().max())
    torch.testing.assert_close(ref.float(), expected.float(), rtol=0, atol=tol)
    result = run_grpo(
        _grpo_config(
            tiny_dir, tmp_path / "run2", "model.device=cuda", "model.precision=bf16-mixed", "train.steps=3"
        )
    )
    assert len([r for r in result.history if "reward/mean" in r]) == 3
    adapters = load_file(tmp_path / "run2/checkpoints/step-00000003/adapter_model.safetensors")
    assert all(adapters[k].abs().sum() > 0 for k in adapters if "lora_B" in k)
