"""Pairs and weights: validation errors, dense forms, segments."""

from __future__ import annotations

import pytest
import torch

from pairsmith import (
    Complement,
    Dense,
    InSegment,
    Mask,
    Pairs,
    SameKey,
    Segment,
    TopK,
    Union,
    Without,
)


def make(n: int = 3, d: int = 4, dtype: torch.dtype = torch.float32) -> Pairs:
    z = torch.randn(n, d, dtype=dtype)
    return Pairs.from_views(
        [z, z + 1], {"instance": torch.arange(n), "label": torch.tensor([0, 0, 1])[:n]}
    )


def test_from_views_layout():
    p = make()
    assert p.num_anchors == 6 and p.num_candidates == 6
    assert torch.equal(p.self_index, torch.arange(6))
    pos = p.dense_positives()
    expected = torch.zeros(6, 6)
    for i in range(3):
        expected[i, i + 3] = expected[i + 3, i] = 1
    assert torch.equal(pos, expected)
    neg = p.dense_negatives()
    assert torch.equal(neg, 1 - expected - torch.eye(6))


def test_same_key_ignores_unknown():
    z = torch.randn(3, 2)
    keys = {"instance": torch.arange(3), "label": torch.tensor([-1, -1, 2])}
    p = Pairs(z, keys, (Segment("batch", z, keys),), positives=SameKey("label"))
    assert p.dense_positives().sum() == 0  # -1 never matches and self is removed


def test_weight_forms_dense():
    p = make()
    cols = torch.tensor([[1, -1]] * 6)
    w = torch.tensor([[0.5, 9.0]] * 6)
    d = TopK(cols, w).dense(p)
    assert d[:, 1].eq(0.5).all() and d.sum() == 3.0
    m = torch.zeros(6, 6, dtype=torch.bool)
    m[0, 2] = True
    assert Mask(m).dense(p)[0, 2] == 1
    assert torch.equal(
        Union(Mask(m), SameKey("instance")).dense(p)[0], torch.tensor([1.0, 0, 1, 1, 0, 0])
    )
    assert (
        Without(SameKey("instance"), Mask(m | torch.eye(6, dtype=torch.bool))).dense(p)[0, 0] == 0
    )
    assert Complement(SameKey("label")).dense(p)[0].tolist() == [0, 0, 1, 0, 0, 1]
    assert Dense(torch.full((6, 6), 0.25)).dense(p).sum() == 9


def test_bool_block_is_the_support_and_binary_forms_are_0_1():
    p = make()
    g = torch.Generator().manual_seed(0)
    m = torch.rand(6, 6, generator=g) < 0.4
    topk = TopK(torch.tensor([[1, -1]] * 6), torch.tensor([[0.5, 9.0]] * 6))
    forms = [
        SameKey("label"),
        topk,
        Mask(m),
        Dense(torch.rand(6, 6, generator=g) * (torch.rand(6, 6, generator=g) < 0.5)),
        Complement(),
        Complement(Mask(m)),
        InSegment("batch"),
        Union(Mask(m), SameKey("instance")),
        Union(Mask(m), topk),
        Without(Complement(), Mask(m)),
        Without(topk, Mask(m)),
    ]
    for w in forms:
        block = w.dense(p)
        assert torch.equal(w.bool_block(p, slice(0, 6)), block > 0), w
        if w.binary:
            assert bool(((block == 0) | (block == 1)).all()), w
    assert [w.binary for w in forms] == [
        True, False, True, False, True, True, True, True, False, True, False,
    ]  # fmt: skip


def test_in_segment():
    z = torch.randn(2, 3)
    keys = {"instance": torch.arange(2)}
    q = Segment("queue", torch.randn(4, 3), {"instance": torch.full((4,), -1)})
    p = Pairs(z, keys, (Segment("batch", z, keys), q), negatives=InSegment("queue"))
    assert p.dense_negatives().tolist() == [[0, 0, 1, 1, 1, 1]] * 2
    assert p.segment_slice("queue") == slice(2, 6)
    with pytest.raises(KeyError, match="synthetic"):
        p.segment_slice("synthetic")


def test_replace_leaves_input_untouched():
    p = make()
    q = p.replace(positives=SameKey("label"))
    assert isinstance(p.positives, SameKey) and p.positives.key == "instance"
    assert q.positives.key == "label"


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda z, k: Pairs(z[0], k, (Segment("batch", z, k),)), "anchors must be a \\[B, D\\]"),
        (lambda z, k: Pairs(z.long(), k, (Segment("batch", z, k),)), "floating point"),
        (
            lambda z, k: Pairs(z, {"instance": torch.arange(2)}, (Segment("batch", z, k),)),
            "anchor_keys",
        ),
        (lambda z, k: Pairs(z, {"instance": torch.rand(3)}, (Segment("batch", z, k),)), "integer"),
        (lambda z, k: Pairs(z, k, ()), "segments"),
        (lambda z, k: Pairs(z, k, (Segment("memory", z, k),)), "segment name"),
        (lambda z, k: Pairs(z, k, (Segment("batch", z[:, :2], k),)), "D=4"),
        (lambda z, k: Pairs(z, k, (Segment("batch", z.double(), k),)), "dtype"),
        (lambda z, k: Pairs(z, k, (Segment("batch", z, {}),)), "lacks keys"),
        (
            lambda z, k: Pairs(z, k, (Segment("batch", z, {"instance": torch.arange(2)}),)),
            "length 3",
        ),
        (
            lambda z, k: Pairs(z, k, (Segment("batch", z, k),), self_index=torch.tensor([0, 1, 7])),
            "self_index",
        ),
        (
            lambda z, k: Pairs(z, k, (Segment("batch", z, k),), positives=SameKey("label")),
            "SameKey\\('label'\\)",
        ),
        (
            lambda z, k: Pairs(z, k, (Segment("batch", z, k),), positives="instance"),
            "positives must be a Weight",
        ),
        (
            lambda z, k: Pairs(z, k, (Segment("batch", z, k),), per_anchor=torch.randn(3, 4)),
            "per_anchor",
        ),
        (
            lambda z, k: Pairs(
                z, k, (Segment("batch", z, k),), per_anchor_negatives=torch.ones(3, 1)
            ),
            "without per_anchor",
        ),
        (
            lambda z, k: Pairs(
                z, k, (Segment("batch", z, k),), negatives=Mask(torch.ones(2, 3, dtype=torch.bool))
            ),
            "Mask has shape",
        ),
        (
            lambda z, k: Pairs(
                z, k, (Segment("batch", z, k),), negatives=TopK(torch.tensor([[5]] * 3))
            ),
            "TopK cols",
        ),
        (
            lambda z, k: Pairs(z, k, (Segment("batch", z, k),), negatives=InSegment("queue")),
            "InSegment",
        ),
    ],
)
def test_validation_errors(build, match):
    z = torch.randn(3, 4)
    k = {"instance": torch.arange(3)}
    with pytest.raises(ValueError, match=match):
        build(z, k)


@pytest.mark.parametrize(
    "ctor, match",
    [
        (lambda: SameKey(""), "key"),
        (lambda: TopK(torch.zeros(3)), "cols"),
        (lambda: TopK(torch.zeros(3, 1)), "integer"),
        (lambda: TopK(torch.zeros(3, 1, dtype=torch.long), torch.ones(3, 2)), "weight"),
        (lambda: TopK(torch.zeros(3, 1, dtype=torch.long), -torch.ones(3, 1)), "non-negative"),
        (lambda: Mask(torch.ones(3, 3)), "bool"),
        (lambda: Dense(torch.ones(3, 3, dtype=torch.long)), "float"),
        (lambda: Dense(-torch.ones(3, 3)), "non-negative"),
        (lambda: Union(), "at least one"),
        (lambda: InSegment(), "at least one"),
    ],
)
def test_weight_constructor_errors(ctor, match):
    with pytest.raises(ValueError, match=match):
        ctor()


def test_from_views_errors():
    with pytest.raises(ValueError, match="views"):
        Pairs.from_views([], {})
    with pytest.raises(ValueError, match="views\\[1\\]"):
        Pairs.from_views([torch.randn(3, 2), torch.randn(4, 2)], {"instance": torch.arange(3)})


@pytest.mark.parametrize("seed", range(6))
def test_same_key_single_match_equals_the_dense_mask(seed):
    """The sorted look-up of the NT-Xent fast path agrees with the [B, M] key comparison:
    the one match outside the self column where there is exactly one, None otherwise."""
    g = torch.Generator().manual_seed(seed)
    n = 5
    keys = {"instance": torch.randint(-1, 4 if seed % 2 else 40, (n,), generator=g)}
    if seed < 2:
        keys = {"instance": torch.arange(n)}  # one match per row: the other view
    queue = Segment(
        "queue",
        torch.randn(7, 3, generator=g),
        {
            "instance": torch.arange(100, 107)
            if seed < 2
            else torch.randint(-2, 60, (7,), generator=g)
        },
    )
    p = Pairs.from_views([torch.randn(n, 3, generator=g)] * 2, keys, extra=(queue,))
    rule = SameKey("instance")
    rows = slice(1, 2 * n)
    skip = p.self_index[rows]
    mask = rule.bool_block(p, rows).clone()
    mask[torch.arange(mask.shape[0]), skip] = False
    got = rule.single_match(p, rows, skip)
    if bool((mask.sum(1) == 1).all()):
        assert got is not None and torch.equal(got, mask.int().argmax(1))
    else:
        assert got is None
    if seed < 2:
        assert got is not None
