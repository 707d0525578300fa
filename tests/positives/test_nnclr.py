"""NNCLR / mean-shift nearest-neighbour positives (survey 3.2.1) against reference loops.

solo-learn's NNCLR loss (``solo/losses/nnclr.py``, ``solo/methods/nnclr.py``) and MSF's
loss (``UMBCvision/MSF``), written as slow per-anchor loops; properties from
shared/reference/methods.md 3.1 and 3.2.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pairsmith.core.pairs import Pairs, Segment
from pairsmith.core.registry import create_curator, list_entries
from pairsmith.core.weights import Complement, InSegment, SameKey, TopK, Union
from pairsmith.functional.infonce import info_nce
from pairsmith.positives.embedding_based import (
    NearestNeighbourPositives,
    mean_shift_loss,
    nearest_neighbours,
    neighbour_precision,
    nnclr_loss,
    nnclr_pairs,
)
from pairsmith.sources.queue import Queue

DTYPES = [torch.float32, torch.float64]
TAU = 0.1


def tol(dtype: torch.dtype) -> dict[str, float]:
    return (
        {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-12}
    )


def randn(*shape: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


def unit(*shape: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return F.normalize(randn(*shape, seed=seed), dim=-1).to(dtype)


def views(n: int = 8, d: int = 16, dtype: torch.dtype = torch.float64, seed: int = 0):
    """Unnormalised projections and predictions of two views, leaves with gradient."""
    return [randn(n, d, seed=seed + i, dtype=dtype).requires_grad_(True) for i in range(4)]


def support(k: int = 48, d: int = 16, dtype: torch.dtype = torch.float64, seed: int = 100):
    labels = torch.arange(k) % 4
    keys = {"instance": torch.full((k,), -1), "label": labels}
    return Segment("queue", unit(k, d, seed=seed, dtype=dtype), keys)


# --------------------------------------------------------------------------- references
def ref_nnclr_loss_func(z: torch.Tensor, queue: torch.Tensor, p: torch.Tensor, tau: float):
    """solo-learn, one anchor at a time: nn = queue[argmax z.queue], CE(nn.p^T / tau, i)."""
    zn = F.normalize(z.detach(), dim=-1)
    pn = F.normalize(p, dim=-1)
    losses = []
    for i in range(z.shape[0]):
        idx = int(torch.argmax(queue @ zn[i]))
        nn = F.normalize(queue[idx], dim=-1)
        logits = torch.stack([nn @ pn[j] for j in range(p.shape[0])]) / tau
        losses.append(-torch.log_softmax(logits, dim=0)[i])
    return torch.stack(losses).mean()


def ref_nnclr(z1, z2, p1, p2, queue, tau):
    return 0.5 * ref_nnclr_loss_func(z1, queue, p2, tau) + 0.5 * ref_nnclr_loss_func(
        z2, queue, p1, tau
    )


def ref_knn(x: torch.Tensor, bank: torch.Tensor, k: int) -> list[list[int]]:
    out = []
    for i in range(x.shape[0]):
        sims = [float(F.cosine_similarity(x[i], bank[j], dim=0)) for j in range(bank.shape[0])]
        out.append(sorted(range(len(sims)), key=lambda j: -sims[j])[:k])
    return out


# --------------------------------------------------------------------------- registry
def test_registered_with_taxonomy():
    entry = next(e for e in list_entries("curator") if e.name.endswith(".nnclr"))
    assert entry.name == "positives.embedding_based.nnclr"
    assert entry.taxonomy == ("positives", "embedding_based")
    # Compared by name: tests/core/test_registry.py reloads the registered modules, so
    # the registry may hold a newer class object than the one imported here.
    assert (entry.obj.__module__, entry.obj.__qualname__) == (
        NearestNeighbourPositives.__module__,
        NearestNeighbourPositives.__qualname__,
    )
    c = create_curator("positives.embedding_based.nnclr", k=None)
    assert (c.k, c.segment, c.replace, c.search) == (1, "queue", "anchors", "anchors")


# --------------------------------------------------------------------------- search
@pytest.mark.parametrize("k", [1, 3, 48])
@pytest.mark.parametrize("chunk", [None, 1, 5, 100])
def test_nearest_neighbours_maximise_cosine(k, chunk):
    x = randn(7, 16, seed=1) * 3.0  # unnormalised: cosine, not dot product
    bank = randn(48, 16, seed=2) * torch.rand(48, 1, generator=torch.Generator().manual_seed(3))
    idx, sim = nearest_neighbours(x, bank, k, chunk_size=chunk)
    assert idx.shape == sim.shape == (7, k)
    ref = ref_knn(x, bank, k)
    assert [sorted(r) for r in idx.tolist()] == [sorted(r) for r in ref]
    cos = F.normalize(x, dim=1) @ F.normalize(bank, dim=1).T
    torch.testing.assert_close(sim, cos.gather(1, idx))
    assert (sim[:, :-1] >= sim[:, 1:]).all()
    assert not idx.requires_grad and not sim.requires_grad


def test_nearest_neighbours_carries_no_gradient():
    x = randn(4, 8, seed=1).requires_grad_(True)
    bank = randn(10, 8, seed=2).requires_grad_(True)
    _, sim = nearest_neighbours(x, bank, 2)
    assert sim.grad_fn is None


# --------------------------------------------------------------------------- NNCLR
@pytest.mark.parametrize("dtype", DTYPES)
def test_nnclr_matches_solo_learn_loop(dtype):
    z1, z2, p1, p2 = views(dtype=dtype)
    seg = support(dtype=dtype)
    keys = {"instance": torch.arange(8)}
    loss = nnclr_loss(z1, z2, p1, p2, keys, seg, TAU)
    grads = torch.autograd.grad(loss, [p1, p2])
    ref = ref_nnclr(z1, z2, p1, p2, seg.embeddings, TAU)
    ref_grads = torch.autograd.grad(ref, [p1, p2])
    torch.testing.assert_close(loss, ref, **tol(dtype))
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_nnclr_with_a_predictor_gradient_reaches_z_only_through_p(dtype):
    """NN(z) is a constant: d loss / dz equals the gradient through p = predictor(z)."""
    torch.manual_seed(0)
    pred = torch.nn.Linear(16, 16).to(dtype)
    z1, z2, _, _ = views(dtype=dtype, seed=3)
    seg = support(dtype=dtype)
    keys = {"instance": torch.arange(8)}
    loss = nnclr_loss(z1, z2, pred(z1), pred(z2), keys, seg, TAU)
    g1, g2 = torch.autograd.grad(loss, [z1, z2])
    ref = ref_nnclr(z1, z2, pred(z1), pred(z2), seg.embeddings, TAU)
    r1, r2 = torch.autograd.grad(ref, [z1, z2])
    torch.testing.assert_close(g1, r1, **tol(dtype))
    torch.testing.assert_close(g2, r2, **tol(dtype))


def test_no_gradient_flows_through_the_neighbour():
    z1, z2, p1, p2 = views()
    seg = Segment(
        "queue", unit(48, 16, seed=100).requires_grad_(True), {"instance": torch.full((48,), -1)}
    )
    loss = nnclr_loss(z1, z2, p1, p2, {"instance": torch.arange(8)}, seg, TAU)
    loss.backward()
    for z in (z1, z2):
        assert z.grad is None or torch.all(z.grad == 0)
    assert seg.embeddings.grad is None
    assert p1.grad is not None and p1.grad.abs().sum() > 0
    assert p2.grad is not None and p2.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_queue_holding_z_gives_simclr_with_predictor(dtype):
    """methods.md 3.1 (a): Q contains z_i exactly => NN(z_i) = z_i, cross-view loss."""
    z1, z2, p1, p2 = views(dtype=dtype, seed=7)
    n1, n2 = F.normalize(z1.detach(), dim=1), F.normalize(z2.detach(), dim=1)
    others = unit(20, 16, seed=50, dtype=dtype)
    bank = torch.cat([others[:10], n1, others[10:], n2])
    seg = Segment(
        "queue",
        bank,
        {"instance": torch.cat([torch.full((10,), -1), torch.arange(8)]).repeat(2)},
    )
    keys = {"instance": torch.arange(8)}
    a, b = nnclr_pairs(z1, z2, p1, p2, keys, seg)
    assert torch.equal(a.info["nn_index"][:, 0], 10 + torch.arange(8))
    assert torch.equal(b.info["nn_index"][:, 0], 28 + torch.arange(8))
    assert torch.equal(a.info["nn_keys"]["instance"][:, 0], torch.arange(8))
    torch.testing.assert_close(a.anchors, n1, **tol(dtype))
    loss = 0.5 * (info_nce(a, TAU).loss + info_nce(b, TAU).loss)
    labels = torch.arange(8)
    pn1, pn2 = F.normalize(p1, dim=1), F.normalize(p2, dim=1)
    simclr_pred = 0.5 * (
        F.cross_entropy(n1 @ pn2.T / TAU, labels) + F.cross_entropy(n2 @ pn1.T / TAU, labels)
    )
    torch.testing.assert_close(loss, simclr_pred, **tol(dtype))


def test_nnclr_pairs_layout_and_queue_object():
    z1, z2, p1, p2 = views(dtype=torch.float64)
    q = Queue(32, 16, keys=("instance",), init="random")
    keys = {"instance": torch.arange(8), "label": torch.arange(8) % 3}
    a, b = nnclr_pairs(z1, z2, p1, p2, keys, q)
    for pairs, p in ((a, p2), (b, p1)):
        assert [s.name for s in pairs.segments] == ["batch"]
        assert pairs.anchors.dtype == torch.float64 and not pairs.anchors.requires_grad
        torch.testing.assert_close(pairs.segments[0].embeddings, F.normalize(p, dim=1))
        assert isinstance(pairs.positives, SameKey) and isinstance(pairs.negatives, Complement)
        # The queue stores no labels: the neighbours' labels are unknown (-1).
        assert torch.equal(pairs.info["nn_keys"]["label"], torch.full((8, 1), -1))
        torch.testing.assert_close(
            pairs.anchors, F.normalize(q.embeddings.double()[pairs.info["nn_index"][:, 0]], dim=1)
        )
    loss = nnclr_loss(z1, z2, p1, p2, keys, q, TAU)
    ref = ref_nnclr(z1, z2, p1, p2, q.embeddings.double(), TAU)
    torch.testing.assert_close(loss, ref)


def test_curator_keeps_keys_remaps_self_index_and_leaves_input():
    d = 16
    z = unit(5, d, seed=1).requires_grad_(True)
    bank = unit(12, d, seed=2)
    keys = {"instance": torch.arange(5)}
    p = Pairs(
        anchors=z,
        anchor_keys=keys,
        segments=(
            Segment("queue", bank, {"instance": torch.full((12,), -1)}),
            Segment("batch", z, keys),
        ),
        self_index=12 + torch.arange(5),
    )
    before = [z.detach().clone(), bank.clone()]
    info, pos, neg = dict(p.info), p.positives, p.negatives
    out = NearestNeighbourPositives()(p)
    assert torch.equal(out.self_index, torch.arange(5))
    assert out.anchor_keys["instance"].tolist() == list(range(5))
    assert [s.name for s in out.segments] == ["batch"]
    idx = out.info["nn_index"][:, 0]
    assert idx.tolist() == [r[0] for r in ref_knn(z.detach(), bank, 1)]
    torch.testing.assert_close(out.info["nn_similarity"][:, 0], (z.detach() * bank[idx]).sum(1))
    assert torch.equal(before[0], p.anchors.detach()) and torch.equal(before[1], bank)
    assert p.anchors is z and len(p.segments) == 2 and dict(p.info) == info
    assert (
        p.positives is pos
        and p.negatives is neg
        and torch.equal(p.self_index, 12 + torch.arange(5))
    )


def test_neighbour_precision():
    bank = unit(6, 4, seed=0)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    seg = Segment("queue", bank, {"instance": torch.full((6,), -1), "label": labels})
    x = bank[[0, 1, 2, 3]] + 1e-3 * randn(4, 4, seed=1)
    p = Pairs(
        anchors=x,
        anchor_keys={"instance": torch.arange(4), "label": torch.tensor([0, 2, -1, 0])},
        segments=(
            Segment(
                "batch",
                unit(4, 4, seed=2),
                {"instance": torch.arange(4), "label": torch.zeros(4, dtype=torch.long)},
            ),
            seg,
        ),
    )
    out = NearestNeighbourPositives()(p)
    assert out.info["nn_index"][:, 0].tolist() == [0, 1, 2, 3]
    # anchor 0: label 0 vs 0 hit; anchor 1: 2 vs 1 miss; anchor 2 unknown; anchor 3: hit.
    torch.testing.assert_close(neighbour_precision(out), torch.tensor(2 / 3))
    with pytest.raises(ValueError, match="nn_keys"):
        neighbour_precision(p)
    with pytest.raises(ValueError, match="colour"):
        neighbour_precision(out, key="colour")


# --------------------------------------------------------------------------- mean shift
def msf_pairs(b: int = 6, k_bank: int = 30, d: int = 16, dtype=torch.float64, seed: int = 0):
    """MSF layout: anchors = queries, batch = targets t, queue = bank with t enqueued first."""
    q = unit(b, d, seed=seed, dtype=dtype).requires_grad_(True)
    t = unit(b, d, seed=seed + 1, dtype=dtype)
    old = unit(k_bank - b, d, seed=seed + 2, dtype=dtype)
    bank = torch.cat([old, t])  # the targets are in the bank before the search
    inst = torch.arange(b)
    bank_inst = torch.cat([torch.arange(100, 100 + k_bank - b), inst])
    labels = torch.arange(b) % 2
    bank_labels = torch.cat([torch.arange(k_bank - b) % 2, labels])
    return Pairs(
        anchors=q,
        anchor_keys={"instance": inst, "label": labels},
        segments=(
            Segment("batch", t, {"instance": inst, "label": labels}),
            Segment("queue", bank, {"instance": bank_inst, "label": bank_labels}),
        ),
    )


def ref_msf_loss(q: torch.Tensor, t: torch.Tensor, bank: torch.Tensor, k: int) -> torch.Tensor:
    """UMBCvision/MSF: NN_k of t by 2 - 2 t.bank; loss mean_b (1/k) sum_j (2 - 2 q.bank_j)."""
    losses = []
    for b in range(q.shape[0]):
        dist_t = 2 - 2 * (bank @ t[b])
        nn = torch.topk(dist_t, k, largest=False).indices
        losses.append(torch.stack([2 - 2 * (q[b] @ bank[j]) for j in nn]).mean())
    return torch.stack(losses).mean()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [1, 3, 5])
def test_mean_shift_mode_matches_loop(dtype, k):
    p = msf_pairs(dtype=dtype)
    t = p.segments[0].embeddings
    bank = p.segments[1].embeddings
    out = NearestNeighbourPositives(k=k, replace="positives")(p)
    assert isinstance(out.positives, TopK)
    nn = out.info["nn_index"]
    ref = ref_knn(t, bank, k)
    assert [sorted(r) for r in nn.tolist()] == [sorted(r) for r in ref]
    # Positives: exactly the k neighbours' queue columns.
    sl = out.segment_slice("queue")
    dense = out.dense_positives()
    expect = torch.zeros_like(dense)
    for b, cols in enumerate(ref):
        expect[b, [sl.start + j for j in cols]] = 1.0
    assert torch.equal(dense, expect)
    # MSF's loss on these pairs equals the per-anchor loop, value and gradient.
    loss = mean_shift_loss(out)
    (g,) = torch.autograd.grad(loss, p.anchors)
    ref_loss = ref_msf_loss(p.anchors, t, bank, k)
    (g_ref,) = torch.autograd.grad(ref_loss, p.anchors)
    torch.testing.assert_close(loss, ref_loss, **tol(dtype))
    torch.testing.assert_close(g, g_ref, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_mean_shift_mode_info_nce_matches_loop(dtype):
    """InfoNCE on the k-NN positives; the old instance positives are neither pos nor neg."""
    k = 3
    p = msf_pairs(dtype=dtype, seed=5)
    out = NearestNeighbourPositives(k=k, replace="positives")(p)
    loss = info_nce(out, TAU).loss
    (g,) = torch.autograd.grad(loss, p.anchors)
    cands = p.candidates
    c_inst = p.candidate_keys["instance"]
    t, bank = p.segments[0].embeddings, p.segments[1].embeddings
    nb = p.segments[0].embeddings.shape[0]
    losses = []
    for b in range(p.num_anchors):
        pos = [nb + j for j in ref_knn(t[b : b + 1], bank, k)[0]]
        neg = [j for j in range(cands.shape[0]) if j not in pos and c_inst[j] != b]
        s = cands @ p.anchors[b] / TAU
        log_den = torch.logsumexp(s[pos + neg], dim=0)
        losses.append(-torch.stack([s[j] - log_den for j in pos]).mean())
    ref = torch.stack(losses).mean()
    (g_ref,) = torch.autograd.grad(ref, p.anchors)
    torch.testing.assert_close(loss, ref, **tol(dtype))
    torch.testing.assert_close(g, g_ref, **tol(dtype))


def test_mean_shift_k1_is_byol():
    """methods.md 3.2: with topk = 1 (target enqueued first), L = mean(2 - 2 q.t)."""
    p = msf_pairs()
    out = NearestNeighbourPositives(k=1, replace="positives")(p)
    t = p.segments[0].embeddings
    assert torch.equal(out.info["nn_index"][:, 0], 24 + torch.arange(6))
    torch.testing.assert_close(mean_shift_loss(out), (2 - 2 * (p.anchors * t).sum(1)).mean())


def test_positives_mode_search_anchors_keep_positives_and_padding():
    p = msf_pairs(k_bank=8, b=6)
    q, bank = p.anchors.detach(), p.segments[1].embeddings
    out = NearestNeighbourPositives(
        k=2, replace="positives", search="anchors", keep_positives=True
    )(p)
    assert isinstance(out.positives, Union)
    assert [sorted(r) for r in out.info["nn_index"].tolist()] == [
        sorted(r) for r in ref_knn(q, bank, 2)
    ]
    old = p.dense_positives()
    new = out.dense_positives()
    assert torch.equal(new >= old, torch.ones_like(new, dtype=torch.bool))
    # More neighbours asked than the support holds: empty slots are -1.
    out = NearestNeighbourPositives(k=10, replace="positives")(p)
    nn = out.info["nn_index"]
    assert nn.shape == (6, 10) and (nn[:, 8:] == -1).all() and (nn[:, :8] >= 0).all()
    assert (out.info["nn_keys"]["label"][:, 8:] == -1).all()
    assert torch.equal(out.dense_positives().sum(1), torch.full((6,), 8.0, dtype=torch.float64))


def test_positives_mode_anchor_without_positive_gets_no_neighbour():
    p = msf_pairs()
    p = p.replace(
        anchor_keys={"instance": torch.tensor([0, 1, 2, 3, 4, 77]), "label": p.anchor_keys["label"]}
    )
    out = NearestNeighbourPositives(k=2, replace="positives")(p)
    assert (out.info["nn_index"][5] == -1).all()
    res = info_nce(out, TAU)
    assert not bool(res.valid[5]) and bool(res.valid[:5].all())


def test_positives_mode_leaves_input_untouched():
    p = msf_pairs()
    before = [p.anchors.detach().clone()] + [s.embeddings.clone() for s in p.segments]
    pos, neg, info = p.positives, p.negatives, dict(p.info)
    NearestNeighbourPositives(k=3, replace="positives")(p)
    after = [p.anchors.detach()] + [s.embeddings for s in p.segments]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert p.positives is pos and p.negatives is neg and dict(p.info) == info


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"k": 0}, "k"),
        ({"k": 1.5}, "k"),
        ({"k": 2}, "k must be 1"),
        ({"segment": "bank"}, "segment"),
        ({"replace": "both"}, "replace"),
        ({"search": "target", "replace": "positives"}, "search"),
        ({"search": "positive"}, "search"),
        ({"keep_positives": True}, "keep_positives"),
        ({"keep_positives": 1, "replace": "positives"}, "keep_positives"),
        ({"chunk_size": 0}, "chunk_size"),
    ],
)
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        NearestNeighbourPositives(**kwargs)


def test_bad_inputs_at_call_time():
    p = msf_pairs()
    with pytest.raises(ValueError, match="segment 'synthetic'"):
        NearestNeighbourPositives(segment="synthetic")(p)
    empty = p.replace(
        segments=(
            p.segments[0],
            Segment(
                "queue",
                p.anchors.new_zeros(0, 16).detach(),
                {
                    "instance": torch.zeros(0, dtype=torch.long),
                    "label": torch.zeros(0, dtype=torch.long),
                },
            ),
        )
    )
    with pytest.raises(ValueError, match="empty"):
        NearestNeighbourPositives()(empty)
    cols = torch.zeros(6, 1, dtype=torch.long)
    with pytest.raises(ValueError, match="positives"):
        NearestNeighbourPositives()(p.replace(positives=TopK(cols)))
    with pytest.raises(ValueError, match="negatives"):
        NearestNeighbourPositives()(p.replace(negatives=InSegment("queue")))
    only = p.replace(segments=(p.segments[1],))
    with pytest.raises(ValueError, match="only the support"):
        NearestNeighbourPositives()(only)


def test_bad_inputs_of_functions():
    x = randn(4, 8, seed=0)
    with pytest.raises(ValueError, match="bank"):
        nearest_neighbours(x, randn(5, 7, seed=1))
    with pytest.raises(ValueError, match="empty"):
        nearest_neighbours(x, randn(0, 8, seed=1))
    with pytest.raises(ValueError, match="k must"):
        nearest_neighbours(x, randn(3, 8, seed=1), k=4)
    with pytest.raises(ValueError, match="x must"):
        nearest_neighbours(randn(8, seed=0), randn(3, 8, seed=1))
    with pytest.raises(ValueError, match="chunk_size"):
        nearest_neighbours(x, randn(3, 8, seed=1), chunk_size=0)
    z1, z2, p1, p2 = views()
    seg = support()
    with pytest.raises(ValueError, match="p2"):
        nnclr_pairs(z1, z2, p1, p2[:4], {"instance": torch.arange(8)}, seg)
    with pytest.raises(ValueError, match="instance"):
        nnclr_pairs(z1, z2, p1, p2, {"label": torch.arange(8)}, seg)
    with pytest.raises(ValueError, match="replace='anchors'"):
        nnclr_pairs(
            z1,
            z2,
            p1,
            p2,
            {"instance": torch.arange(8)},
            seg,
            curator=NearestNeighbourPositives(replace="positives"),
        )


def test_nnclr_pairs_rejects_a_non_queue():
    z1, z2, p1, p2 = views()
    with pytest.raises(ValueError, match="Queue or a Segment"):
        nnclr_pairs(z1, z2, p1, p2, {"instance": torch.arange(8)}, torch.zeros(3, 16))  # type: ignore[arg-type]
