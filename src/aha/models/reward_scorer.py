"""Turn (prompt, response) texts into reward-model scores, the same way at training and at use.

The reward-model trainer evaluates with `score_texts`, and the `reward_model` reward scores policy
samples through `RewardScorer`, which calls the same function with the settings the trainer stored in
`reward_model.json` beside the weights: the text format (prompt template, max length, left
truncation) and the normalisation statistics (mean and std of held-out scores). A reward whose text or
scale differs from training time is the silent failure this file exists to prevent.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from aha.models.scalar_head import load_scalar_model, sequence_scores

META_FILE = "reward_model.json"


@dataclass(frozen=True)
class TextFormat:
    """How a (prompt, response) pair becomes model input: template(prompt) + response, at most
    `max_length` tokens, cut from the left so the response (the part being judged) survives."""

    prompt_template: str = "{prompt}"
    max_length: int = 512

    def text(self, prompt: str, response: str) -> str:
        return self.prompt_template.replace("{prompt}", prompt) + response


def encode_texts(
    tokenizer: PreTrainedTokenizerBase, prompts: list[str], responses: list[str], fmt: TextFormat
) -> list[list[int]]:
    texts = [fmt.text(p, r) for p, r in zip(prompts, responses, strict=True)]
    side = tokenizer.truncation_side
    tokenizer.truncation_side = "left"
    try:
        return tokenizer(texts, truncation=True, max_length=fmt.max_length)["input_ids"]
    finally:
        tokenizer.truncation_side = side


def pad_right(
    rows: list[list[int]], pad_id: int, device: str | torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [pad_id] * (width - len(r)) for r in rows], device=device)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
    return ids, mask


def pad_id_of(tokenizer: PreTrainedTokenizerBase) -> int:
    """Any id works (the mask decides what is real, aha.models.scalar_head); 0 if the tokenizer has none."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return candidate
    return 0


@torch.no_grad()
def score_ids(
    model: PreTrainedModel,
    rows: list[list[int]],
    pad_id: int,
    batch_size: int,
    device: str | torch.device,
    fn: Callable[..., torch.Tensor] = sequence_scores,
) -> torch.Tensor:
    """fn(model, ids, mask) of token rows in eval mode, in batches of similar length (less padding),
    stacked on the CPU in row order: float32 scores [N] by default."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    parts = []
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        parts.append(fn(model, *pad_right([rows[i] for i in chunk], pad_id, device)).float().cpu())
    model.train(was_training)
    out = torch.cat(parts)
    return out[torch.argsort(torch.tensor(order))]


def score_texts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    responses: list[str],
    fmt: TextFormat,
    batch_size: int,
    device: str | torch.device,
) -> torch.Tensor:
    rows = encode_texts(tokenizer, prompts, responses, fmt)
    return score_ids(model, rows, pad_id_of(tokenizer), batch_size, device)


def write_meta(out_dir: str | Path, fmt: TextFormat, mean: float, std: float, **extra: object) -> Path:
    """Store the text format and the normalisation statistics with the saved model."""
    path = Path(out_dir) / META_FILE
    path.write_text(
        json.dumps({"format": asdict(fmt), "normalization": {"mean": mean, "std": std}, **extra}, indent=2)
    )
    return path


class RewardScorer:
    """A saved reward model (a run's final/ directory) as a batched, gradient-free scorer."""

    def __init__(self, path: str | Path, device: str = "cpu", batch_size: int = 32) -> None:
        path = Path(path)
        meta_path = path / META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"{path} has no {META_FILE}: point at a reward-model run's final/ directory (aha rm)"
            )
        meta = json.loads(meta_path.read_text())
        self.format = TextFormat(**meta["format"])
        self.mean = float(meta["normalization"]["mean"])
        self.std = float(meta["normalization"]["std"])
        from aha.models.loading import load_tokenizer

        self.tokenizer = load_tokenizer(str(path))
        self.model = load_scalar_model(str(path), "float32", device).eval()
        self.model.requires_grad_(False)
        self.device, self.batch_size = device, batch_size

    def raw(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        return score_texts(
            self.model, self.tokenizer, prompts, responses, self.format, self.batch_size, self.device
        )

    def normalized(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        """(score - held-out mean) / held-out std, with the statistics stored at training time."""
        return (self.raw(prompts, responses) - self.mean) / max(self.std, 1e-8)


class RunningNorm:
    """Running mean and std of every score seen (Welford), for normalize=running."""

    def __init__(self) -> None:
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    def update(self, values: list[float]) -> None:
        for x in values:
            self.count += 1
            delta = x - self.mean
            self.mean += delta / self.count
            self.m2 += delta * (x - self.mean)

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.count) if self.count > 1 else 1.0

    def state_dict(self) -> dict:
        """Plain numbers (JSON and torch.load(weights_only=True) read them back exactly)."""
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict) -> None:
        self.count, self.mean, self.m2 = int(state["count"]), float(state["mean"]), float(state["m2"])
