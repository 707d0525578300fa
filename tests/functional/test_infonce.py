"""InfoNCE family: vectorised code against a slow per-anchor loop, closed forms, parity."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

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
    info_nce,
    nt_xent,
)

DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.float64: dict(rtol=1e-9, atol=1e-10)}


def unit(*shape: int, dtype: torch.dtype = torch.float64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=dtype), dim=-1)


def reference_loss(pairs: Pairs, tau: float, mode: str, aggregate: str) -> torch.Tensor:
    """Slow per-anchor loop: explicit sums of exp over columns (no logsumexp tricks)."""
    pos_w = pairs.dense_positives()
    neg_w = pairs.dense_negatives()
    cands = pairs.candidates
    losses = []
    n_valid = 0
    for i in range(pairs.num_anchors):
        a = pairs.anchors[i]
        cols = [(a @ cands[j] / tau, pos_w[i, j], neg_w[i, j]) for j in range(cands.shape[0])]
        if pairs.per_anchor is not None:
            for s in range(pairs.per_anchor.shape[1]):
                pp = 0.0 if pairs.per_anchor_positives is None else pairs.per_anchor_positives[i, s]
                pn = 1.0 if pairs.per_anchor_negatives is None else pairs.per_anchor_negatives[i, s]
                cols.append((a @ pairs.per_anchor[i, s] / tau, pp, pn))
        positives = [(s, w) for s, w, _ in cols if w > 0]
        if not positives:
            continue
        n_valid += 1
        neg_mass = sum(n * torch.exp(s) for s, w, n in cols if w == 0 and n > 0)
        pos_mass = sum(torch.exp(s) for s, _ in positives)
        terms = []
        for s, _w in positives:
            if mode == "all":
                den = pos_mass + neg_mass
            elif mode == "self":
                den = torch.exp(s) + neg_mass
            else:
                den = neg_mass
            terms.append(s - torch.log(torch.as_tensor(den)))
        wsum = sum(w for _, w in positives)
        if aggregate == "mean_log":
            li = -sum(w * t for (_, w), t in zip(positives, terms, strict=False)) / wsum
        else:
            li = -torch.log(
                sum(w * torch.exp(t) for (_, w), t in zip(positives, terms, strict=False)) / wsum
            )
        losses.append(li)
    if not losses:
        return pairs.anchors.sum() * 0
    return torch.stack(losses).sum() / n_valid


def multi_positive_pairs(dtype: torch.dtype, seed: int = 0, queue: bool = True) -> Pairs:
    n, d = 6, 5
    z1, z2 = unit(n, d, dtype=dtype, seed=seed), unit(n, d, dtype=dtype, seed=seed + 1)
    z1.requires_grad_(True)
    z2.requires_grad_(True)
    keys = {
        "instance": torch.arange(n),
        "label": torch.tensor([0, 1, 0, 2, 1, -1]),
    }
    extra = ()
    if queue:
        q = unit(7, d, dtype=dtype, seed=seed + 2)
        extra = (
            Segment(
                "queue",
                q,
                {"instance": torch.arange(100, 107), "label": torch.tensor([0, 1, 2, -1, 0, 3, 1])},
            ),
        )
    return Pairs.from_views([z1, z2], keys, positives=SameKey("label"), extra=extra)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["all", "self", "none"])
@pytest.mark.parametrize("aggregate", ["mean_log", "log_mean"])
def test_matches_reference_loop_value_and_grad(dtype, mode, aggregate):
    pairs = multi_positive_pairs(dtype)
    pairs = pairs.replace(positives=Union(SameKey("label"), SameKey("instance")))
    ours = info_nce(pairs, 0.3, mode, aggregate, chunk_size=None).loss
    (g_ours,) = torch.autograd.grad(ours, pairs.anchors)
    ref = reference_loss(pairs, 0.3, mode, aggregate)
    (g_ref,) = torch.autograd.grad(ref, pairs.anchors)
    torch.testing.assert_close(ours, ref, **TOL[dtype])
    torch.testing.assert_close(g_ours, g_ref, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("aggregate", ["mean_log", "log_mean"])
@pytest.mark.parametrize("per_anchor_weights", ["float", "bool", "default"])
def test_weighted_topk_and_per_anchor_match_reference(dtype, aggregate, per_anchor_weights):
    # Float positive weights, 0/1 or float negatives, per-anchor columns given as float,
    # bool or default weights: every combination of the loss's bool and float blocks.
    pairs = multi_positive_pairs(dtype)
    b, m = pairs.num_anchors, pairs.num_candidates
    g = torch.Generator().manual_seed(3)
    cols = torch.randint(0, m, (b, 2), generator=g)
    w = torch.rand(b, 2, generator=g, dtype=dtype)
    per = unit(b, 3, 5, dtype=dtype, seed=9)
    pn = {
        "float": torch.rand(b, 3, generator=g, dtype=dtype),
        "bool": torch.rand(b, 3, generator=g) < 0.5,
        "default": None,
    }[per_anchor_weights]
    pp = None if per_anchor_weights != "bool" else torch.rand(b, 3, generator=g) < 0.3
    pairs = pairs.replace(
        positives=Union(SameKey("instance"), TopK(cols, w)),
        negatives=Without(Complement(), Mask(torch.rand(b, m, generator=g) < 0.2)),
        per_anchor=per,
        per_anchor_positives=pp,
        per_anchor_negatives=pn,
    )
    for mode in ("all", "self", "none"):
        ours = info_nce(pairs, 0.2, mode, aggregate, chunk_size=None).loss
        ref = reference_loss(pairs, 0.2, mode, aggregate)
        torch.testing.assert_close(ours, ref, **TOL[dtype])
        (g1,) = torch.autograd.grad(ours, pairs.anchors)
        (g2,) = torch.autograd.grad(ref, pairs.anchors)
        torch.testing.assert_close(g1, g2, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_nt_xent_matches_simclr_reference(dtype):
    """NT-Xent = cross-entropy over [2N, 2N] logits with self masked (google-research/simclr / 2)."""
    z1, z2 = unit(8, 16, dtype=dtype), unit(8, 16, dtype=dtype, seed=5)
    tau = 0.5
    ours = nt_xent(z1, z2, tau)
    h1, h2 = z1, z2
    ab, ba = h1 @ h2.T / tau, h2 @ h1.T / tau
    aa = h1 @ h1.T / tau - 1e9 * torch.eye(8, dtype=dtype)
    bb = h2 @ h2.T / tau - 1e9 * torch.eye(8, dtype=dtype)
    lab = torch.arange(8)
    loss_a = F.cross_entropy(torch.cat([ab, aa], 1), lab, reduction="none")
    loss_b = F.cross_entropy(torch.cat([ba, bb], 1), lab, reduction="none")
    simclr_tf = (loss_a + loss_b).mean()  # google-research/simclr's scale: 2x ours
    torch.testing.assert_close(2 * ours, simclr_tf, **TOL[dtype])


@pytest.mark.parametrize("n", [1, 2, 5, 16])
def test_identical_embeddings_give_log_2n_minus_1(n):
    z = torch.ones(n, 4, dtype=torch.float64) / 2
    pairs = Pairs.from_views([z, z], {"instance": torch.arange(n)})
    out = info_nce(pairs, 0.1)
    expected = torch.full((2 * n,), math.log(2 * n - 1), dtype=torch.float64)
    torch.testing.assert_close(out.losses, expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_supcon_with_instance_keys_equals_nt_xent(dtype):
    z1, z2 = unit(8, 16, dtype=dtype), unit(8, 16, dtype=dtype, seed=5)
    keys = {"instance": torch.arange(8), "label": torch.arange(8)}
    sup = info_nce(Pairs.from_views([z1, z2], keys, positives=SameKey("label")), 0.1).loss
    torch.testing.assert_close(sup, nt_xent(z1, z2, 0.1, normalize=False), **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["all", "self", "none"])
@pytest.mark.parametrize("chunk", [1, 3, 5])
def test_chunked_equals_unchunked(dtype, mode, chunk):
    pairs = multi_positive_pairs(dtype)
    full = info_nce(pairs, 0.2, mode, chunk_size=None)
    (g_full,) = torch.autograd.grad(full.loss, pairs.anchors)
    part = info_nce(pairs, 0.2, mode, chunk_size=chunk)
    (g_part,) = torch.autograd.grad(part.loss, pairs.anchors)
    torch.testing.assert_close(part.losses, full.losses, **TOL[dtype])
    torch.testing.assert_close(g_part, g_full, **TOL[dtype])
    assert torch.equal(part.valid, full.valid)


@pytest.mark.parametrize("dtype", DTYPES)
def test_structured_equals_dense(dtype):
    pairs = multi_positive_pairs(dtype)
    dense = pairs.replace(
        positives=Dense(pairs.dense_positives()), negatives=Mask(pairs.dense_negatives() > 0)
    )
    for mode in ("all", "self", "none"):
        a = info_nce(pairs, 0.2, mode).loss
        b = info_nce(dense, 0.2, mode).loss
        torch.testing.assert_close(a, b, **TOL[dtype])
        ga = torch.autograd.grad(a, pairs.anchors)[0]
        gb = torch.autograd.grad(b, dense.anchors)[0]
        torch.testing.assert_close(ga, gb, **TOL[dtype])


def test_rows_without_positive_are_invalid_not_nan():
    pairs = multi_positive_pairs(torch.float64, queue=False)  # label -1 row has no label positive
    out = info_nce(pairs, 0.1)
    assert torch.isfinite(out.losses).all()
    invalid = ~out.valid
    assert invalid.sum() == 2  # the two views of the unlabeled sample
    assert (out.losses[invalid] == 0).all()
    (g,) = torch.autograd.grad(out.loss, pairs.anchors)
    assert torch.isfinite(g).all()


@pytest.mark.parametrize("mode", ["all", "self", "none"])
@pytest.mark.parametrize("aggregate", ["mean_log", "log_mean"])
def test_no_valid_row_gives_zero_and_backward_works(mode, aggregate):
    z = unit(4, 3).requires_grad_(True)
    keys = {"instance": torch.arange(4), "label": torch.full((4,), -1)}
    pairs = Pairs(z, keys, (Segment("batch", z, keys),), positives=SameKey("label"))
    out = info_nce(pairs, 0.1, mode, aggregate)
    assert out.loss.item() == 0.0
    out.loss.backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and (z.grad == 0).all()


def test_moco_layout_queue_only_negatives():
    """MoCo: logits [N, 1+K] with the key in column 0 (He et al. 2020)."""
    q, k, queue = unit(4, 8), unit(4, 8, seed=1), unit(10, 8, seed=2)
    keys = {"instance": torch.arange(4)}
    pairs = Pairs(
        q,
        keys,
        (Segment("batch", k, keys), Segment("queue", queue, {"instance": torch.full((10,), -1)})),
        negatives=InSegment("queue"),
    )
    ours = info_nce(pairs, 0.2).loss
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.T], 1) / 0.2
    ref = F.cross_entropy(logits, torch.zeros(4, dtype=torch.long))
    torch.testing.assert_close(ours, ref)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(temperature=0.0), "temperature"),
        (dict(temperature=-1), "temperature"),
        (dict(positives_in_denominator="some"), "positives_in_denominator"),
        (dict(aggregate="sum"), "aggregate"),
        (dict(chunk_size=0), "chunk_size"),
        (dict(chunk_size="big"), "chunk_size"),
    ],
)
def test_bad_arguments(kwargs, match):
    pairs = multi_positive_pairs(torch.float32)
    with pytest.raises(ValueError, match=match):
        info_nce(pairs, **kwargs)


def test_auto_chunking_kicks_in_and_agrees(monkeypatch):
    import pairsmith.functional.infonce as mod

    pairs = multi_positive_pairs(torch.float64)
    full = info_nce(pairs, 0.2, chunk_size=None).loss
    monkeypatch.setattr(mod, "AUTO_CHUNK_ELEMENTS", 10)
    monkeypatch.setattr(mod, "AUTO_BLOCK_ELEMENTS", 40)
    calls = []
    real = mod.checkpoint
    monkeypatch.setattr(mod, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    auto = info_nce(pairs, 0.2, chunk_size="auto").loss
    assert len(calls) > 1
    torch.testing.assert_close(auto, full)


def test_decoupled_row_without_negatives_is_invalid():
    z1, z2 = unit(3, 4), unit(3, 4, seed=1)
    keys = {"instance": torch.arange(3), "label": torch.zeros(3, dtype=torch.long)}
    pairs = Pairs.from_views([z1, z2], keys, positives=SameKey("label"))  # all positives
    out = info_nce(pairs, 0.1, "none")
    assert not out.valid.any() and torch.isfinite(out.losses).all() and out.loss == 0


def test_mixed_precision_inputs_computed_in_float32():
    pairs = multi_positive_pairs(torch.float32)
    ref = info_nce(pairs, 0.2).loss
    half = pairs.to_dtype(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = info_nce(half, 0.2)
    assert out.losses.dtype == torch.float32
    # only the bf16 rounding of the embeddings differs
    torch.testing.assert_close(out.loss, ref, rtol=2e-2, atol=2e-2)
    (g,) = torch.autograd.grad(out.loss, pairs.anchors)
    assert g.dtype == torch.float32 and torch.isfinite(g).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("chunk", [None, 3])
def test_single_positive_fast_path_equals_general_path(dtype, chunk):
    """NT-Xent rows take the cross-entropy fast path; an equivalent explicit negative rule
    (not the default Complement()) forces the general path: same value and gradient."""
    z1, z2 = unit(6, 5, dtype=dtype), unit(6, 5, dtype=dtype, seed=1)
    z1.requires_grad_(True)
    fast = Pairs.from_views([z1, z2], {"instance": torch.arange(6)})
    slow = fast.replace(negatives=Complement(SameKey("instance")))
    a = info_nce(fast, 0.2, chunk_size=chunk).loss
    b = info_nce(slow, 0.2, chunk_size=chunk).loss
    torch.testing.assert_close(a, b, **TOL[dtype])
    ga, gb = (torch.autograd.grad(x, z1)[0] for x in (a, b))
    torch.testing.assert_close(ga, gb, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["all", "self", "none"])
@pytest.mark.parametrize("aggregate", ["mean_log", "log_mean"])
def test_single_positive_general_path_matches_reference(dtype, mode, aggregate):
    # One positive per row but non-default negatives: the general path's one-positive
    # shortcut ("all" computed as "self") against the slow loop.
    pairs = multi_positive_pairs(dtype)
    g = torch.Generator().manual_seed(5)
    drop = Mask(torch.rand(pairs.num_anchors, pairs.num_candidates, generator=g) < 0.3)
    pairs = pairs.replace(positives=SameKey("instance"), negatives=Without(Complement(), drop))
    ours = info_nce(pairs, 0.3, mode, aggregate, chunk_size=None).loss
    ref = reference_loss(pairs, 0.3, mode, aggregate)
    torch.testing.assert_close(ours, ref, **TOL[dtype])
    torch.testing.assert_close(
        torch.autograd.grad(ours, pairs.anchors)[0],
        torch.autograd.grad(ref, pairs.anchors)[0],
        **TOL[dtype],
    )
