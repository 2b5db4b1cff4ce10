"""Reward models from human rankings: `aha rm`.

A scalar-head model (aha.models.scalar_head) learns to score (prompt, response) so that better-ranked
responses score higher: Bradley-Terry on pairs (with each pair's margin, if the file gives one), the
InstructGPT K-wise loss on rankings (every ranking one example), plus an optional centering term.
Every evaluation logs held-out pairwise accuracy, the mean score margin of the better response, and
calibration (expected calibration error of sigmoid(score difference), bins in calibration.jsonl).
`head.pooling` chooses where the score is read and `train.freeze_layers` which layers train; with the
whole backbone frozen, each training response's pooled vector is computed once and only the head trains.

Under torchrun (dist.strategy ddp or fsdp2) each rank takes its contiguous share of every batch's
rankings; its loss terms are weighted by its share of the batch's rankings and responses
(`rank_scaled_ranking_loss`), so the averaged gradient is the one-process gradient. Every rank scores
the whole held-out set (on gathered weights under fsdp2); rank 0 writes metrics, calibration, checkpoints
and final/.

The run directory holds config.yaml, metrics.jsonl, calibration.jsonl, checkpoints/ (for --resume),
plots.png and final/: the model and tokenizer plus reward_model.json (text format and the held-out
score mean/std), which the `reward_model` reward loads (aha.models.reward_scorer.RewardScorer).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from aha.algos.calibration import calibration_bins, expected_calibration_error, pairwise_accuracy
from aha.algos.ranking import bradley_terry_loss, centering_loss, kwise_ranking_loss
from aha.config import ConfigError, option
from aha.data.preferences import FORMATS, Ranking, load_preferences, split_by_prompt
from aha.data.prompts import PromptExample
from aha.dist.env import shard
from aha.dist.reduce import rank_weight, reduce_metrics, sum_across_ranks
from aha.dist.wrap import full_state_dict, full_weights, is_sharded
from aha.models.loading import save_model_atomically
from aha.models.reward_scorer import TextFormat, encode_texts, pad_id_of, pad_right, score_ids, write_meta
from aha.models.scalar_head import (
    POOLINGS,
    freeze_lower_layers,
    linear_head,
    load_scalar_model,
    pooled_hidden,
    reads_hidden_state,
    sequence_scores,
    set_pooling,
    through_hooks,
)
from aha.track.jsonl import read_jsonl, to_json_value
from aha.track.plots import plot_metrics
from aha.train.common_config import DistConfig, ModelConfig, OptimConfig, RunConfig, TrackingConfig
from aha.train.nonfinite import ON_NONFINITE, ON_NONFINITE_HELP, NonFiniteGuard
from aha.train.session import TrainingSession, cut_jsonl


@dataclass
class RMDataConfig:
    train_file: str = option(help="Preference file (JSONL, optionally .gz) in `format`.")
    format: str = option("pairs", choices=FORMATS, help="pairs, rankings (K-wise, best first) or hh-rlhf.")
    eval_file: str | None = option(None, help="Held-out preferences (same format). None = split train_file.")
    held_out_fraction: float = option(
        0.2, help="Without eval_file: the share of prompts held out (a fixed split by prompt hash and seed)."
    )
    prompt_template: str = option(
        "{prompt}",
        help='The text before the response; {prompt} is replaced by the record\'s prompt. "" scores the '
        "response alone.",
    )
    max_length: int = option(512, help="Tokens per prompt + response; longer texts lose their start.")

    def validate(self) -> None:
        if not 0 < self.held_out_fraction < 1:
            raise ConfigError("held_out_fraction must be in (0, 1)")
        if self.max_length < 2:
            raise ConfigError("max_length must be >= 2")


@dataclass
class RMTrainConfig:
    steps: int = option(0, help="Optimizer steps (0 = run `epochs` passes over the training rankings).")
    epochs: float = option(1.0, help="Passes over the training rankings when steps = 0.")
    batch_size: int = option(16, help="Rankings (pairs) per optimizer step.")
    center_coef: float = option(
        0.0, help="Weight of the centering term mean(score^2): keeps scores near zero (e.g. 0.01)."
    )
    freeze_layers: int = option(
        0,
        help="Freeze the input embeddings and the lowest N transformer blocks (0 = train every weight): "
        "no backward pass below the top blocks, so each step is cheaper. -1 (or N = all blocks) freezes "
        "the whole backbone: only the head trains, and with a linear head on one pooled vector (head.pooling"
        "=mean, or a decoder) each training response's vector is computed once and cached.",
    )
    on_nonfinite: str = option("stop", choices=ON_NONFINITE, help=ON_NONFINITE_HELP)

    def validate(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or self.center_coef < 0 or self.freeze_layers < -1:
            raise ConfigError("need steps >= 0, batch_size >= 1, center_coef >= 0 and freeze_layers >= -1")
        if self.steps == 0 and self.epochs <= 0:
            raise ConfigError("set steps > 0 or epochs > 0")


@dataclass
class RMEvalConfig:
    every: int = option(0, help="Evaluate on the held-out set every N steps (0 = only at the end).")
    at_start: bool = option(True, help="Also evaluate before the first step (the untrained baseline).")
    batch_size: int = option(64, help="Responses per forward pass when scoring.")
    bins: int = option(10, help="Calibration bins of P(chosen) = sigmoid(score difference).")


@dataclass
class RMHeadConfig:
    pooling: str = option(
        "auto",
        choices=POOLINGS,
        help="Where the score is read: auto (decoders: the last real token; encoders: the model's own "
        "head at [CLS]) or mean (masked mean of the last hidden states, then a linear head: the readout "
        "sentence-embedding encoders such as all-MiniLM were trained for). Saved with the model.",
    )


@dataclass
class RMRunConfig:
    model: ModelConfig = option(
        default_factory=lambda: ModelConfig(path="runs/tiny-model", lean_activations=False),
        help="The backbone: any encoder or decoder checkpoint; a one-output head is added.",
    )
    data: RMDataConfig = option(
        default_factory=lambda: RMDataConfig(train_file="data/preferences.jsonl"), help="Preferences."
    )
    head: RMHeadConfig = option(default_factory=RMHeadConfig, help="How the score is read.")
    train: RMTrainConfig = option(
        default_factory=RMTrainConfig, help="Steps, batch size, centering, frozen layers."
    )
    optim: OptimConfig = option(
        default_factory=lambda: OptimConfig(lr=2e-5, warmup_steps=0, schedule="linear"),
        help="AdamW and the learning-rate schedule.",
    )
    eval: RMEvalConfig = option(default_factory=RMEvalConfig, help="Held-out accuracy and calibration.")
    track: TrackingConfig = option(
        default_factory=TrackingConfig, help="TensorBoard and W&B next to metrics.jsonl."
    )
    run: RunConfig = option(
        default_factory=lambda: RunConfig(output_dir="runs/rm"), help="Run directory, seed, checkpoints."
    )
    dist: DistConfig = option(default_factory=DistConfig, help="Several processes under torchrun.")

    def validate(self) -> None:
        if self.model.lora.r:
            raise ConfigError("model.lora: reward models train every weight for now; set model.lora.r=0")
        if self.model.lean_activations:
            raise ConfigError("model.lean_activations applies to causal-LM training only; set it false")


@dataclass
class RMResult:
    run_dir: Path
    final_dir: Path
    history: list[dict]
    final_eval: dict[str, float]
    eval_scores: torch.Tensor  # every held-out response's final score, ranking-major, file order


@dataclass
class EncodedRanking:
    rows: list[list[int]]  # token ids per response, best first
    ties: tuple[int, ...]
    margin: float | None
    subset: str = ""


def encode_rankings(tokenizer, rankings: list[Ranking], fmt: TextFormat) -> list[EncodedRanking]:
    prompts = [r.prompt for r in rankings for _ in r.responses]
    responses = [resp for r in rankings for resp in r.responses]
    flat = iter(encode_texts(tokenizer, prompts, responses, fmt))
    return [EncodedRanking([next(flat) for _ in r.responses], r.ties, r.margin, r.subset) for r in rankings]


def rank_scaled_ranking_loss(
    scores: torch.Tensor, batch: list[EncodedRanking], center_coef: float
) -> tuple[torch.Tensor, float]:
    """(the loss to backpropagate, the whole batch's loss) for this rank's share of a batch. The ranking
    term is a mean over rankings (those with an untied pair) and the centering term a mean over
    responses, so each is weighted by this rank's share of its own count (`rank_weight`): the gradient
    averaged over ranks is then the one-process gradient. In a single process: (the batch's loss, its value).
    A collective: every rank calls it at the same point."""
    ranking, center = ranking_terms(scores, batch)
    counted = len(batch) if _has_margins(batch) else sum(_has_untied_pair(r) for r in batch)
    loss = ranking * rank_weight(float(counted))
    if center_coef:
        loss = loss + center_coef * center * rank_weight(float(sum(len(r.rows) for r in batch)))
    return loss, reduce_metrics({"loss": loss.item()})["loss"]


def _has_margins(batch: list[EncodedRanking]) -> bool:
    return any(r.margin is not None for r in batch)  # pairs with margins (only pairs carry them)


def _has_untied_pair(r: EncodedRanking) -> bool:
    return len(set(r.ties)) > 1


def batch_pair_accuracy(scores: torch.Tensor, batch: list[EncodedRanking]) -> float:
    """The share of the batch's untied pairs whose better response scores higher, over every rank's
    share of the batch (a collective)."""
    better, worse = ordered_pairs(batch, scores.detach())
    right = sum_across_ranks(float((better > worse).sum()))
    return right / max(sum_across_ranks(float(len(better))), 1.0)


def ranking_terms(scores: torch.Tensor, batch: list[EncodedRanking]) -> tuple[torch.Tensor, torch.Tensor]:
    """(the ranking loss, the centering term mean(score^2) over responses) of one batch, given the flat
    scores of its responses (ranking-major order)."""
    K = max(len(r.rows) for r in batch)
    grid = torch.zeros(len(batch), K, device=scores.device)
    mask = torch.zeros(len(batch), K, dtype=torch.bool, device=scores.device)
    ties = torch.full((len(batch), K), K, device=scores.device)
    start = 0
    for b, r in enumerate(batch):
        k = len(r.rows)
        grid[b, :k] = scores[start : start + k]
        mask[b, :k] = True
        ties[b, :k] = torch.tensor(r.ties, device=scores.device)
        start += k
    if _has_margins(batch):
        margin = torch.tensor([r.margin or 0.0 for r in batch], device=scores.device)
        loss = bradley_terry_loss(grid[:, 0], grid[:, 1], margin)
    else:
        loss = kwise_ranking_loss(grid, mask, ties)
    return loss, centering_loss(grid, mask)


def ordered_pairs(rankings: list[EncodedRanking], scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(better, worse) scores of every untied pair of every ranking."""
    better, worse, start = [], [], 0
    for r in rankings:
        k = len(r.rows)
        for i in range(k):
            for j in range(k):
                if r.ties[i] < r.ties[j]:
                    better.append(start + i)
                    worse.append(start + j)
        start += k
    return scores[better], scores[worse]


def evaluate_rankings(
    model, rankings: list[EncodedRanking], pad_id: int, batch_size: int, device: str, bins: int
) -> tuple[dict[str, float], list[dict], torch.Tensor]:
    """Held-out metrics, calibration bins, and every response's score (flat, ranking-major)."""
    scores = score_ids(model, [row for r in rankings for row in r.rows], pad_id, batch_size, device)
    better, worse = ordered_pairs(rankings, scores)
    calib = calibration_bins(better, worse, bins)
    metrics = {
        "eval/accuracy": pairwise_accuracy(better, worse),
        "eval/margin": float((better - worse).mean()),
        "eval/ece": expected_calibration_error(calib),
        "eval/score_mean": float(scores.mean()),
        "eval/score_std": float(scores.std()),
        "eval/pairs": float(len(better)),
    }
    metrics.update(subset_metrics(rankings, scores))
    return metrics, calib, scores


def subset_metrics(rankings: list[EncodedRanking], scores: torch.Tensor) -> dict[str, float]:
    """eval/accuracy/<subset> and eval/pairs/<subset> when the held-out rankings name two or more subsets."""
    names = sorted({r.subset for r in rankings})
    if len(names) < 2:
        return {}
    starts = [0]
    for r in rankings:
        starts.append(starts[-1] + len(r.rows))
    out = {}
    for name in names:
        idx = [i for i, r in enumerate(rankings) if r.subset == name]
        own = torch.cat([scores[starts[i] : starts[i + 1]] for i in idx])
        better, worse = ordered_pairs([rankings[i] for i in idx], own)
        out[f"eval/accuracy/{name or '(none)'}"] = pairwise_accuracy(better, worse)
        out[f"eval/pairs/{name or '(none)'}"] = float(len(better))
    return out


def frozen_features(
    model, rankings: list[EncodedRanking], pad_id: int, cfg: RMRunConfig, device: str
) -> torch.Tensor | None:
    """With every block frozen and a linear head on one pooled vector, the backbone is a fixed function:
    its vector for each training response ([rows, hidden], ranking-major) is computed once, in eval mode
    (no dropout), and each step runs only the head. None when some block trains."""
    if any(p.requires_grad for p in model.base_model.parameters()) or not reads_hidden_state(model):
        return None
    rows = [row for r in rankings for row in r.rows]
    return score_ids(model, rows, pad_id, cfg.eval.batch_size, device, fn=pooled_hidden)


def head_scores(model, features: torch.Tensor) -> torch.Tensor:
    """The scores of cached pooled vectors (frozen backbone): the linear head alone."""
    return linear_head(model)(features).squeeze(-1).float()


def load_sets(d: RMDataConfig, seed: int) -> tuple[list[Ranking], list[Ranking]]:
    rows = load_preferences(d.train_file, d.format)
    if d.eval_file:
        return rows, load_preferences(d.eval_file, d.format)
    train, held = split_by_prompt(rows, d.held_out_fraction, seed)
    if not train or not held:
        raise ConfigError(f"data.held_out_fraction={d.held_out_fraction} leaves one side of the split empty")
    return train, held


def run_rm(cfg: RMRunConfig, resume: bool = False) -> RMResult:
    """Train a reward model; with `resume`, continue from the run directory's last checkpoint."""
    train_set, held_set = load_sets(cfg.data, cfg.run.seed)
    total_steps = cfg.train.steps or math.ceil(cfg.train.epochs * len(train_set) / cfg.train.batch_size)
    if cfg.optim.warmup_steps > total_steps:
        raise ConfigError(f"optim.warmup_steps={cfg.optim.warmup_steps} exceeds the {total_steps} steps")

    def load(*args, **kwargs):
        """The scalar model with the configured readout and frozen layers, before the optimizer exists."""
        model = load_scalar_model(*args, **kwargs)
        for key, apply in (
            ("head.pooling", lambda: set_pooling(model, cfg.head.pooling)),
            ("train.freeze_layers", lambda: freeze_lower_layers(model, cfg.train.freeze_layers)),
        ):
            try:
                apply()
            except ValueError as e:
                raise ConfigError(f"{key}: {e}") from None
        return model

    session = TrainingSession.start(cfg, resume=resume, total_steps=total_steps, load=load)
    model, tokenizer, device, precision = session.model, session.tokenizer, session.device, session.precision
    fmt = TextFormat(cfg.data.prompt_template, cfg.data.max_length)
    pad_id = pad_id_of(tokenizer)
    train_enc = encode_rankings(tokenizer, train_set, fmt)
    held_enc = encode_rankings(tokenizer, held_set, fmt)
    features = frozen_features(model, train_enc, pad_id, cfg, device)
    offsets = [0]
    for r in train_enc:
        offsets.append(offsets[-1] + len(r.rows))
    keys = [PromptExample(prompt="\0".join((r.prompt, *r.responses))) for r in train_set]
    sampler = session.prompt_sampler(keys, cfg.train.batch_size)
    calib_path = session.run_dir / "calibration.jsonl"

    def evaluate(step: int, record: bool = True) -> tuple[dict[str, float], torch.Tensor]:
        """Held-out metrics and scores (every rank the whole held-out set); `record` appends the
        calibration bins to calibration.jsonl (rank 0)."""
        with precision.autocast(), full_weights(model):
            metrics, calib, scores = evaluate_rankings(
                model, held_enc, pad_id, cfg.eval.batch_size, device, cfg.eval.bins
            )
        # an overflowing score makes the mean non-finite: stop (or, with skip, log it as null) as SFT does
        guard = NonFiniteGuard(cfg.train.on_nonfinite, step)
        if not guard.ok_evaluated("score mean", metrics["eval/score_mean"]):
            metrics["eval/score_mean"] = math.nan
        if record and session.dist.is_main:
            calibration.write(to_json_value({"step": step, "bins": calib}))
        return metrics, scores

    start_step = session.restore_latest(sampler)[0] if resume else 0
    session.distribute()  # under torchrun: wrap the model for dist.strategy (after a resume)
    if start_step:  # evaluations after the checkpoint are redone (a torn last row, a kill's, dropped)
        if session.dist.is_main:
            cut_jsonl(calib_path, start_step, lambda path: read_jsonl(path, torn_tail_ok=True))
    elif session.dist.is_main:
        calib_path.unlink(missing_ok=True)
    if session.dist.is_main:  # a full disk is a WriteFailed, and rows are fsynced before each checkpoint
        calibration = session.open_jsonl(calib_path.name)
    if not start_step:
        if cfg.eval.at_start:
            session.log(0, evaluate(0)[0])

    model.train()
    final = None
    for step in range(start_step + 1, total_steps + 1):
        t0 = time.perf_counter()
        indices = shard(sampler.next_indices(), session.dist, "train.batch_size")
        batch = [train_enc[i] for i in indices]
        with precision.autocast():
            if features is not None:  # frozen backbone: only the head runs
                rows = [k for i in indices for k in range(offsets[i], offsets[i + 1])]
                scores = through_hooks(model, head_scores, features[rows].to(device))
            else:
                scores = sequence_scores(
                    model, *pad_right([row for r in batch for row in r.rows], pad_id, device)
                )
        loss, batch_loss = rank_scaled_ranking_loss(scores, batch, cfg.train.center_coef)
        session.optimizer.zero_grad(set_to_none=True)
        guard = NonFiniteGuard(cfg.train.on_nonfinite, step)
        result = precision.guarded_step(session.optimizer, loss, batch_loss, cfg.optim.grad_clip, guard)
        session.scheduler.step()
        skipped = result is None or result.nonfinite
        metrics = {
            "update/nonfinite_skipped": float(skipped),
            "lr": session.scheduler.get_last_lr()[0],
            "time/step_s": time.perf_counter() - t0,
            **precision.metrics(),
        }
        if not skipped:  # a skipped step's loss / norm are not logged
            metrics.update(
                {
                    "loss": batch_loss,
                    "accuracy": batch_pair_accuracy(scores, batch),
                    "grad_norm": result.grad_norm,
                }
            )
        if (cfg.eval.every and step % cfg.eval.every == 0) or step == total_steps:
            final = evaluate(step)
            metrics.update(final[0])
            model.train()
        metrics = reduce_metrics(metrics)  # the mean over ranks (the same numbers in one process)
        session.log(step, metrics)
        session.progress.update(step, loss=metrics.get("loss", math.nan))
        session.save_if_due(step, "rm", lambda: {"sampler": sampler.state_dict()})
        session.end_if_signalled(step)
    if final is None:  # resumed a finished run: its calibration row is written already
        final = evaluate(total_steps, record=False)
    session.finish()
    weights = full_state_dict(model) if is_sharded(model) else None  # gathered on every rank
    eval_metrics, scores = final
    final_dir = session.run_dir / "final"
    if not session.dist.is_main:
        return RMResult(session.run_dir, final_dir, session.history, eval_metrics, scores)
    final_dir = save_model_atomically(model, tokenizer, final_dir, state_dict=weights)
    write_meta(final_dir, fmt, float(scores.mean()), float(scores.std()), held_out=eval_metrics)
    if session.history:
        plot_metrics(
            session.history, [("loss",), ("eval/accuracy",)], session.run_dir / "plots.png", title="RM"
        )
    return RMResult(session.run_dir, final_dir, session.history, eval_metrics, scores)
