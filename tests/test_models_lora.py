"""LoRA through peft: aha's scoring, sampling and lean modules see the adapters; the reference sees none;
gradients reach every adapter and no base weight; merged exports and adapter directories load as plain
models."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from aha.cli import main
from aha.config import ConfigError
from aha.models.forward import score_completions
from aha.models.lean_activations import use_lean_activations
from aha.models.loading import load_model, load_tokenizer
from aha.models.lora import adapters_disabled, apply_lora, export_merged, is_lora_model
from aha.models.lora_config import LoRAConfig
from aha.rollout.base import SamplingParams
from aha.rollout.completions import tokenize_prompts
from aha.rollout.llama_decode import decode_step_for
from aha.rollout.native import NativeSampler
from aha.train.policy_update import PolicyLossSettings, UpdateBatch, policy_update

pytest.importorskip("peft", reason="LoRA needs the optional peft extra (pip install 'aha[lora]')")

PROMPTS = ["12+7=", "3*4=", "ab", "hello there"]
# float32 log-probs through 3 layers of width <= 256: the same math done in another order (a cached prompt,
# a merged weight W + s*B@A rounded once) differs by a few hundred roundings of 6e-8 relative on values of
# size ~1-10, i.e. ~1e-5 at most; 1e-4 leaves margin while the adapters move log-probs by far more (asserted).
# Even the very same ops on equal weights are not always bitwise equal here: MKL picks kernels by buffer
# alignment (seen: 4.8e-7 between a base model and the adapter-disabled one on the shared-prompt path).
ATOL = 1e-4


def _lora_model(model_dir, r: int = 4, seed: int = 0):
    """The model with LoRA adapters whose B is redrawn (seeded): fresh adapters have B = 0 and change
    nothing, which would make every comparison below vacuous."""
    model = apply_lora(load_model(str(model_dir)), LoRAConfig(r=r, alpha=2.0 * r), str(model_dir))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.2, generator=generator)
    return model


def _batch(tokenizer, completions_len: int = 6, seed: int = 0):
    """Each prompt twice (a GRPO group of 2), so the shared-prompt scoring path runs too."""
    ids, mask = tokenize_prompts(tokenizer, [p for p in PROMPTS for _ in range(2)], "cpu")
    generator = torch.Generator().manual_seed(seed)
    completion = torch.randint(3, len(tokenizer), (ids.shape[0], completions_len), generator=generator)
    return torch.cat([ids, completion], 1), torch.cat([mask, torch.ones_like(completion)], 1), completions_len


def _plain_logprobs(model, input_ids, attention_mask, completion_len):
    """Log-probs straight from `model(...)`: for a peft model, peft's own forward."""
    positions = (attention_mask.cumsum(1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions).logits
    logprobs = torch.log_softmax(logits[:, -completion_len - 1 : -1].float(), -1)
    return logprobs.gather(-1, input_ids[:, -completion_len:, None]).squeeze(-1)


def test_scores_equal_peft_forward_and_the_reference_is_the_base(tiny_varied_model_dir):
    tokenizer = load_tokenizer(str(tiny_varied_model_dir))
    model = _lora_model(tiny_varied_model_dir).eval()
    base = load_model(str(tiny_varied_model_dir)).eval()
    ids, mask, c = _batch(tokenizer)
    with torch.no_grad():
        ours = score_completions(model, ids, mask, c).logprobs
        peft_own = _plain_logprobs(model, ids, mask, c)
        with adapters_disabled(model):
            reference = score_completions(model, ids, mask, c).logprobs
        base_scores = score_completions(base, ids, mask, c).logprobs
    assert (ours - base_scores).abs().max() > 100 * ATOL  # the adapters matter
    assert torch.allclose(ours, peft_own, atol=ATOL)
    # Switching the adapters off runs exactly the base layers' ops (up to MKL's alignment-dependent rounding).
    assert torch.allclose(reference, base_scores, atol=ATOL)


def test_lean_modules_step_aside_for_adapters(tiny_varied_model_dir):
    tokenizer = load_tokenizer(str(tiny_varied_model_dir))
    model = _lora_model(tiny_varied_model_dir).eval()
    ids, mask, c = _batch(tokenizer)
    with torch.no_grad():
        before = score_completions(model, ids, mask, c).logprobs
        use_lean_activations(model)
        after = score_completions(model, ids, mask, c).logprobs
    assert torch.allclose(before, after, atol=ATOL)


def test_native_sampling_goes_through_the_adapters(tiny_varied_model_dir):
    tokenizer = load_tokenizer(str(tiny_varied_model_dir))
    model = _lora_model(tiny_varied_model_dir).eval()
    assert decode_step_for(model, 64) is None  # the fused step would read the base weights only
    params = SamplingParams(max_new_tokens=8, temperature=1.0, seed=3)
    rollout = NativeSampler(model, tokenizer).generate(PROMPTS, params)
    hf = NativeSampler(model, tokenizer, decode="hf").generate(PROMPTS, params)
    assert torch.equal(rollout.input_ids, hf.input_ids)
    c = rollout.completion_mask.shape[1]
    live = rollout.completion_mask.bool()
    with torch.no_grad():
        peft_own = _plain_logprobs(model, rollout.input_ids, rollout.attention_mask, c)
        with adapters_disabled(model):
            base = _plain_logprobs(model, rollout.input_ids, rollout.attention_mask, c)
    assert torch.allclose(rollout.logprobs[live], peft_own[live], atol=ATOL)
    assert (rollout.logprobs[live] - base[live]).abs().max() > 100 * ATOL
    # The same seed through the merged plain model, which takes the fused decode step: the same tokens.
    merged = model.merge_and_unload()
    assert decode_step_for(merged, 64) is not None
    fused = NativeSampler(merged, tokenizer).generate(PROMPTS, params)
    assert torch.equal(fused.input_ids, rollout.input_ids)
    assert torch.allclose(fused.logprobs[live], rollout.logprobs[live], atol=ATOL)


def test_an_update_reaches_every_adapter_and_no_base_weight(tiny_varied_model_dir):
    tokenizer = load_tokenizer(str(tiny_varied_model_dir))
    model = _lora_model(tiny_varied_model_dir)
    base_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    adapters = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert adapters and all("lora_" in n for n in adapters)
    # 3 layers x 7 projections x (A, B)
    assert len(adapters) == 3 * 7 * 2
    ids, mask, c = _batch(tokenizer)
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5, 1.0, -1.0, 0.5, -0.5])
    batch = UpdateBatch(ids, mask, torch.ones(ids.shape[0], c, dtype=torch.long), advantages)
    with torch.no_grad(), adapters_disabled(model):
        batch.ref_logprobs = score_completions(model, ids, mask, c).logprobs
    optimizer = torch.optim.SGD(list(adapters.values()), lr=0.1)
    grads = {}

    def keep_grads(_opt, _args, _kwargs):
        grads.update({n: p.grad.clone() for n, p in adapters.items()})

    optimizer.register_step_pre_hook(keep_grads)
    settings = PolicyLossSettings(0.2, 0.2, 0.04, "k3", "token-mean", 1.0, norm_constant=float(ids.numel()))
    policy_update(
        model,
        optimizer,
        batch,
        settings,
        passes=1,
        minibatches=1,
        group_size=2,
        grad_clip=0.0,
        generator=torch.Generator(),
    )
    assert grads.keys() == adapters.keys()
    zero = [n for n, g in grads.items() if not g.abs().sum() > 0]
    assert not zero, zero
    for name, before in base_before.items():
        param = dict(model.named_parameters())[name]
        assert param.grad is None and torch.equal(param, before), name


def test_merged_export_loads_as_a_plain_model(tiny_varied_model_dir, tmp_path):
    tokenizer = load_tokenizer(str(tiny_varied_model_dir))
    model = _lora_model(tiny_varied_model_dir).eval()
    model.save_pretrained(tmp_path / "adapters")
    assert not (tmp_path / "adapters" / "model.safetensors").exists()
    tokenizer.save_pretrained(tmp_path / "adapters")
    out = export_merged(tmp_path / "adapters", tmp_path / "merged")
    assert (out / "model.safetensors").exists()
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert not is_lora_model(merged)
    via_load_model = load_model(str(tmp_path / "adapters")).eval()  # an adapter dir as model.path
    ids, mask, c = _batch(tokenizer)
    with torch.no_grad():
        expected = score_completions(model, ids, mask, c).logprobs
        got = score_completions(merged, ids, mask, c).logprobs
        also = score_completions(via_load_model, ids, mask, c).logprobs
    assert torch.allclose(got, expected, atol=ATOL)
    assert torch.allclose(got, also, atol=ATOL)
    # The CLI writes the same model.
    assert main(["merge-lora", f"adapter_dir={tmp_path / 'adapters'}", f"output_dir={tmp_path / 'cli'}"]) == 0
    from_cli = AutoModelForCausalLM.from_pretrained(tmp_path / "cli").eval()
    with torch.no_grad():
        assert torch.allclose(score_completions(from_cli, ids, mask, c).logprobs, got, atol=ATOL)


def test_all_linear_targets_every_projection_but_not_the_output_layer(tiny_model_dir):
    model = apply_lora(load_model(str(tiny_model_dir)), LoRAConfig(r=2, target_modules=["all-linear"]), "x")
    wrapped = {n.split(".lora_")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert len(wrapped) == 3 * 7 and not any("lm_head" in n for n in wrapped)


def test_bad_lora_settings_fail_with_the_key(tiny_model_dir, monkeypatch):
    with pytest.raises(ConfigError, match="r must be >= 0"):
        LoRAConfig(r=-1).validate()
    with pytest.raises(ConfigError, match="dropout"):
        LoRAConfig(r=4, dropout=1.0).validate()
    with pytest.raises(ConfigError, match="target_modules"):
        apply_lora(load_model(str(tiny_model_dir)), LoRAConfig(r=4, target_modules=["no_such_proj"]), "x")
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"aha\[lora\]"):
        LoRAConfig(r=4).validate()
    LoRAConfig(r=0).validate()  # LoRA off: peft not needed


def test_merge_lora_rejects_a_directory_without_adapters(tiny_model_dir, tmp_path, capsys):
    assert main(["merge-lora", f"adapter_dir={tiny_model_dir}", f"output_dir={tmp_path / 'out'}"]) == 2
    assert "not a LoRA adapter directory" in capsys.readouterr().err
