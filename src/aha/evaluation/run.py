"""`aha eval`: sample n completions for each held-out prompt, judge them with the reward functions, and
write eval.json (accuracy, pass@k, maj@n, per-reward and monitor means, lengths) and completions.jsonl
(every completion with its rewards, so any number in eval.json can be recomputed or inspected)."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from aha.config import ConfigError, config_to_dict
from aha.data.arithmetic import split_train_eval
from aha.data.chat import chat_format
from aha.data.prompts import PromptExample, batch_fields, load_prompt_file
from aha.durable import write_text_atomically
from aha.evaluation.answers import answer_key
from aha.evaluation.config import COMPLETIONS_FILE, RESULTS_FILE, EvalCommand
from aha.evaluation.estimators import default_ks, majority_vote_correct, mean_pass_at_k
from aha.models.loading import load_model, load_tokenizer
from aha.rewards.base import compute_rewards, load_reward_state, state_kept
from aha.rollout import make_engine
from aha.rollout.base import SamplingParams
from aha.track.progress import Progress
from aha.train.checkpoint import checkpoint_extra_state
from aha.train.common_config import resolve_device
from aha.train.monitors import REWARD_STATE_KEY as MONITOR_STATE_KEY
from aha.train.precision import Precision, rollout_precision
from aha.train.rl_loop import REWARD_STATE_KEY
from aha.train.session import seed_everything


@dataclass
class EvalReport:
    output_dir: Path
    results: dict[str, Any]  # what eval.json holds
    completions: list[dict[str, Any]]  # what completions.jsonl holds, one per completion


def run_eval(cfg: EvalCommand) -> EvalReport:
    """Evaluate `cfg.model.path` as configured and write the results (see the module docstring)."""
    started = time.perf_counter()
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    seed_everything(cfg.run.seed)
    device = resolve_device(cfg.model.device)
    path = str(cfg.model.path)
    tokenizer = load_tokenizer(path, trust_remote_code=cfg.model.trust_remote_code)
    model = load_model(path, "float32", device, trust_remote_code=cfg.model.trust_remote_code).eval()
    sampling = rollout_precision(cfg.rollout.dtype, Precision(cfg.model.precision, device))
    examples = held_out_prompts(cfg)
    chat = chat_format(cfg.data.chat_template, cfg.data.system_prompt, tokenizer, examples)
    examples = chat.apply(examples, tokenizer)
    engine = make_engine(cfg.rollout.engine, model, tokenizer, add_special_tokens=chat.add_special_tokens)
    rewards, monitors = cfg.rewards.specs(), cfg.rewards.monitor_specs()
    _load_checkpointed_reward_state(path, rewards, monitors)
    on_error = "raise" if cfg.rewards.error_fallback is None else cfg.rewards.error_fallback

    n = cfg.eval.samples
    rows = [(i, s) for i in range(len(examples)) for s in range(n)]  # (prompt index, sample index)
    records: list[dict[str, Any]] = []
    batches = range(0, len(rows), cfg.eval.batch_size)
    with Progress(len(batches), "eval", enabled=cfg.run.progress) as progress:
        for number, start in enumerate(batches, 1):
            chunk = rows[start : start + cfg.eval.batch_size]
            chunk_examples = [examples[i] for i, _ in chunk]
            prompts = [ex.prompt for ex in chunk_examples]
            params = _sampling_params(cfg, seed=cfg.run.seed + number - 1)  # batch 1: the run's own eval seed
            with torch.no_grad(), sampling.autocast():
                out = engine.generate(prompts, params)
            fields = batch_fields(chunk_examples)
            with state_kept([*rewards, *monitors]):  # every batch is scored with the same statistics
                scored = compute_rewards(rewards, prompts, out.completions, fields, on_error=on_error)
                watched = compute_rewards(monitors, prompts, out.completions, fields) if monitors else None
            lengths = out.completion_mask.sum(1).tolist()
            for j, (i, s) in enumerate(chunk):
                total = float(scored.total[j])
                record = {
                    "prompt_index": i,
                    "sample": s,
                    "prompt": prompts[j],
                    "completion": out.completions[j],
                    "reward": total,
                    "rewards": {name: float(v[j]) for name, v in scored.per_fn.items()},
                    "correct": total >= cfg.eval.success_threshold,
                    "length": int(lengths[j]),
                    "truncated": bool(out.truncated[j]),
                }
                if watched is not None:
                    record["monitors"] = {name: float(v[j]) for name, v in watched.per_fn.items()}
                if cfg.eval.vote != "off":
                    record["answer"] = answer_key(out.completions[j], cfg.eval.vote)
                records.append(record)
            done = min(start + cfg.eval.batch_size, len(rows))
            progress.update(number, acc=sum(r["correct"] for r in records) / done, done=done)

    results = {
        "model": path,
        "from_run": cfg.from_run,
        **summarize(records, len(examples), n, cfg.eval.pass_k or default_ks(n), cfg.eval.vote),
        "wall_s": time.perf_counter() - started,
        "config": config_to_dict(cfg),
    }
    output_dir = Path(cfg.run.output_dir or "runs/eval")
    write_results(output_dir, results, records)
    print(_headline(results, output_dir), file=sys.stderr)
    return EvalReport(output_dir, results, records)


def held_out_prompts(cfg: EvalCommand) -> list[PromptExample]:
    """data.eval_file, else the built-in arithmetic task's held-out set (the split training used, for
    the same seed and sizes); the first eval.num_prompts of them when that is set."""
    data = cfg.data
    if data.eval_file is not None:
        examples = load_prompt_file(data.eval_file, prompt_field=data.prompt_field)
    elif data.train_file is None:
        _, examples = split_train_eval(
            data.arithmetic_train_size,
            data.arithmetic_eval_size,
            digits=data.arithmetic_digits,
            seed=cfg.run.seed,
        )
    else:
        raise ConfigError("data.eval_file: no held-out prompts; set data.eval_file to a prompt file")
    if not examples:
        raise ConfigError(f"data.eval_file: {data.eval_file} holds no prompts")
    return examples[: cfg.eval.num_prompts] if cfg.eval.num_prompts else examples


def summarize(
    records: list[dict[str, Any]], num_prompts: int, n: int, ks: list[int], vote: str
) -> dict[str, Any]:
    """The numbers of eval.json from the per-completion records (prompt i's samples share prompt_index)."""
    correct_per_prompt = [0] * num_prompts
    for r in records:
        correct_per_prompt[r["prompt_index"]] += r["correct"]
    count = len(records)
    results: dict[str, Any] = {
        "prompts": num_prompts,
        "samples_per_prompt": n,
        "completions": count,
        "accuracy": sum(r["correct"] for r in records) / count,
        "pass@k": {str(k): mean_pass_at_k(correct_per_prompt, n, k) for k in sorted(set(ks))},
        "reward_mean": sum(r["reward"] for r in records) / count,
        "rewards": _means([r["rewards"] for r in records]),
        "length_mean": sum(r["length"] for r in records) / count,
        "truncated_frac": sum(r["truncated"] for r in records) / count,
    }
    if records and "monitors" in records[0]:
        results["monitors"] = _means([r["monitors"] for r in records])
    if vote != "off":
        by_prompt: list[list[dict[str, Any]]] = [[] for _ in range(num_prompts)]
        for r in records:
            by_prompt[r["prompt_index"]].append(r)
        voted = [
            majority_vote_correct([r["answer"] for r in group], [r["correct"] for r in group])
            for group in by_prompt
        ]
        results[f"maj@{n}"] = sum(voted) / num_prompts
        results["no_answer_frac"] = sum(r["answer"] is None for r in records) / count
    return results


def write_results(output_dir: Path, results: dict[str, Any], records: list[dict[str, Any]]) -> None:
    """eval.json and completions.jsonl, each written whole or not at all (a re-run replaces them)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    write_text_atomically(output_dir / COMPLETIONS_FILE, lines)
    write_text_atomically(output_dir / RESULTS_FILE, json.dumps(results, indent=2) + "\n")


def _load_checkpointed_reward_state(path: str, rewards: list, monitors: list) -> None:
    """A run's checkpoint holds its rewards' and monitors' own state (a reward model's running
    normalisation): evaluate with it, as the run's own evaluations did."""
    if not (Path(path) / "trainer_state.json").is_file():  # not a run's checkpoint
        return
    extra = checkpoint_extra_state(path)
    load_reward_state(rewards, extra.get(REWARD_STATE_KEY, {}), f"{path}/extra.pt")
    load_reward_state(monitors, extra.get(MONITOR_STATE_KEY, {}), f"{path}/extra.pt (rewards.monitors)")


def _sampling_params(cfg: EvalCommand, seed: int) -> SamplingParams:
    return SamplingParams(
        max_new_tokens=cfg.rollout.max_new_tokens,
        temperature=cfg.rollout.temperature,
        top_p=cfg.rollout.top_p,
        top_k=cfg.rollout.top_k,
        stop_strings=tuple(cfg.rollout.stop_strings),
        seed=seed,
    )


def _means(rows: list[dict[str, float]]) -> dict[str, float]:
    return {name: sum(row[name] for row in rows) / len(rows) for name in rows[0]} if rows else {}


def _headline(results: dict[str, Any], output_dir: Path) -> str:
    parts = [f"accuracy {results['accuracy']:.1%}"]
    parts += [f"pass@{k} {v:.1%}" for k, v in results["pass@k"].items() if k != "1"]
    parts += [f"{key} {value:.1%}" for key, value in results.items() if key.startswith("maj@")]
    return (
        f"aha eval: {results['prompts']} prompts x {results['samples_per_prompt']} samples: "
        f"{', '.join(parts)} -> {output_dir / RESULTS_FILE}"
    )
