"""Contract tests parametrised over every registered curator.

Each curator, built with its defaults, must: keep shapes, produce non-negative weights,
work on a batch of one, report rows without a positive as invalid (never NaN), and leave
its input untouched.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pairsmith import Pairs, Segment, info_nce
from pairsmith.core.registry import create_curator, list_curators


def unit(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g), dim=-1)


def make_pairs(n: int = 4, d: int = 8, drop_last_positive: bool = False) -> Pairs:
    """Anchors = view 1; candidates = view 2 (batch) + a 16-entry queue, with keys."""
    z1 = unit(n, d).requires_grad_(True)
    z2 = unit(n, d, seed=1).requires_grad_(True)
    labels = torch.arange(n) % 3
    keys = {"instance": torch.arange(n), "label": labels}
    m = n - 1 if drop_last_positive else n
    batch = Segment("batch", z2[:m], {"instance": torch.arange(m), "label": labels[:m]})
    queue = Segment(
        "queue",
        unit(16, d, seed=2),
        {"instance": torch.arange(100, 116), "label": torch.arange(16) % 3},
    )
    return Pairs(z1, keys, (batch, queue))


def snapshot(p: Pairs) -> list[torch.Tensor]:
    out = [p.anchors.detach().clone()] + [s.embeddings.detach().clone() for s in p.segments]
    out += [t.clone() for t in p.anchor_keys.values()]
    return out


CURATORS = list_curators()


@pytest.fixture(params=CURATORS)
def curator(request):
    return create_curator(request.param)


def check(p_in: Pairs, p_out: Pairs) -> None:
    assert p_out.anchors.shape == p_in.anchors.shape
    assert p_out.num_anchors == p_in.num_anchors
    pos, neg = p_out.dense_positives(), p_out.dense_negatives()
    assert pos.shape == neg.shape == (p_out.num_anchors, p_out.num_candidates)
    assert (pos >= 0).all() and (neg >= 0).all()
    for w in (p_out.per_anchor_positives, p_out.per_anchor_negatives):
        assert w is None or (w >= 0).all()
    out = info_nce(p_out, 0.2)
    assert torch.isfinite(out.losses).all()
    out.loss.backward()


def test_shapes_weights_and_untouched_input(curator):
    p = make_pairs()
    before = snapshot(p)
    pos_obj, neg_obj = p.positives, p.negatives
    q = curator(p)
    check(p, q)
    after = snapshot(p)
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=False)), (
        "curator changed its input"
    )
    assert p.positives is pos_obj and p.negatives is neg_obj and p.per_anchor is None


def test_batch_of_one(curator):
    p = make_pairs(n=1)
    check(p, curator(p))


def test_row_without_positive_is_invalid_not_nan(curator):
    p = make_pairs(drop_last_positive=True)
    q = curator(p)
    out = info_nce(q, 0.2)
    assert torch.isfinite(out.losses).all()
    # A curator may give the row positives (SupCon's labels, NNCLR's neighbours); the row
    # is valid exactly when it has one, and an invalid row contributes 0.
    has_pos = bool((q.dense_positives()[-1] > 0).any())
    if q.per_anchor_positives is not None:
        has_pos = has_pos or bool((q.per_anchor_positives[-1] > 0).any())
    assert bool(out.valid[-1]) == has_pos
    if not has_pos:
        assert out.losses[-1] == 0


def test_registry_is_not_empty():
    assert CURATORS, "no curator registered"
