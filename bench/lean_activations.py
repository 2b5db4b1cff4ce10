"""Lean activations against HF's modules: the bytes the policy's forward saves for backward, and the
forward+backward time with torch's ops and with the compiled passes.

The policy pass of a GRPO step, as the trainer runs it (`score_completions`, groups sharing a prompt), on
the grpo_vs_trl models (random init) and its batch: 4 prompts x 8 completions, 6 prompt tokens and
`--new-tokens` completion tokens. Three variants of the same weights:

- *hf*: HF's MLP, RMSNorm and attention modules;
- *lean, torch ops*: `use_lean_activations` with the compiled passes off (`AHA_TRAIN_KERNELS=0`);
- *lean, compiled*: with the compiled SwiGLU, RMSNorm and rotary passes (where they build here).

Saved bytes: every distinct storage the autograd graph keeps (a saved-tensors hook), activations alone
(the weight matrices are saved by reference in every variant) and with the weights. Time: forward and
backward of a fixed weighted sum of the log-probs, the variants in turns (A, B, C, then C, B, A, ...),
median of `--repeats`.

    python bench/lean_activations.py           # 3M and 25M, ~2 min on 2 cores
    python bench/lean_activations.py --quick   # the toy model, 2 repeats (the test)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from _hardware import load_average, machine_description  # noqa: E402

DEFAULT_OUT = Path(__file__).parent / "results" / "lean_activations.json"
VARIANTS = ("hf", "lean_torch_ops", "lean_compiled")


def _set_compiled(on: bool) -> bool:
    """Turn the compiled passes on or off for the lean modules; whether they run."""
    from aha.kernels.layer_kernels import load_layer_kernels

    os.environ["AHA_TRAIN_KERNELS"] = "1" if on else "0"
    load_layer_kernels.cache_clear()
    return load_layer_kernels() is not None


def _policy_pass(model, input_ids: torch.Tensor, completion_len: int, backward: bool) -> tuple[float, int]:
    """Seconds of one forward (+ backward) of the policy's scores, and the bytes saved for backward."""
    from aha.models.forward import score_completions

    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        return t

    weights = torch.linspace(-1, 1, completion_len)
    model.zero_grad(set_to_none=True)
    started = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logprobs = score_completions(model, input_ids, torch.ones_like(input_ids), completion_len).logprobs
    if backward:
        (logprobs * weights).sum().backward()
    return time.perf_counter() - started, sum(storages.values())


def measure(model, input_ids: torch.Tensor, completion_len: int, repeats: int) -> dict:
    """Saved bytes and forward+backward seconds of each variant; `model` has HF's modules."""
    from aha.models.lean_activations import use_lean_activations

    lean = copy.deepcopy(model)
    use_lean_activations(lean)
    models = {"hf": model, "lean_torch_ops": lean, "lean_compiled": lean}
    compiled_runs = _set_compiled(True)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.dim() == 2)
    saved, seconds = {}, {name: [] for name in VARIANTS}
    for name in VARIANTS:  # once each untimed: warm-up, and the bytes saved
        _set_compiled(name == "lean_compiled")
        saved[name] = _policy_pass(models[name], input_ids, completion_len, backward=False)[1]
    for repeat in range(repeats):
        for name in VARIANTS if repeat % 2 == 0 else reversed(VARIANTS):
            _set_compiled(name == "lean_compiled")
            seconds[name].append(_policy_pass(models[name], input_ids, completion_len, backward=True)[0])
    _set_compiled(True)
    medians = {name: statistics.median(s) for name, s in seconds.items()}
    activations = {name: saved[name] - weight_bytes for name in VARIANTS}
    return {
        "compiled_passes_ran": compiled_runs,
        "saved_bytes": saved,
        "weight_bytes": weight_bytes,
        "activation_bytes": activations,
        "activation_bytes_lean_over_hf": activations["lean_torch_ops"] / activations["hf"],
        "saved_bytes_lean_over_hf": saved["lean_torch_ops"] / saved["hf"],
        "seconds": seconds,
        "seconds_median": medians,
        "time_lean_torch_ops_over_hf": medians["lean_torch_ops"] / medians["hf"],
        "time_compiled_over_torch_ops": medians["lean_compiled"] / medians["lean_torch_ops"],
    }


def _bench_batch(size: str, workdir: Path, seed: int, group_size: int, groups: int, new_tokens: int):
    """The grpo_vs_trl model of `size` and a batch of its prompts, each repeated `group_size` times,
    followed by random completion tokens."""
    from grpo_vs_trl import SIZES, addition_prompts, build_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir, *_ = build_model(SIZES[size], workdir / f"model-{size}", seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompts = [row["prompt"] for row in addition_prompts(groups, seed)]
    prompt_ids = tokenizer(prompts, return_tensors="pt")["input_ids"].repeat_interleave(group_size, 0)
    generator = torch.Generator().manual_seed(seed)
    vocab = len(tokenizer)
    completions = torch.randint(3, vocab, (prompt_ids.shape[0], new_tokens), generator=generator)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return SIZES[size].name, model, torch.cat([prompt_ids, completions], 1)


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| model | activations saved, lean / HF (MiB) | ratio | with weights (MiB) | fwd+bwd s: HF "
        "| lean, torch ops | lean, compiled | torch ops / HF | compiled / torch ops |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    mib = 2**20
    for r in rows:
        a, s, t = r["activation_bytes"], r["saved_bytes"], r["seconds_median"]
        lines.append(
            f"| {r['model']} | {a['lean_torch_ops'] / mib:.0f} / {a['hf'] / mib:.0f} "
            f"| {r['activation_bytes_lean_over_hf']:.2f} | {s['lean_torch_ops'] / mib:.0f} / {s['hf'] / mib:.0f} "
            f"| {t['hf']:.3f} | {t['lean_torch_ops']:.3f} | {t['lean_compiled']:.3f} "
            f"| {r['time_lean_torch_ops_over_hf']:.2f} | {r['time_compiled_over_torch_ops']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", nargs="+", default=["3m", "25m"], help="grpo_vs_trl model sizes")
    parser.add_argument("--groups", type=int, default=4, help="distinct prompts (the GRPO bench's 4)")
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--quick", action="store_true", help="the toy model, 8 tokens, 2 repeats")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.new_tokens, args.repeats = ["toy"], 8, 2
    torch.set_num_threads(args.threads)
    load_start = load_average()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            name, model, input_ids = _bench_batch(
                size, Path(tmp), args.seed, args.group_size, args.groups, args.new_tokens
            )
            rows.append({"model": name, **measure(model, input_ids, args.new_tokens, args.repeats)})
    table = markdown_table(rows)
    print(table)
    result = {
        "command": " ".join(["python bench/lean_activations.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine_description(),
        # other processes' load slows the timed passes (not the saved bytes): quote times from quiet runs
        "load_average_start": load_start,
        "load_average_end": load_average(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "rows": rows,
        "table": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
