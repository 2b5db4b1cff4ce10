from __future__ import annotations

import math

import pytest
import torch

from aha.train.optim import build_optimizer, build_scheduler


class TinyNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(5, 4)
        self.linear = torch.nn.Linear(4, 4)  # weight 2-D, bias 1-D
        self.norm = torch.nn.LayerNorm(4)  # weight and bias 1-D
        self.head = torch.nn.Linear(4, 5, bias=False)
        self.head.weight = self.embed.weight  # tied: must appear once
        self.frozen = torch.nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def test_weight_decay_split():
    model = TinyNet()
    opt = build_optimizer(model, lr=0.1, weight_decay=0.01, betas=(0.8, 0.9), eps=1e-6)
    assert isinstance(opt, torch.optim.AdamW)
    decay, no_decay = opt.param_groups
    assert len(decay["params"]) == 2 and len(no_decay["params"]) == 3  # tied weight once, frozen excluded
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model.embed.weight), id(model.linear.weight)}
    assert {id(p) for p in no_decay["params"]} == {
        id(model.linear.bias),
        id(model.norm.weight),
        id(model.norm.bias),
    }
    assert decay["lr"] == 0.1 and decay["betas"] == (0.8, 0.9) and decay["eps"] == 1e-6


def test_fused_on_cpu_and_the_same_steps_as_plain_adamw():
    torch.manual_seed(0)
    fused_model, plain_model = TinyNet(), TinyNet()
    plain_model.load_state_dict(fused_model.state_dict())
    start = {name: p.detach().clone() for name, p in fused_model.named_parameters()}
    fused = build_optimizer(fused_model, lr=0.1, weight_decay=0.01)
    assert fused.defaults["fused"]
    groups = build_optimizer(plain_model, lr=0.1, weight_decay=0.01).param_groups
    plain = torch.optim.AdamW([{k: g[k] for k in ("params", "weight_decay")} for g in groups], lr=0.1)
    assert not plain.defaults["fused"]
    tokens = torch.tensor([0, 3, 1, 4])
    for _ in range(3):
        for model, opt in ((fused_model, fused), (plain_model, plain)):
            opt.zero_grad()
            model.head(model.norm(model.linear(model.embed(tokens)))).logsumexp(-1).sum().backward()
            opt.step()
    for (name, a), b in zip(fused_model.named_parameters(), plain_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        if a.requires_grad:
            assert not torch.equal(a, start[name]), f"{name} did not move"


def test_no_trainable_parameters():
    model = torch.nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(model, 0.1, 0.0)


def lrs(
    kind: str, warmup: int, total: int, min_ratio: float = 0.0, steps: int = 8, lr: float = 2.0
) -> list[float]:
    """Learning rate used by update number s + 1, for s = 0 .. steps - 1."""
    param = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([param], lr=lr)
    sched = build_scheduler(opt, warmup, total, kind=kind, min_lr_ratio=min_ratio)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_cosine_with_warmup_and_floor():
    # lr 2, W = 2, T = 6, m = 0.1; decay p = (s - 2) / 4; factor = 0.1 + 0.9 * (1 + cos(pi p)) / 2
    #   s=0: 1/2 -> 1.0     s=1: 2/2 -> 2.0     s=2: p=0 -> 2.0
    #   s=3: p=1/4 -> 0.1 + 0.45 * (1 + 0.70711) = 0.86820 -> 1.73640
    #   s=4: p=1/2 -> 0.1 + 0.45 = 0.55 -> 1.1
    #   s=5: p=3/4 -> 0.1 + 0.45 * (1 - 0.70711) = 0.23180 -> 0.46360
    #   s=6, 7: p clamped to 1 -> 0.1 -> 0.2
    expected = [1.0, 2.0, 2.0, 1.73640, 1.1, 0.46360, 0.2, 0.2]
    assert lrs("cosine", 2, 6, 0.1) == pytest.approx(expected, abs=1e-5)


def test_linear_without_warmup():
    # lr 2, W = 0, T = 4, m = 0: factor = 1 - s/4 -> 1, 0.75, 0.5, 0.25, then 0
    assert lrs("linear", 0, 4, steps=6) == pytest.approx([2.0, 1.5, 1.0, 0.5, 0.0, 0.0])


def test_linear_with_floor_and_warmup():
    # lr 2, W = 1, T = 3, m = 0.5: s=0 warm-up 1/1; then p = (s - 1)/2: 1, 0.75, 0.5 -> x2
    assert lrs("linear", 1, 3, 0.5, steps=5) == pytest.approx([2.0, 2.0, 1.5, 1.0, 1.0])


def test_constant_with_warmup():
    # W = 4: 1/4, 2/4, 3/4, 4/4 of lr 2, then constant
    assert lrs("constant", 4, 10, steps=6) == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.0, 2.0])


def test_cosine_midpoint_matches_formula():
    # independent check: halfway through a cosine decay the factor is exactly 1/2
    values = lrs("cosine", 0, 10, steps=6, lr=1.0)
    assert values[5] == pytest.approx(0.5) and values[0] == 1.0
    assert values[3] == pytest.approx((1 + math.cos(math.pi * 0.3)) / 2)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"kind": "step"}, "unknown schedule 'step'"),
        ({"warmup_steps": 11}, "warmup_steps <= total_steps"),
        ({"total_steps": 0, "warmup_steps": 0}, "total_steps >= 1"),
        ({"min_lr_ratio": 1.5}, r"min_lr_ratio must be in \[0, 1\]"),
    ],
)
def test_scheduler_argument_checks(kwargs, message):
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    args = {"warmup_steps": 0, "total_steps": 10, **kwargs}
    with pytest.raises(ValueError, match=message):
        build_scheduler(opt, **args)


def test_scheduler_state_round_trip():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, 2, 10)
    for _ in range(4):
        opt.step()
        sched.step()
    opt2 = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched2 = build_scheduler(opt2, 2, 10)
    sched2.load_state_dict(sched.state_dict())
    opt2.load_state_dict(opt.state_dict())
    assert sched2.get_last_lr() == sched.get_last_lr()
    sched.step()
    sched2.step()
    assert (
        opt2.param_groups[0]["lr"]
        == opt.param_groups[0]["lr"]
        == pytest.approx((1 + math.cos(math.pi * 3 / 8)) / 2)
    )
