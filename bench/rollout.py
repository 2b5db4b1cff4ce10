"""aha's native sampler against `transformers` `model.generate` (what TRL's GRPO trainer samples with).

Two scenarios on the same tiny Llamas (~3M and ~25M parameters, the sizes of grpo_vs_trl.py), prompts in
the format of aha's arithmetic task (mixed lengths, so left padding is exercised), temperature 1:

- forced: distinct prompts, every completion exactly `--new-tokens` tokens (min_new_tokens =
  max_new_tokens) so both sides do identical work; baseline raw `model.generate`. The native sampler
  also runs with its torch decoding step instead of the compiled one (`decode="torch"`), to show what
  the kernel adds.
- grpo: each prompt 8 times, completions ending at stop strings after varying lengths (up to 2 x
  `--new-tokens`), log-probs returned; baseline the `generate` engine (HFGenerateEngine). Tokens/s
  counts the completion tokens each side actually produced.

Batch 32 and 256, fp32 on CPU with `--threads` torch threads. Everything runs in this one process, timed
in alternating turns after a warm-up; tokens/s are medians over repeats, the speedup is the median of
per-repeat ratios.

    python bench/rollout.py                                  # full run: bench/results/rollout.json + docs page
    python bench/rollout.py --quick --out /tmp/rollout.json  # one tiny repeat: checks the script runs
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
# Idle OpenMP threads sleep rather than spin (set before torch loads; an explicit setting wins). On a
# shared machine spinning threads fight other processes for the cores and per-token decoding, made of
# many small ops, slows down by 10x or more, for both sides alike; it is recorded in the results.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from _common_timing import median, time_interleaved  # noqa: E402
from _hardware import load_average, machine_description  # noqa: E402

from aha.models.loading import load_model, load_tokenizer  # noqa: E402
from aha.models.tiny import TinyModelSpec, create_tiny_model  # noqa: E402
from aha.rollout.base import SamplingParams  # noqa: E402
from aha.rollout.hf_generate import HFGenerateEngine  # noqa: E402
from aha.rollout.native import NativeSampler  # noqa: E402

SIZES = {
    "3m": TinyModelSpec(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=688),
    "25m": TinyModelSpec(hidden_size=512, num_layers=8, num_heads=8, intermediate_size=1376),
    "toy": TinyModelSpec(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64),  # --quick only
}


DEFAULT_OUT = BENCH_DIR / "results" / "rollout.json"
GROUP_SIZE = 8  # completions per prompt in the "grpo" scenario
GRPO_STOP_STRINGS = ("+", "-", "*", "=")  # ~4% of a random tiny model's draws: lengths vary, long tail


@dataclass
class Result:
    scenario: str
    model: str
    params: int
    batch: int
    max_new_tokens: int
    native_tokens_per_s: float  # median over repeats of completion tokens / seconds
    generate_tokens_per_s: float
    speedup: float  # median over repeats of native tokens/s / generate tokens/s
    native_s: list[float]
    generate_s: list[float]
    native_tokens: list[int]
    generate_tokens: list[int]
    torch_step_tokens_per_s: float | None = None  # forced only: the native sampler with decode="torch"
    kernel_speedup: float | None = None  # median over repeats of native / torch-step tokens/s


def make_prompts(count: int, seed: int) -> list[str]:
    """Problems in the format of aha's built-in arithmetic task ("12+345="), 1-3 digit operands, so prompt
    lengths vary from 4 to 8 tokens (one token per character with the tiny tokenizer)."""
    rng = random.Random(seed)

    def operand() -> int:
        return rng.randint(0, 10 ** rng.randint(1, 3) - 1)

    return [f"{operand()}{rng.choice('+-*')}{operand()}=" for _ in range(count)]


def forced_runs(model, tokenizer, batch: int, new_tokens: int) -> dict[str, Callable[[int], int]]:
    """Distinct prompts, exactly `new_tokens` per completion; the baseline is raw `model.generate`,
    as TRL's GRPO trainer calls it. Each run takes a token count and returns the tokens produced."""
    prompts = make_prompts(batch, seed=batch)

    def native(decode: str) -> Callable[[int], int]:
        sampler = NativeSampler(model, tokenizer, decode=decode)

        def call(tokens: int) -> int:
            params = SamplingParams(max_new_tokens=tokens, min_new_tokens=tokens, temperature=1.0, seed=0)
            mask = sampler.generate(prompts, params).completion_mask
            if mask.shape != (batch, tokens) or not bool(mask.all()):
                raise RuntimeError(
                    f"native did not produce exactly {tokens} tokens for each of {batch} prompts"
                )
            return int(mask.sum())

        return call

    def generate(tokens: int) -> int:
        enc = tokenizer(prompts, padding=True, padding_side="left", return_tensors="pt")
        with torch.no_grad():
            out = model.generate(
                **enc,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                pad_token_id=tokenizer.pad_token_id,
            )
        new = out.shape[1] - enc["input_ids"].shape[1]
        if new != tokens:
            raise RuntimeError(f"generate produced {new} tokens per row, not {tokens}")
        return batch * new

    return {"native": native("kernel"), "native_torch_step": native("torch"), "generate": generate}


def grpo_runs(model, tokenizer, batch: int, new_tokens: int) -> dict[str, Callable[[int], int]]:
    """What a GRPO step asks for: each prompt `GROUP_SIZE` times, completions that end at a stop string
    after a varying number of tokens (up to 2 x `new_tokens`), log-probs included. The baseline is the
    `generate` engine (`model.generate` with `stop_strings`, log-probs from its logits)."""
    unique = make_prompts(batch // GROUP_SIZE, seed=batch)
    prompts = [p for p in unique for _ in range(GROUP_SIZE)]
    engines = {"native": NativeSampler(model, tokenizer), "generate": HFGenerateEngine(model, tokenizer)}

    def run(name: str) -> Callable[[int], int]:
        def call(tokens: int) -> int:
            params = SamplingParams(
                max_new_tokens=2 * tokens, temperature=1.0, stop_strings=GRPO_STOP_STRINGS, seed=0
            )
            return int(engines[name].generate(prompts, params).completion_mask.sum())

        return call

    return {name: run(name) for name in engines}


SCENARIOS = {"forced": forced_runs, "grpo": grpo_runs}


def bench_one(
    scenario: str, name: str, spec: TinyModelSpec, batch: int, new_tokens: int, repeats: int, work_dir: Path
) -> Result:
    model_dir = work_dir / name
    if not model_dir.exists():
        create_tiny_model(model_dir, spec, seed=0)
    model, tokenizer = load_model(str(model_dir)), load_tokenizer(str(model_dir))
    model.eval()
    runs = SCENARIOS[scenario](model, tokenizer, batch, new_tokens)
    produced: dict[str, list[int]] = {run: [] for run in runs}

    def timed(run: str) -> Callable[[], None]:
        return lambda: produced[run].append(runs[run](new_tokens))

    warmup_tokens = min(new_tokens, 8)
    seconds = time_interleaved(
        {run: timed(run) for run in runs},
        repeats=repeats,
        warmups={run: (lambda run=run: runs[run](warmup_tokens)) for run in runs},
    )
    rates = {run: [n / s for n, s in zip(produced[run], seconds[run], strict=True)] for run in runs}
    torch_step = rates.get("native_torch_step")
    return Result(
        scenario=scenario,
        model=name,
        params=sum(p.numel() for p in model.parameters()),
        batch=batch,
        max_new_tokens=new_tokens if scenario == "forced" else 2 * new_tokens,
        native_tokens_per_s=median(rates["native"]),
        generate_tokens_per_s=median(rates["generate"]),
        speedup=median([n / g for n, g in zip(rates["native"], rates["generate"], strict=True)]),
        native_s=seconds["native"],
        generate_s=seconds["generate"],
        native_tokens=produced["native"],
        generate_tokens=produced["generate"],
        torch_step_tokens_per_s=median(torch_step) if torch_step else None,
        kernel_speedup=median([n / t for n, t in zip(rates["native"], torch_step, strict=True)])
        if torch_step
        else None,
    )


def markdown_table(results: list[Result]) -> str:
    lines = [
        "| scenario | model | params | batch | native tokens/s | generate tokens/s | speedup |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.scenario} | {r.model} | {r.params / 1e6:.2f}M | {r.batch} | {r.native_tokens_per_s:,.0f} "
            f"| {r.generate_tokens_per_s:,.0f} | {r.speedup:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=None, help=f"results JSON (default {DEFAULT_OUT})")
    parser.add_argument("--no-report", action="store_true", help="do not regenerate docs/benchmarks.md")
    parser.add_argument(
        "--scenarios", default="forced,grpo", help=f"comma-separated, from {sorted(SCENARIOS)}"
    )
    parser.add_argument("--sizes", default="3m,25m", help=f"comma-separated, from {sorted(SIZES)}")
    parser.add_argument("--batches", default="32,256", help="comma-separated batch sizes")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="toy model, batch 4, 8 tokens, one repeat")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.batches, args.new_tokens, args.repeats = "toy", "8", 8, 1
        args.no_report = True
        if args.out is None:
            parser.error("--quick needs --out (it must not overwrite the committed results)")
    sizes, scenarios = args.sizes.split(","), args.scenarios.split(",")
    for flag, given, known in (("--sizes", sizes, SIZES), ("--scenarios", scenarios, SCENARIOS)):
        if unknown := [x for x in given if x not in known]:
            parser.error(f"{flag}: unknown {unknown}; choose from {sorted(known)}")
    batches = [int(b) for b in args.batches.split(",")]
    if "grpo" in scenarios and any(b % GROUP_SIZE for b in batches):
        parser.error(f"--batches must be multiples of the group size {GROUP_SIZE} for the grpo scenario")
    torch.set_num_threads(args.threads)

    started = time.time()
    load_before = load_average()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for scenario in scenarios:
            for size in sizes:
                for batch in batches:
                    result = bench_one(
                        scenario, size, SIZES[size], batch, args.new_tokens, args.repeats, Path(tmp)
                    )
                    gain = f", kernel gain {result.kernel_speedup:.2f}x" if result.kernel_speedup else ""
                    print(f"{scenario} {size} batch {batch}: speedup {result.speedup:.2f}x{gain}", flush=True)
                    results.append(result)
    results_json = {
        "benchmark": "rollout",
        "command": " ".join(["python bench/rollout.py", *(argv if argv is not None else sys.argv[1:])]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "duration_s": time.time() - started,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": machine_description(),
        "omp_wait_policy": os.environ["OMP_WAIT_POLICY"],
        "load_average_start": load_before,
        "load_average_end": load_average(),
        "results": [asdict(r) for r in results],
    }
    import report

    report.save_results(results_json, args.out or DEFAULT_OUT, regenerate_page=not args.no_report)
    print(markdown_table(results))


if __name__ == "__main__":
    main()
