"""Mixed precision (model.precision): float32 master weights under autocast learn where pure bf16 cannot,
fp16 loss scaling skips overflowed steps and resumes its scale, the bf16 reference and the rollouts compute
what the policy's forward computes, and lean activations keep to fp32 on the CPU."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from helpers.rl_configs import tiny_rl_overrides
from safetensors.torch import load_file
from test_rollout_static import assert_bf16_close

import aha.train.precision as precision_module
from aha.config import ConfigError, load_config
from aha.data.prompts import load_prompt_file
from aha.demo import DemoConfig
from aha.demo.pipeline import _grpo_config as demo_grpo_config
from aha.demo.pipeline import _sft_config as demo_sft_config
from aha.demo.scenarios import SCENARIOS
from aha.models.loading import load_model, load_tokenizer
from aha.rewards.base import make_reward_specs
from aha.rollout import make_engine
from aha.rollout.base import SamplingParams
from aha.rollout.native import NativeSampler
from aha.train.common_config import ModelConfig
from aha.train.evaluate import evaluate
from aha.train.grpo import GRPORunConfig, run_grpo
from aha.train.optim import build_optimizer
from aha.train.policy_update import UpdateBatch, completion_logprobs
from aha.train.precision import PRECISIONS, Precision, lean_activations_blocker, resolve_precision
from aha.train.reference import ReferencePolicy, frozen_copy
from aha.train.session import TrainingSession
from aha.train.sft import SFTRunConfig, completion_nll, encode_demonstrations, pad_demonstrations, run_sft

HELPERS = Path(__file__).parent / "helpers"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _copy_task(n: int, seed: int, exclude: frozenset[str] = frozenset()) -> list[dict]:
    """Prompt "kqz=" -> completion "kqz" (as test_train_sft): learnable by the tiny model in ~150 steps."""
    rng = random.Random(seed)
    rows, seen = [], set(exclude)
    while len(rows) < n:
        word = "".join(rng.choice("abcdefghijkl") for _ in range(3))
        if word not in seen:
            seen.add(word)
            rows.append({"prompt": f"{word}=", "completion": word, "answer": word})
    return rows


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def copy_files(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("precision_data")
    heldout = _copy_task(100, seed=1)
    train = _copy_task(1200, seed=2, exclude=frozenset(r["completion"] for r in heldout))
    return _write_jsonl(root / "train.jsonl", train), _write_jsonl(root / "heldout.jsonl", heldout)


def _sft_config(model_dir: Path, train: Path, out: Path, *overrides: str) -> SFTRunConfig:
    base = [
        f"model.path={model_dir}",
        f"data.train_file={train}",
        f"run.output_dir={out}",
        "run.progress=false",
        "train.batch_size=32",
        "model.device=cpu",  # the CPU claims hold on a machine with a GPU too (CUDA tests override it)
    ]
    return load_config(SFTRunConfig, overrides=[*base, *overrides])


def _varied(model_dir: Path) -> torch.nn.Module:
    return load_model(str(model_dir))


# --- configuration ------------------------------------------------------------------------------------


def test_the_option_offers_what_the_module_resolves():
    assert ModelConfig.__dataclass_fields__["precision"].metadata["choices"] == PRECISIONS
    assert resolve_precision("auto", "cpu") == "fp32"
    assert Precision("bf16-mixed", "cpu").compute_dtype == torch.bfloat16
    with pytest.raises(ConfigError, match="model.precision='bf16'"):
        resolve_precision("bf16", "cpu")


@needs_cuda
def test_auto_is_bf16_mixed_on_a_gpu_with_bf16():
    expected = "bf16-mixed" if torch.cuda.is_bf16_supported() else "fp32"
    assert resolve_precision("auto", "cuda") == expected


def test_a_config_that_sets_model_dtype_fails_pointing_at_model_precision(tmp_path):
    """Pure-bf16 training must not stay reachable through an old config."""
    with pytest.raises(
        ConfigError, match=r"^model\.dtype \(from the command line\) is no longer an option: "
    ):
        load_config(SFTRunConfig, overrides=["model.dtype=bfloat16"])
    path = tmp_path / "old.yaml"
    path.write_text("model:\n  path: m\n  dtype: bfloat16\n")
    with pytest.raises(ConfigError, match=rf"model\.dtype \(from {path}\).*set model\.precision instead"):
        load_config(GRPORunConfig, path)


# --- float32 master weights: small updates are kept ---------------------------------------------------


def _changed_fraction(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> float:
    changed = sum(int((before[k].float() != after[k].float()).sum()) for k in before)
    return changed / sum(t.numel() for t in before.values())


def test_bf16_mixed_moves_the_weights_at_lr_1e_6_where_pure_bf16_does_not(
    tiny_model_dir, copy_files, tmp_path
):
    """Issue 17: pure-bf16 AdamW at lr 1e-6 moved 15 of 1,000 weights in 10 steps. AdamW moves each weight
    by about lr per step, 1e-6, far below bf16's spacing near the tiny model's weights (about |w| / 256),
    but well above float32's (|w| * 1.2e-7): with float32 master weights every weight that has a gradient
    moves (the tied embedding gets one for every row through the head)."""
    train, _ = copy_files
    steps = ("train.steps=10", "optim.lr=1e-6", "optim.warmup_steps=0", "optim.schedule=constant")
    start = load_model(str(tiny_model_dir)).state_dict()
    result = run_sft(
        _sft_config(tiny_model_dir, train, tmp_path / "mixed", "model.precision=bf16-mixed", *steps)
    )
    mixed = load_file(result.final_dir / "model.safetensors")
    assert _changed_fraction({k: start[k] for k in mixed}, mixed) >= 0.99

    # The same 10 steps with the weights themselves in bf16 (what model.dtype=bfloat16 did).
    model = load_model(str(tiny_model_dir), dtype="bfloat16")
    tokenizer = load_tokenizer(str(tiny_model_dir))
    optimizer = build_optimizer(model, lr=1e-6, weight_decay=0.0)
    rows = load_prompt_file(str(train), required_fields=("completion",))
    encoded = encode_demonstrations(
        tokenizer, [r.prompt for r in rows], [r.fields["completion"] for r in rows], 64
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for step in range(10):
        batch = pad_demonstrations(encoded[step * 32 : (step + 1) * 32], tokenizer.pad_token_id)
        completion_nll(model, batch).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    assert _changed_fraction(before, model.state_dict()) < 0.1  # measured: 0.020 (mixed: 0.99996)


# --- fp16-mixed: loss scaling -------------------------------------------------------------------------


def _nll_step(model, precision: Precision, optimizer, tokenizer, inject_inf: bool = False):
    batch = pad_demonstrations(
        encode_demonstrations(tokenizer, ["abc=", "kkl="], ["abc", "kkl"], 16), tokenizer.pad_token_id
    )
    optimizer.zero_grad(set_to_none=True)
    with precision.autocast():
        loss = completion_nll(model, batch)
    precision.backward(loss)
    if inject_inf:
        next(model.parameters()).grad[0, 0] = float("inf")
    return precision.step(optimizer, max_norm=1.0)


def test_fp16_mixed_skips_a_step_whose_gradients_overflowed(tiny_model_dir):
    model = load_model(str(tiny_model_dir))
    tokenizer = load_tokenizer(str(tiny_model_dir))
    precision = Precision("fp16-mixed", "cpu")
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.0)
    assert not _nll_step(model, precision, optimizer, tokenizer).skipped
    scale = precision.scaler.get_scale()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    adam_steps = [float(s["step"]) for s in optimizer.state.values()]

    result = _nll_step(model, precision, optimizer, tokenizer, inject_inf=True)
    assert result.skipped and not torch.isfinite(torch.tensor(result.grad_norm))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [float(s["step"]) for s in optimizer.state.values()] == adam_steps  # AdamW's state untouched
    assert precision.scaler.get_scale() == scale / 2

    assert not _nll_step(model, precision, optimizer, tokenizer).skipped  # and training goes on
    assert not all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_fp16_mixed_resumes_with_the_loss_scale_it_had(tiny_model_dir, copy_files, tmp_path, monkeypatch):
    """Started at scale 2^20 the tiny model's fp16 gradients overflow (measured: from 2^18 up; 2^17
    does not), so the first steps are skipped and the scale halves to a working one. A resume that
    started again from 2^20 would skip steps the uninterrupted run took and end elsewhere."""
    monkeypatch.setattr(precision_module, "INITIAL_LOSS_SCALE", 2.0**20)
    train, _ = copy_files
    out = tmp_path / "run"
    cfg = _sft_config(
        tiny_model_dir,
        train,
        out,
        "model.precision=fp16-mixed",
        "train.steps=8",
        "run.save_every=4",
        "optim.lr=3e-3",
        "optim.warmup_steps=0",
    )
    first = run_sft(cfg)
    skipped = [row["amp/step_skipped"] for row in first.history]
    assert 1.0 in skipped[:4] and 0.0 in skipped[4:], skipped  # else the test would prove nothing
    assert first.history[3]["amp/loss_scale"] < 2.0**20
    uninterrupted = load_file(out / "final" / "model.safetensors")
    shutil.rmtree(out / "checkpoints" / "step-00000008")
    shutil.rmtree(out / "final")
    resumed = run_sft(cfg, resume=True)
    assert [r["amp/loss_scale"] for r in resumed.history] == [r["amp/loss_scale"] for r in first.history]
    for name, tensor in load_file(out / "final" / "model.safetensors").items():
        assert torch.equal(tensor, uninterrupted[name]), name


# --- learning: bf16-mixed as fp32 ---------------------------------------------------------------------


def _exact_match(model_dir: Path, heldout: Path) -> float:
    engine = make_engine("native", load_model(str(model_dir)), load_tokenizer(str(model_dir)))
    params = SamplingParams(max_new_tokens=6, temperature=0.0)
    return evaluate(
        engine, load_prompt_file(str(heldout)), make_reward_specs(["exact_answer"]), params
    ).accuracy


def test_bf16_mixed_learns_what_fp32_learns_in_the_same_steps(tiny_model_dir, copy_files, tmp_path):
    """SFT on the copy task (as test_train_sft), both precisions from the same start and data order;
    held-out greedy exact match (100 prompts, 0 before training) within 3 points of each other.
    Measured here (AMD EPYC), fp32 / bf16-mixed: 0.21 / 0.19 after 40 steps (mid-climb), 0.98 / 0.98
    after 60, 1.0 / 1.0 after 80 and 150."""
    train, heldout = copy_files
    accuracy = {}
    for name in ("fp32", "bf16-mixed"):
        cfg = _sft_config(
            tiny_model_dir,
            train,
            tmp_path / name,
            f"model.precision={name}",
            "train.steps=60",
            "optim.lr=3e-3",
        )
        accuracy[name] = _exact_match(run_sft(cfg).final_dir, heldout)
    assert accuracy["fp32"] > 0.8, accuracy
    assert abs(accuracy["bf16-mixed"] - accuracy["fp32"]) <= 0.03, accuracy


def test_the_demo_trains_both_stages_at_its_precision(tmp_path):
    """`aha demo precision=bf16-mixed` (docs: its quick preset measured at both precisions)."""
    cfg = load_config(DemoConfig, overrides=["precision=bf16-mixed"])
    scenario = SCENARIOS["carry"]
    files = type("Files", (), {"grpo_train": tmp_path / "t.jsonl", "heldout": tmp_path / "h.jsonl"})
    sft = demo_sft_config(cfg, scenario.quick, tmp_path / "m", tmp_path / "sft.jsonl", tmp_path / "sft")
    grpo = demo_grpo_config(cfg, scenario, scenario.quick, tmp_path / "m", files, tmp_path / "grpo")
    assert sft.model.precision == grpo.model.precision == "bf16-mixed"


# --- the reference and the rollouts compute what the policy computes ----------------------------------


def _scoring_batch(rows: int = 6, length: int = 20, completion: int = 8) -> UpdateBatch:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 90, (rows, length), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # a left-padded row
    return UpdateBatch(ids, mask, torch.ones(rows, completion), torch.zeros(rows))


def test_the_bf16_reference_scores_exactly_as_autocast_does(tiny_varied_model_dir):
    """Autocast casts a Linear's float32 weight to bf16 before its product; a weight stored in bf16 is
    that same rounding, so the log-probs are equal, not merely close. Casting the embeddings and norms
    too (a whole-model .to(bf16)) changes them: the comparison can fail."""
    policy = _varied(tiny_varied_model_dir)
    precision = Precision("bf16-mixed", "cpu")
    batch = _scoring_batch()
    expected = completion_logprobs(policy, batch, 0.7, precision)
    reference = ReferencePolicy(policy, precision, "cpu")
    assert torch.equal(reference.logprobs(batch, 0.7), expected)
    ref_bytes = sum(p.numel() * p.element_size() for p in reference.model.parameters())
    policy_bytes = sum(p.numel() * p.element_size() for p in policy.parameters())
    assert ref_bytes < 0.6 * policy_bytes  # the tiny model's head is tied: its embedding stays float32
    assert reference.model.model.embed_tokens.weight.dtype == torch.float32
    assert not any(p.requires_grad for p in reference.model.parameters())

    all_bf16 = frozen_copy(policy, "cpu").to(torch.bfloat16)
    assert not torch.allclose(completion_logprobs(all_bf16, batch, 0.7, precision), expected, atol=1e-3)


def test_the_reference_resets_to_the_policy_in_its_own_dtype(tiny_varied_model_dir):
    policy = _varied(tiny_varied_model_dir)
    precision = Precision("bf16-mixed", "cpu")
    reference = ReferencePolicy(policy, precision, "cpu")
    with torch.no_grad():
        for p in policy.parameters():
            p.mul_(0.5)
    batch = _scoring_batch()
    assert not torch.equal(reference.logprobs(batch, 1.0), completion_logprobs(policy, batch, 1.0, precision))
    reference.sync_from(policy)
    assert reference.model.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    assert torch.equal(reference.logprobs(batch, 1.0), completion_logprobs(policy, batch, 1.0, precision))


def test_rollouts_under_autocast_compute_what_the_hf_forward_computes(tiny_varied_model_dir):
    """Under bf16 autocast the native sampler's decode step (the compiled kernel's bf16 form where MKL has
    a bf16 gemm, else the torch step) runs its products in bf16 as the training forward's do: its
    log-probs equal the teacher-forced HF forward's under the same autocast within bf16 rounding
    (helpers/tolerances.py). Not to the bit: other accumulation orders, and the torch step's attention
    is the float32 kernel with the bf16 kernel's roundings (test_rollout_llama_decode.py). The fp32
    sampler draws other tokens from the same seed: the comparison can fail."""
    model = _varied(tiny_varied_model_dir)
    tokenizer = load_tokenizer(str(tiny_varied_model_dir))
    prompts = ["12+34=", "hello w", "7*8="] * 4
    params = SamplingParams(max_new_tokens=24, temperature=1.0, seed=3)
    precision = Precision("bf16-mixed", "cpu")
    with precision.autocast():
        native = NativeSampler(model, tokenizer).generate(prompts, params)
    assert_bf16_close(model, native, 1.0)
    fp32 = NativeSampler(model, tokenizer).generate(prompts, params)
    assert not torch.equal(fp32.completion_ids, native.completion_ids)


# --- GRPO end to end ----------------------------------------------------------------------------------


def _grpo_config(model_dir: Path, out: Path, *overrides: str) -> GRPORunConfig:
    base = [
        *tiny_rl_overrides(model_dir, out, group_size=4, prompts_per_step=4, train_size=64, eval_size=8),
        "eval.every=0",
        "track.sample_every=0",
        "track.plot=false",
        "algo.beta=0.04",
        "algo.mu=2",
        "model.device=cpu",
    ]
    return load_config(GRPORunConfig, overrides=[*base, *overrides])


@pytest.mark.parametrize("name", ["fp32", "bf16-mixed"])
def test_grpo_resumes_exactly_with_two_passes_per_batch(name, tiny_model_dir, tmp_path, monkeypatch):
    """bf16-mixed: rollouts, reference, old policy and update all under autocast. With mu = 2 the second
    pass shuffles the groups: the shuffle is seeded per step, so a resumed run shuffles as the
    uninterrupted one did (a generator seeded once per run did not: its state was not checkpointed)."""
    monkeypatch.syspath_prepend(str(HELPERS))
    out = tmp_path / "run"
    cfg = _grpo_config(tiny_model_dir, out, f"model.precision={name}", "train.steps=4", "run.save_every=2")
    first = run_grpo(cfg)
    assert all(0 <= row["kl"] < 1 for row in first.history if "kl" in row)
    assert not any(key.startswith("memory/") for row in first.history for key in row)  # CUDA only
    uninterrupted = load_file(out / "checkpoints" / "step-00000004" / "model.safetensors")
    shutil.rmtree(out / "checkpoints" / "step-00000004")
    run_grpo(cfg, resume=True)
    for name, tensor in load_file(out / "checkpoints" / "step-00000004" / "model.safetensors").items():
        assert torch.equal(tensor, uninterrupted[name]), name


# --- lean activations stay where they are tested ------------------------------------------------------


def test_lean_activations_apply_to_fp32_on_the_cpu_only():
    assert lean_activations_blocker("cpu", "fp32", lora_enabled=False) is None
    assert "fp32 only" in lean_activations_blocker("cpu", "bf16-mixed", lora_enabled=False)
    assert "CPU only" in lean_activations_blocker("cuda:0", "fp32", lora_enabled=False)
    assert "LoRA" in lean_activations_blocker("cpu", "fp32", lora_enabled=True)


def test_the_session_says_why_lean_activations_step_aside(tiny_model_dir, tmp_path, capsys):
    train = _write_jsonl(tmp_path / "train.jsonl", _copy_task(4, seed=0))
    cfg = _sft_config(
        tiny_model_dir, train, tmp_path / "run", "model.precision=bf16-mixed", "optim.warmup_steps=0"
    )
    session = TrainingSession.start(cfg, resume=False, total_steps=1)
    session.finish()
    assert type(session.model.model.norm).__name__ == "LlamaRMSNorm"
    assert "model.lean_activations: off for this run: it applies to fp32 only" in capsys.readouterr().err
    assert session.precision.name == "bf16-mixed"
    assert all(p.dtype == torch.float32 for p in session.model.parameters())  # master weights


# --- CUDA only ----------------------------------------------------------------------------------------


@needs_cuda
def test_ref_offload_scores_as_the_resident_reference(tiny_varied_model_dir):
    policy = _varied(tiny_varied_model_dir).to("cuda")
    precision = Precision("auto", "cuda")
    batch = _scoring_batch()
    batch = UpdateBatch(
        batch.input_ids.cuda(), batch.attention_mask.cuda(), batch.completion_mask, batch.advantages
    )
    resident = ReferencePolicy(policy, precision, "cuda")
    offloaded = ReferencePolicy(policy, precision, "cuda", offload=True)
    assert all(p.device.type == "cpu" for p in offloaded.model.parameters())
    assert torch.equal(offloaded.logprobs(batch, 1.0), resident.logprobs(batch, 1.0))
    assert all(p.device.type == "cpu" for p in offloaded.model.parameters())  # back after its pass


@needs_cuda
def test_sft_on_cuda_logs_peak_memory_per_step(tiny_model_dir, tmp_path):
    train = _write_jsonl(tmp_path / "train.jsonl", _copy_task(64, seed=0))
    cfg = _sft_config(
        tiny_model_dir, train, tmp_path / "run", "model.device=cuda", "train.steps=3", "optim.warmup_steps=0"
    )
    history = run_sft(cfg).history
    for row in history:
        assert 0 < row["memory/cuda_allocated_peak_gb"] <= row["memory/cuda_reserved_peak_gb"], row
