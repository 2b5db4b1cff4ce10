"""Two CPU processes (gloo) give the one-process reward-model step: one SGD step of `aha rm`'s loss on a
global batch of rankings, split across 2 ranks and wrapped by DDP or FSDP2, leaves the same weights and
logs the same loss and pair accuracy as one process on the whole batch.

The batches make the weighting matter: K-wise rankings of 2 and 3 responses (the ranks hold different
numbers of responses, so the centering term's mean has different denominators) with a tied ranking that
counts in no mean, and Bradley-Terry pairs with margins. Also with the whole backbone frozen: the
pooled vectors are computed once on the plain model and only the head trains, as `aha rm` does then. SGD, so equal weights mean equal gradients;
the tolerance is `forward_atol` of the step's size (the ranks only sum the same float32 terms in another
order), as in tests/test_dist_update.py.
"""

from __future__ import annotations

import pytest
import torch
from helpers.dist_workers import rm_worker, spawn_workers
from helpers.tolerances import forward_atol

from aha.models.reward_scorer import pad_right
from aha.models.scalar_head import (
    freeze_lower_layers,
    load_scalar_model,
    pooled_hidden,
    sequence_scores,
    through_hooks,
)
from aha.train.reward_model import EncodedRanking, batch_pair_accuracy, head_scores, rank_scaled_ranking_loss

LR = 0.5


def _rows(g: torch.Generator, k: int) -> list[list[int]]:
    return [
        torch.randint(3, 40, (int(torch.randint(3, 9, (1,), generator=g)),), generator=g).tolist()
        for _ in range(k)
    ]


def _batches() -> dict[str, tuple[list[EncodedRanking], float]]:
    g = torch.Generator().manual_seed(3)
    kwise = [  # rank 0: 5 responses, one tied ranking; rank 1: 6 responses
        EncodedRanking(_rows(g, 2), (0, 1), None),
        EncodedRanking(_rows(g, 3), (0, 0, 0), None),  # all tied: no pair, in the centering mean only
        EncodedRanking(_rows(g, 3), (0, 1, 2), None),
        EncodedRanking(_rows(g, 3), (0, 1, 1), None),
    ]
    pairs = [EncodedRanking(_rows(g, 2), (0, 1), m) for m in (0.0, 0.5, 1.0, 0.2)]
    return {
        "kwise-center": (kwise, 0.1, False),
        "pairs-margin": (pairs, 0.0, False),
        "frozen": (kwise, 0.1, True),
    }


CASES = _batches()


def rm_model(model_dir: str, frozen: bool = False):
    torch.manual_seed(0)  # the fresh score head: the same draw in every process
    model = load_scalar_model(model_dir)
    if frozen:
        freeze_lower_layers(model, -1)
    return model


def padded(batch: list[EncodedRanking]) -> tuple[torch.Tensor, torch.Tensor]:
    return pad_right([row for r in batch for row in r.rows], 0, "cpu")


def features_of(model, batch: list[EncodedRanking]) -> torch.Tensor:
    """The pooled vectors of a frozen backbone, computed once on the plain model (before wrapping)."""
    with torch.no_grad():
        return pooled_hidden(model, *padded(batch))


def sgd(model) -> torch.optim.SGD:
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR)


def step(
    model, optimizer, batch: list[EncodedRanking], center_coef: float, features: torch.Tensor | None = None
) -> tuple[float, float]:
    """One step of `aha rm`'s loss on this process's share of `batch` (from cached `features` when
    given): (the batch's loss, pair accuracy)."""
    if features is None:
        scores = sequence_scores(model, *padded(batch))
    else:
        scores = through_hooks(model, head_scores, features)
    loss, value = rank_scaled_ranking_loss(scores, batch, center_coef)
    loss.backward()
    optimizer.step()
    return value, batch_pair_accuracy(scores, batch)


@pytest.fixture(scope="module", params=["ddp", "fsdp2"])
def two_ranks(request, tiny_varied_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"rm-{request.param}") / "results.pt"
    spawn_workers(rm_worker, 2, str(tiny_varied_model_dir), request.param, list(CASES), str(out))
    return torch.load(out, weights_only=True)


@pytest.mark.parametrize("name", list(CASES))
def test_rm_step_on_two_ranks_equals_one_process(tiny_varied_model_dir, two_ranks, name):
    batch, center_coef, frozen = CASES[name]
    model = rm_model(str(tiny_varied_model_dir), frozen)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    features = features_of(model, batch) if frozen else None
    loss, accuracy = step(model, sgd(model), batch, center_coef, features)
    one, two = model.state_dict(), two_ranks[name]["weights"]
    size = max((one[k] - base[k]).abs().max().item() for k in one)
    assert size > 1e-3  # the step moved the weights: the comparison is not vacuous
    atol = forward_atol(model.config, size)
    assert one.keys() == two.keys()
    for k in one:
        assert (two[k] - one[k]).abs().max().item() <= atol, (name, k)
    assert two_ranks[name]["loss"] == pytest.approx(loss, rel=1e-5)
    assert two_ranks[name]["accuracy"] == accuracy
    assert 0 < accuracy < 1  # some pairs ordered either way: the reduction is not vacuous
    # FSDP2 warns when a wrapped forward returns a view (an in-place op on it would skip its hook)
    assert not [w for w in two_ranks[name]["warnings"] if "view tensor" in w]
