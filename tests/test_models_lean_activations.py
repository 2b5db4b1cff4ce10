"""The lean MLP, RMSNorm and attention forwards: the same outputs and gradients as the HF modules, fewer
saved bytes; and the compiled SwiGLU, RMSNorm and rotary passes they use for float32 on the CPU."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers.kernels import count_compiled_passes, layer_kernels_missing, require_layer_kernels
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama import modeling_llama
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

from aha.kernels.layer_kernels import (
    kernel_applies,
    load_layer_kernels,
    rms_norm_backward,
    rms_norm_forward,
    rotary,
    swiglu_backward,
    swiglu_forward,
)
from aha.models.forward import score_completions
from aha.models.lean_activations import (
    _LinearsOfNorm,
    _RMSNorm,
    _Rotary,
    _SiluGateDown,
    use_lean_activations,
)
from aha.models.loading import load_model


def test_rms_norm_gradients_match_finite_differences():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, w: _RMSNorm.apply(a, w, 1e-6), (x, weight))


@pytest.mark.parametrize("with_bias", [False, True])
def test_silu_gate_down_gradients_match_finite_differences(with_bias):
    torch.manual_seed(0)
    gate = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    up = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, dtype=torch.float64, requires_grad=True) if with_bias else None
    inputs = (gate, up, weight, bias)
    assert torch.autograd.gradcheck(_SiluGateDown.apply, inputs)


def test_silu_gate_down_by_hand():
    """silu(g) * u through a 1x1 `down` of weight 2 and bias 1, and its gradient at g = 0 (silu'(0) = 1/2)."""
    gate = torch.tensor([[0.0]], requires_grad=True)
    up = torch.tensor([[3.0]], requires_grad=True)
    weight = torch.tensor([[2.0]], requires_grad=True)
    bias = torch.tensor([1.0], requires_grad=True)
    out = _SiluGateDown.apply(gate, up, weight, bias)
    assert out.item() == 1.0  # silu(0) = 0
    out.sum().backward()
    assert gate.grad.item() == pytest.approx(2.0 * 3.0 * 0.5)  # weight * up * silu'(0)
    assert up.grad.item() == 0.0 and weight.grad.item() == 0.0 and bias.grad.item() == 1.0


@pytest.fixture
def torch_ops_only(monkeypatch):
    """The lean modules without the compiled passes (as on a machine without a C compiler)."""
    monkeypatch.setenv("AHA_TRAIN_KERNELS", "0")
    load_layer_kernels.cache_clear()
    yield
    monkeypatch.undo()
    load_layer_kernels.cache_clear()


def test_the_layer_kernels_build_here():
    """Where there is a C compiler it must build: a silent fallback would hide a broken build."""
    assert require_layer_kernels() is load_layer_kernels()


def test_swiglu_kernel_against_float64():
    """The compiled passes against silu(g) * u and its derivatives in float64, over gates from -90 to 90
    (exp under- and overflow) and at exactly 0."""
    require_layer_kernels()
    torch.manual_seed(0)
    gate = torch.cat([torch.randn(100_000) * 4, torch.linspace(-90, 90, 1001), torch.zeros(3)])
    up, grad = torch.randn_like(gate), torch.randn_like(gate)
    g64, u64, d64 = gate.double(), up.double(), grad.double()
    sig = torch.sigmoid(g64)
    hidden64 = g64 * sig * u64
    # Elementwise, no sums: exp to ~1 ulp, then 1 + e, a division and two products, each rounded once:
    # about 5 float32 epsilons (6e-7) relative at most, whatever the ISA; rtol 1e-6 leaves ~1.7x.
    torch.testing.assert_close(swiglu_forward(gate, up).double(), hidden64, rtol=1e-6, atol=1e-30)
    grad_gate, grad_up, hidden = swiglu_backward(grad, gate, up)
    torch.testing.assert_close(hidden.double(), hidden64, rtol=1e-6, atol=1e-30)
    torch.testing.assert_close(grad_up.double(), d64 * g64 * sig, rtol=1e-6, atol=1e-30)
    # silu'(g) = s (1 + g (1 - s)) is a difference of nearly equal terms near g = -1.28: absolute tolerance
    torch.testing.assert_close(
        grad_gate.double(), d64 * u64 * sig * (1 + g64 * (1 - sig)), rtol=1e-5, atol=1e-6
    )


def test_rms_norm_kernel_against_float64():
    """The compiled norm against the formula in float64, rows of 3 and of 1000 features, with eps
    mattering (all-zero and tiny rows) and not; the weight's gradient summed over rows and threads."""
    require_layer_kernels()
    torch.manual_seed(0)
    for features in (3, 1000):
        x = torch.randn(70, features) * torch.logspace(-4, 2, 70)[:, None]
        x[0] = 0.0
        weight, grad = torch.randn(features), torch.randn(70, features)
        x64 = x.double().requires_grad_()
        w64 = weight.double().requires_grad_()
        out64 = w64 * x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + 1e-6)
        out64.backward(grad.double())
        out, scale = rms_norm_forward(x, weight, 1e-6)
        # The mean of up to 1000 squares, summed in an order the vector width sets: worst case
        # log2(1000) ~ 10 roundings along a pairwise sum (~1.2e-6 relative), then rsqrt and two products
        # (a few more epsilons): rtol 1e-5. atol for the all-zero row, whose output is 0.
        torch.testing.assert_close(out.double(), out64.detach(), rtol=1e-5, atol=1e-6)
        grad_x, grad_w = rms_norm_backward(grad, x, weight, scale)
        # grad_x = scale * (w g - x * mean(x w g) * scale^2): a difference of two sums of 1000 products
        # that nearly cancel in some entries, so the error is relative to the row's largest gradient
        # (~10 epsilons of it for each sum: 1e-5), and rtol 1e-4 for the entries that do not cancel.
        torch.testing.assert_close(
            grad_x.double(), x64.grad, rtol=1e-4, atol=1e-5 * float(x64.grad.abs().max())
        )
        # a sum over 70 rows, split between threads: ~log2(70) ~ 7 roundings, 1e-5 relative is ~12x that
        torch.testing.assert_close(grad_w.double(), w64.grad, rtol=1e-5, atol=1e-5)


def _rotary64(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """HF's apply_rotary_pos_emb for one tensor, in float64."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


@pytest.mark.parametrize("angle_rows", [1, 3])
def test_rotary_kernel_against_float64(angle_rows):
    """x [B, H, T, D] as HF makes it (a transposed view of [B, T, H, D]) and contiguous; angles per row
    (left padding) or shared by the batch (stride 0); the adjoint against float64 autograd's backward,
    for a gradient with other strides."""
    require_layer_kernels()
    torch.manual_seed(0)
    batch, heads, steps, dim = 3, 4, 5, 8
    views = torch.randn(batch, steps, heads, dim).transpose(1, 2), torch.randn(batch, heads, steps, dim)
    cos, sin = torch.randn(angle_rows, steps, dim), torch.randn(angle_rows, steps, dim)
    for x in views:
        x64 = x.double().requires_grad_()
        out64 = _rotary64(x64, cos.double(), sin.double())
        out = rotary(x, cos, sin)
        assert out.stride() == x.stride()
        # x cos + rotate(x) sin: two products and a sum (or a fused multiply-add, per ISA), each rounded
        # once: ~3 epsilons of the terms' size (randn x randn, mostly below 3: ~1e-6 at most), so rtol 1e-6
        # plus atol 1e-6 for the outputs where the two terms cancel.
        torch.testing.assert_close(out.double(), out64, rtol=1e-6, atol=1e-6)
        grad = torch.randn(batch, steps, heads, dim).transpose(1, 2)
        out64.backward(grad.double())
        torch.testing.assert_close(
            rotary(grad, cos, sin, adjoint=True).double(), x64.grad, rtol=1e-6, atol=1e-6
        )


def test_rotary_function_gradients_against_hf_autograd():
    """_Rotary's backward for q and k (other head counts) against autograd through HF's function."""
    require_layer_kernels()
    torch.manual_seed(0)
    q = torch.randn(2, 6, 4, 8).transpose(1, 2).requires_grad_()
    k = torch.randn(2, 6, 2, 8).transpose(1, 2).requires_grad_()
    cos, sin = torch.randn(2, 6, 8), torch.randn(2, 6, 8)
    hf = getattr(modeling_llama.apply_rotary_pos_emb, "hf_rotary", modeling_llama.apply_rotary_pos_emb)
    grads = [torch.randn(2, 4, 6, 8), torch.randn(2, 2, 6, 8)]
    results = []
    for fn in (hf, _Rotary.apply):
        q_out, k_out = fn(q, k, cos, sin)
        q.grad = k.grad = None
        torch.autograd.backward([q_out, k_out], grads)
        results.append((q_out, k_out, q.grad, k.grad))
    for ours, theirs in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


def test_the_rotary_dispatcher_runs_hf_outside_lean_attention(tiny_model_dir, monkeypatch):
    """Switching a model wraps the modeling module's apply_rotary_pos_emb for the whole process: the
    compiled pass must run inside lean attention modules only, other models keep HF's function."""
    require_layer_kernels()
    hf = load_model(str(tiny_model_dir))
    lean = copy.deepcopy(hf)
    use_lean_activations(lean)
    calls = []
    original = _Rotary.apply
    monkeypatch.setattr(_Rotary, "apply", lambda *args: calls.append(1) or original(*args))
    input_ids = torch.randint(3, hf.config.vocab_size, (2, 7))
    with torch.no_grad():
        lean(input_ids)
        assert len(calls) == hf.config.num_hidden_layers
        hf(input_ids)
    assert len(calls) == hf.config.num_hidden_layers
    q, k, cos, sin = (
        torch.randn(1, 2, 3, 4),
        torch.randn(1, 2, 3, 4),
        torch.randn(1, 3, 4),
        torch.randn(1, 3, 4),
    )
    dispatcher = modeling_llama.apply_rotary_pos_emb
    for ours, theirs in zip(dispatcher(q, k, cos, sin), dispatcher.hf_rotary(q, k, cos, sin), strict=True):
        assert torch.equal(ours, theirs)


def test_with_torch_ops_a_lean_model_computes_bitwise_what_hf_computes(tiny_varied_model_dir, torch_ops_only):
    hf = load_model(str(tiny_varied_model_dir))
    lean = copy.deepcopy(hf)
    use_lean_activations(lean)
    input_ids = torch.randint(3, hf.config.vocab_size, (3, 9))
    assert torch.equal(lean(input_ids).logits, hf(input_ids).logits)


def test_layer_kernels_fall_back_without_a_compiler(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", "no-such-compiler")
    monkeypatch.setenv("AHA_CACHE_DIR", str(tmp_path))  # no cached build to find either
    load_layer_kernels.cache_clear()
    try:
        assert load_layer_kernels() is None
        assert not kernel_applies(torch.zeros(2))
    finally:
        monkeypatch.undo()
        load_layer_kernels.cache_clear()


@pytest.mark.parametrize(
    "dtype, compiled", [(torch.float32, False), (torch.float32, True), (torch.bfloat16, False)]
)
def test_lean_modules_compute_what_the_hf_modules_compute(dtype, compiled, request, monkeypatch):
    """Bitwise the HF outputs with torch ops; to float32 rounding with the compiled passes. The norm
    followed by the MLP takes the path where gate and up recompute the norm's output in backward."""
    if not compiled:
        request.getfixturevalue("torch_ops_only")
    else:
        require_layer_kernels()
    calls = count_compiled_passes(monkeypatch)
    config = LlamaConfig(hidden_size=16, intermediate_size=40, num_attention_heads=2, mlp_bias=True)
    torch.manual_seed(0)
    norm = LlamaRMSNorm(16, eps=1e-5)
    with torch.no_grad():
        norm.weight.normal_()
    mlp = LlamaMLP(config)
    cases = [(norm, 1), (mlp, 1), (torch.nn.Sequential(copy.deepcopy(norm), copy.deepcopy(mlp)), 2)]
    for hf, switched in cases:
        hf.to(dtype)
        lean = copy.deepcopy(hf)
        assert use_lean_activations(lean) == switched
        x = torch.randn(2, 7, 16, dtype=dtype)
        x_hf, x_lean = x.clone().requires_grad_(), x.clone().requires_grad_()
        out_hf, out_lean = hf(x_hf), lean(x_lean)
        if compiled:
            # a norm over 16 features and SwiGLU's polynomial exp: a few float32 epsilons relative
            # (~4e-7), through one matmul of 40 terms (~sqrt(40) more): rtol 1e-5 is ~3x that; atol for
            # outputs near 0
            torch.testing.assert_close(out_lean, out_hf, rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(out_hf, out_lean)
        grad = torch.randn_like(out_hf)
        out_hf.backward(grad)
        out_lean.backward(grad)
        tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
        torch.testing.assert_close(x_lean.grad, x_hf.grad, **tol)
        for p_lean, p_hf in zip(lean.parameters(), hf.parameters(), strict=True):
            torch.testing.assert_close(p_lean.grad, p_hf.grad, **tol)
    # the path this case claims to test is the one that ran
    expected = {"swiglu_forward", "swiglu_backward", "rms_norm_forward", "rms_norm_backward"}
    assert set(calls) == (expected if compiled else set())


def _saved_bytes(model, input_ids, completion_len) -> tuple[torch.Tensor, int]:
    storages: dict[int, int] = {}

    def pack(t):
        storages.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logprobs = score_completions(model, input_ids, torch.ones_like(input_ids), completion_len).logprobs
    return logprobs, sum(storages.values())


@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
def test_a_lean_model_scores_alike_and_saves_less(
    architecture, tiny_varied_model_dir, tiny_qwen2, monkeypatch
):
    """With the compiled passes where they build here (counted), else with torch's ops."""
    hf = load_model(str(tiny_varied_model_dir)) if architecture == "llama" else tiny_qwen2[0]
    lean = copy.deepcopy(hf)
    config = hf.config
    # two norms, an MLP and the attention per layer, the final norm
    assert use_lean_activations(lean) == 4 * config.num_hidden_layers + 1
    calls = count_compiled_passes(monkeypatch)
    vocab = config.vocab_size
    torch.manual_seed(0)
    prompts = torch.randint(3, vocab, (2, 5)).repeat_interleave(4, 0)  # groups of 4 share a prompt
    input_ids = torch.cat([prompts, torch.randint(3, vocab, (8, 12))], 1)
    lp_hf, saved_hf = _saved_bytes(hf, input_ids, 12)
    lp_lean, saved_lean = _saved_bytes(lean, input_ids, 12)
    assert bool(calls) == (layer_kernels_missing() is None)
    # The bound, from the numerics: the compiled norm sums its `hidden` squares in another order (with
    # -fassociative-math the vector width, AVX2 or AVX-512, sets the order; the threads split the rows)
    # and SwiGLU's exp is a polynomial, so each pass's output differs from torch's by a relative
    # ~sqrt(hidden) float32 epsilons (random-walk rounding of the sum). Each of the 2 * layers + 1 norms
    # and MLPs adds one such relative change to the residual stream, and it reaches the logits and their
    # logsumexp at the scale of the largest logit. Measured: 1.2e-5 (Llama, here) and 1.4e-5 (an AMD EPYC)
    # against this bound's 7.3e-5.
    with torch.no_grad():
        max_logit = float(hf(input_ids).logits.abs().max())
    passes = 2 * config.num_hidden_layers + 1
    eps = torch.finfo(torch.float32).eps
    atol = passes * config.hidden_size**0.5 * eps * max_logit
    torch.testing.assert_close(lp_lean, lp_hf, rtol=0, atol=atol)
    weights = sum(p.numel() * p.element_size() for p in hf.parameters() if p.dim() == 2)
    # Activations only (the weight matrices are saved by reference in both): at least a quarter less.
    assert saved_lean - weights < 0.75 * (saved_hf - weights)
    hf.zero_grad(set_to_none=True)
    for logprobs in (lp_hf, lp_lean):
        (logprobs * torch.linspace(-1, 1, 12)).sum().backward()
    for (name, p_lean), p_hf in zip(lean.named_parameters(), hf.parameters(), strict=True):
        # The same relative change, carried back through the same passes once more (x2), relative to
        # each gradient's largest entry (gradients reach 30 here).
        scale = float(p_hf.grad.abs().max())
        torch.testing.assert_close(
            p_lean.grad, p_hf.grad, rtol=0, atol=2 * atol / max_logit * scale, msg=name
        )
    hf.zero_grad(set_to_none=True)  # the Qwen2 model is shared by the whole session


def test_a_lean_model_keeps_its_classes_weights_and_checkpoint_format(tiny_model_dir, tmp_path):
    model = load_model(str(tiny_model_dir))
    names = list(model.state_dict())
    use_lean_activations(model)
    assert use_lean_activations(model) == 0  # already switched
    assert isinstance(model.model.layers[0].mlp, LlamaMLP)
    assert isinstance(model.model.norm, LlamaRMSNorm)
    assert isinstance(model.model.layers[0].self_attn, modeling_llama.LlamaAttention)
    assert list(model.state_dict()) == names
    model.save_pretrained(tmp_path)
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path)
    assert type(reloaded.model.layers[0].mlp) is LlamaMLP
    assert type(copy.deepcopy(model).model.norm) is type(model.model.norm)


def test_other_activations_are_left_alone():
    mlp = LlamaMLP(LlamaConfig(hidden_size=8, intermediate_size=16, num_attention_heads=2, hidden_act="gelu"))
    assert use_lean_activations(mlp) == 0
    assert type(mlp) is LlamaMLP


@pytest.mark.parametrize("with_bias", [False, True])
def test_projections_of_a_norm_gradients_match_finite_differences(with_bias):
    """norm -> two projections, the projections saving the norm's input and recomputing its output."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    norm_weight = torch.randn(6, dtype=torch.float64, requires_grad=True)
    w1 = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    b1 = torch.randn(4, dtype=torch.float64, requires_grad=True) if with_bias else None

    def norm_then_projections(x, norm_weight, w1, w2, *bias):
        normed = _RMSNorm.apply(x, norm_weight, 1e-6)
        recipe = (x.detach(), norm_weight.detach(), 1e-6, False)
        return _LinearsOfNorm.apply(normed, *recipe, w1, bias[0] if bias else None, w2, None)

    inputs = (x, norm_weight, w1, w2, *([b1] if with_bias else []))
    assert torch.autograd.gradcheck(norm_then_projections, inputs)


@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
def test_a_lean_model_saves_no_norm_output_of_its_layers(architecture, tiny_varied_model_dir, tiny_qwen2):
    """The q, k, v, gate and up projections keep the norm's input (saved by the norm anyway), not its
    output (the LM head keeps a copy of the final norm's last positions)."""
    model = copy.deepcopy(
        load_model(str(tiny_varied_model_dir)) if architecture == "llama" else tiny_qwen2[0]
    )
    use_lean_activations(model)
    norm_outputs: dict[int, str] = {}
    kept = []  # alive until the check, so no saved tensor can reuse a norm output's memory

    def record(name):
        def hook(module, inputs, output):
            kept.append(output)
            norm_outputs[output.untyped_storage().data_ptr()] = name

        return hook

    norms = [(n, m) for n, m in model.named_modules() if type(m).__name__.endswith("RMSNorm")]
    assert len(norms) == 2 * model.config.num_hidden_layers + 1
    for name, module in norms:
        module.register_forward_hook(record(name))
    saved: set[int] = set()

    def pack(t):
        saved.add(t.untyped_storage().data_ptr())
        return t

    torch.manual_seed(0)
    input_ids = torch.randint(3, model.config.vocab_size, (4, 10))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        score_completions(model, input_ids, torch.ones_like(input_ids), 6)
    assert saved and not {norm_outputs[p] for p in saved if p in norm_outputs}
