"""MoCHi (Kalantidis et al. 2020; survey 4.1) against per-anchor reference loops.

Properties from shared/reference/methods.md 8.1 and section 0 item 5 (the "mixes are
harder than the hardest real negative" property is false and is not asserted).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pairsmith.core.pairs import Pairs, Segment
from pairsmith.core.registry import create_curator, list_entries
from pairsmith.core.weights import InSegment, Mask, SameKey
from pairsmith.functional.infonce import info_nce
from pairsmith.losses.infonce import MoCoLoss
from pairsmith.negatives.hard_negative_selection import mochi as mochi_module
from pairsmith.negatives.hard_negative_selection.mochi import MoCHi

DTYPES = [torch.float32, torch.float64]
TAU = 0.2


def tol(dtype: torch.dtype) -> dict[str, float]:
    return (
        {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-12}
    )


def unit(*shape: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1).to(dtype)


def moco_pairs(
    b: int = 6, k: int = 40, d: int = 16, dtype: torch.dtype = torch.float64, seed: int = 0
) -> Pairs:
    """MoCo layout: anchors = queries (with grad), batch = keys, negatives = the queue."""
    q = unit(b, d, seed=seed, dtype=dtype).requires_grad_(True)
    keys_ = unit(b, d, seed=seed + 1, dtype=dtype)
    queue = unit(k, d, seed=seed + 2, dtype=dtype)
    inst = torch.arange(b)
    return Pairs(
        anchors=q,
        anchor_keys={"instance": inst},
        segments=(
            Segment("batch", keys_, {"instance": inst}),
            Segment("queue", queue, {"instance": torch.arange(1000, 1000 + k)}),
        ),
        positives=SameKey("instance"),
        negatives=InSegment("queue"),
    )


def segment(p: Pairs, name: str) -> torch.Tensor:
    return next(s for s in p.segments if s.name == name).embeddings


def coefficients(p: Pairs) -> dict:
    return p.info["mochi/coefficients"]


# --------------------------------------------------------------------------- registry
def test_registered_with_taxonomy():
    entry = next(e for e in list_entries("curator") if e.name.endswith("mochi"))
    assert entry.name == "negatives.hard_negative_selection.mochi"
    assert entry.taxonomy == ("negatives", "hard_negative_selection")
    # Compared by name: tests/core/test_registry.py reloads the registered modules, so
    # the registry may hold a newer class object than the one imported here.
    assert (entry.obj.__module__, entry.obj.__qualname__) == (
        MoCHi.__module__,
        MoCHi.__qualname__,
    )
    c = create_curator("negatives.hard_negative_selection.mochi", num_hard=8, seed=None)
    assert (c.num_hard, c.num_mix, c.num_query_mix, c.query_beta_max) == (8, 1024, 128, 0.5)


# --------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("dtype", DTYPES)
def test_shapes_unit_norm_weights_and_no_gradient(dtype):
    p = moco_pairs(dtype=dtype)
    out = MoCHi(num_hard=10, num_mix=7, num_query_mix=3, seed=0)(p)
    assert out.per_anchor is not None and out.per_anchor_negatives is not None
    assert out.per_anchor.shape == (6, 10, 16)
    assert out.per_anchor.dtype == dtype
    assert torch.equal(out.per_anchor_negatives, torch.ones(6, 10, dtype=dtype))
    assert out.per_anchor_positives is None
    norms = out.per_anchor.norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    # The mixes are constants: no graph, even though the query mixes use q.
    assert not out.per_anchor.requires_grad and out.per_anchor.grad_fn is None
    # Same anchors and segments (the curator only adds per-anchor candidates).
    assert out.anchors is p.anchors and out.segments == p.segments


def test_input_pairs_untouched():
    p = moco_pairs()
    existing = unit(6, 2, 16, seed=9)
    p = p.replace(per_anchor=existing, per_anchor_negatives=torch.full((6, 2), 0.5))
    before = [p.anchors.detach().clone(), existing.clone(), p.per_anchor_negatives.clone()]
    before += [s.embeddings.clone().detach() for s in p.segments]
    info, pos, neg = dict(p.info), p.positives, p.negatives
    MoCHi(num_hard=5, num_mix=4, num_query_mix=2, seed=1)(p)
    after = [p.anchors.detach(), p.per_anchor, p.per_anchor_negatives]
    after += [s.embeddings.detach() for s in p.segments]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert dict(p.info) == info and p.positives is pos and p.negatives is neg
    assert p.per_anchor is existing


def test_concatenates_existing_per_anchor_slot():
    p = moco_pairs()
    existing = unit(6, 2, 16, seed=9)
    pp = torch.tensor([[1.0, 0.0]]).repeat(6, 1)
    p = p.replace(per_anchor=existing, per_anchor_positives=pp)  # negatives None = all ones
    out = MoCHi(num_hard=5, num_mix=4, num_query_mix=2, seed=1)(p)
    assert out.per_anchor.shape == (6, 8, 16)
    assert torch.equal(out.per_anchor[:, :2], existing)
    assert torch.equal(out.per_anchor_positives, torch.cat([pp, torch.zeros(6, 6)], 1))
    assert torch.equal(out.per_anchor_negatives, torch.ones(6, 8))


# --------------------------------------------------------------------------- selection
def ref_hardest(p: Pairs, n: int) -> list[set[int]]:
    """Per-anchor loop: the n queue rows with the largest q.n among negative columns."""
    sl = p.segment_slice("queue")
    neg = p.dense_negatives()[:, sl]
    pos = p.dense_positives()[:, sl]
    queue = segment(p, "queue")
    out = []
    for b in range(p.num_anchors):
        cand = [j for j in range(queue.shape[0]) if neg[b, j] > 0 and pos[b, j] == 0]
        if not cand:
            out.append(set())
            continue
        sims = torch.stack([p.anchors[b].detach() @ queue[j] for j in cand])
        order = sims.argsort(descending=True)[: min(n, len(cand))]
        out.append({cand[int(i)] for i in order})
    return out


@pytest.mark.parametrize("n", [1, 7, 40, 100])
def test_hard_negative_selection_matches_loop(n):
    p = moco_pairs()
    out = MoCHi(num_hard=n, num_mix=3, num_query_mix=2, seed=0, record_coefficients=True)(p)
    c = coefficients(out)
    ref = ref_hardest(p, n)
    for b in range(6):
        cnt = int(c["hard_count"][b])
        assert cnt == len(ref[b])
        assert set(c["hard_index"][b, :cnt].tolist()) == ref[b]
    # Sorted hardest first.
    q = p.anchors.detach()
    sims = torch.einsum("bd,bnd->bn", q, segment(p, "queue")[c["hard_index"]])
    assert (sims[:, :-1] >= sims[:, 1:]).all()
    # Mix parents are drawn from the hard pool only.
    pool = [set(c["hard_index"][b, : int(c["hard_count"][b])].tolist()) for b in range(6)]
    for name in ("query_mix_index",):
        for b in range(6):
            assert set(c[name][b].tolist()) <= pool[b]
    for idx in c["mix_index"]:
        for b in range(6):
            assert set(idx[b].tolist()) <= pool[b]


def test_zero_weight_columns_and_positives_are_not_candidates():
    p = moco_pairs(b=4, k=20)
    sl = p.segment_slice("queue")
    g = torch.Generator().manual_seed(3)
    mask = torch.zeros(4, p.num_candidates, dtype=torch.bool)
    mask[:, sl] = torch.rand(4, 20, generator=g) > 0.5
    mask[3, :] = False  # anchor 3 has no negative at all
    # Make queue row 0 a positive of anchor 0 (same instance): never a hard negative.
    qkeys = torch.arange(1000, 1020)
    qkeys[0] = 0
    segs = (p.segments[0], Segment("queue", segment(p, "queue"), {"instance": qkeys}))
    mask[0, sl.start] = True
    p = p.replace(segments=segs, negatives=Mask(mask))
    out = MoCHi(num_hard=6, num_mix=5, num_query_mix=5, seed=0, record_coefficients=True)(p)
    c = coefficients(out)
    ref = ref_hardest(p, 6)
    for b in range(4):
        cnt = int(c["hard_count"][b])
        assert set(c["hard_index"][b, :cnt].tolist()) == ref[b]
        assert all(bool(mask[b, sl.start + j]) for j in ref[b])
    assert 0 not in ref[0]
    # No candidate: the anchor's mixes get weight 0 (ignored by the loss).
    assert int(c["hard_count"][3]) == 0
    assert torch.equal(out.per_anchor_negatives[3], torch.zeros(10))
    assert torch.equal(out.per_anchor_negatives[:3], torch.ones(3, 10))


# --------------------------------------------------------------------------- properties
def test_convexity_bound_and_type2_is_nearer_than_its_source():
    p = moco_pairs(b=16, k=256, d=16, seed=4)
    out = MoCHi(num_hard=32, num_mix=64, num_query_mix=64, seed=5, record_coefficients=True)(p)
    c = coefficients(out)
    q = p.anchors.detach()
    queue = segment(p, "queue")
    ci, cj = c["mix_index"]
    si = torch.einsum("bd,bsd->bs", q, queue[ci])
    sj = torch.einsum("bd,bsd->bs", q, queue[cj])
    alpha = c["alpha"]
    assert ((alpha >= 0) & (alpha < 1)).all()
    h1 = out.per_anchor[:, :64]
    sh = torch.einsum("bd,bsd->bs", q, h1)
    parents_pos = (si > 0) & (sj > 0)
    assert parents_pos.sum() > 100
    bound = alpha * si + (1 - alpha) * sj
    assert (sh[parents_pos] >= bound[parents_pos] - 1e-12).all()
    # The mixes are the convex combinations, normalised.
    expect = F.normalize(alpha[..., None] * queue[ci] + (1 - alpha[..., None]) * queue[cj], dim=-1)
    torch.testing.assert_close(h1, expect, rtol=0, atol=1e-14)

    beta = c["beta"]
    assert ((beta >= 0) & (beta < 0.5)).all()
    sk = torch.einsum("bd,bsd->bs", q, queue[c["query_mix_index"]])
    sh2 = torch.einsum("bd,bsd->bs", q, out.per_anchor[:, 64:])
    assert (sh2 > sk).all()


def test_mixes_are_not_generally_harder_than_the_hardest_negative():
    """methods.md 0.5: the tempting property is false; what holds is weaker."""
    p = moco_pairs(b=32, k=1024, d=16, seed=6)
    out = MoCHi(num_hard=64, num_mix=128, num_query_mix=0, seed=7)(p)
    q = p.anchors.detach()
    hard = out.info["mochi/hardest_similarity"]
    sh = torch.einsum("bd,bsd->bs", q, out.per_anchor)
    queue_sims = q @ segment(p, "queue").T
    hardest = queue_sims.max(dim=1).values
    torch.testing.assert_close(hard, hardest.mean())
    frac = (sh > hardest[:, None]).double().mean()
    torch.testing.assert_close(out.info["mochi/mix_above_hardest"], frac)
    # Not generally harder than the hardest real negative ...
    assert frac < 0.5
    assert sh.mean() < hardest.mean()
    # ... but on average harder than the mean of the hard pool.
    assert out.info["mochi/mix_similarity"] > out.info["mochi/hard_pool_similarity"]
    pool = queue_sims.topk(64, dim=1).values.mean()
    torch.testing.assert_close(out.info["mochi/hard_pool_similarity"], pool)
    torch.testing.assert_close(out.info["mochi/mix_similarity"], sh.mean())


# --------------------------------------------------------------------------- blocked build
def straightforward_mixes(p: Pairs, out: Pairs) -> torch.Tensor:
    """The mixes rebuilt from the recorded draws with whole-tensor operations."""
    c = coefficients(out)
    q = p.anchors.detach()
    queue = segment(p, "queue")
    mixes = []
    if "alpha" in c:
        ci, cj = c["mix_index"]
        a = c["alpha"][..., None]
        mixes.append(F.normalize(a * queue[ci] + (1 - a) * queue[cj], dim=-1))
    if "beta" in c:
        be = c["beta"][..., None]
        n = queue[c["query_mix_index"]]
        mixes.append(F.normalize(be * q[:, None, :] + (1 - be) * n, dim=-1))
    return torch.cat(mixes, dim=1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("existing", [False, True])
def test_blocked_build_equals_the_straightforward_computation(dtype, existing, monkeypatch):
    """Mixes and diagnostics built in row blocks (3, 3, 2 rows) match whole tensors."""
    b, s, s2, d = 8, 6, 3, 16
    monkeypatch.setattr(mochi_module, "_MIX_BLOCK_ELEMENTS", 3 * (s + s2) * d)
    p = moco_pairs(b=b, k=64, d=d, dtype=dtype, seed=21)
    s_old = 2 if existing else 0
    if existing:
        p = p.replace(
            per_anchor=unit(b, s_old, d, seed=22, dtype=dtype),
            per_anchor_negatives=torch.full((b, s_old), 0.5, dtype=dtype),
        )
    out = MoCHi(num_hard=10, num_mix=s, num_query_mix=s2, seed=4, record_coefficients=True)(p)
    mixes = straightforward_mixes(p, out)
    assert out.per_anchor.shape == (b, s_old + s + s2, d)
    torch.testing.assert_close(out.per_anchor[:, s_old:], mixes, **tol(dtype))
    if existing:
        assert torch.equal(out.per_anchor[:, :s_old], p.per_anchor)
        expect = torch.cat([torch.full((b, s_old), 0.5), torch.ones(b, s + s2)], 1).to(dtype)
        assert torch.equal(out.per_anchor_negatives, expect)
    # The diagnostics against an einsum over the stored mixes.
    q = p.anchors.detach()
    sims = torch.einsum("bd,bsd->bs", q, out.per_anchor[:, s_old:])
    hardest = (q @ segment(p, "queue").T).max(dim=1).values
    for name, part in (("mix", sims[:, :s]), ("query_mix", sims[:, s:])):
        torch.testing.assert_close(out.info[f"mochi/{name}_similarity"], part.mean(), **tol(dtype))
        above = (part > hardest[:, None]).to(dtype).mean()
        torch.testing.assert_close(out.info[f"mochi/{name}_above_hardest"], above)


def test_documented_draw_order():
    """Type-1 first slots, second slots, alphas; type-2 slots, betas (class docstring)."""
    b, n, s, s2, seed = 6, 10, 5, 4, 9
    p = moco_pairs(b=b, k=40)
    out = MoCHi(num_hard=n, num_mix=s, num_query_mix=s2, seed=seed, record_coefficients=True)(p)
    c = coefficients(out)
    g = torch.Generator().manual_seed(seed)

    def rows(u: torch.Tensor) -> torch.Tensor:
        return c["hard_index"].gather(1, (u * n).long().clamp_max(n - 1))

    ci, cj = rows(torch.rand(b, s, generator=g)), rows(torch.rand(b, s, generator=g))
    alpha = torch.rand(b, s, 1, generator=g)[..., 0].double()
    ck = rows(torch.rand(b, s2, generator=g))
    beta = torch.rand(b, s2, 1, generator=g)[..., 0].double() * 0.5
    assert torch.equal(c["mix_index"][0], ci) and torch.equal(c["mix_index"][1], cj)
    assert torch.equal(c["query_mix_index"], ck)
    assert torch.equal(c["alpha"], alpha) and torch.equal(c["beta"], beta)


# --------------------------------------------------------------------------- loss
def ref_moco_loss_with_mixes(p: Pairs, out: Pairs, tau: float) -> torch.Tensor:
    """Per-query logits [l_pos, l_neg(queue), l_mix] / tau, CE with label 0.

    The mixes are rebuilt from the recorded coefficients (not read from ``out``).
    """
    c = coefficients(out)
    q = p.anchors
    k = segment(p, "batch")
    queue = segment(p, "queue")
    losses = []
    for b in range(p.num_anchors):
        mixes = []
        if "alpha" in c:
            ci, cj = c["mix_index"]
            for s in range(ci.shape[1]):
                a = c["alpha"][b, s]
                mixes.append(F.normalize(a * queue[ci[b, s]] + (1 - a) * queue[cj[b, s]], dim=0))
        if "beta" in c:
            for s in range(c["beta"].shape[1]):
                be = c["beta"][b, s]
                n = queue[c["query_mix_index"][b, s]]
                mixes.append(F.normalize(be * q[b].detach() + (1 - be) * n, dim=0))
        l_pos = (q[b] @ k[b])[None]
        l_neg = queue @ q[b]
        l_mix = torch.stack([q[b] @ h for h in mixes])
        logits = torch.cat([l_pos, l_neg, l_mix]) / tau
        losses.append(-torch.log_softmax(logits, dim=0)[0])
    return torch.stack(losses).mean()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("s,s2", [(5, 3), (4, 0), (0, 6)])
def test_moco_loss_with_mixes_matches_loop(dtype, s, s2):
    p = moco_pairs(dtype=dtype, seed=11)
    cur = MoCHi(num_hard=12, num_mix=s, num_query_mix=s2, seed=3, record_coefficients=True)
    out = cur(p)
    loss = MoCoLoss(TAU)(out)
    (g,) = torch.autograd.grad(loss, p.anchors)
    ref = ref_moco_loss_with_mixes(p, out, TAU)
    (g_ref,) = torch.autograd.grad(ref, p.anchors)
    torch.testing.assert_close(loss, ref, **tol(dtype))
    torch.testing.assert_close(g, g_ref, **tol(dtype))
    # The mixes add negatives: the loss grows.
    assert loss > MoCoLoss(TAU)(p)


@pytest.mark.parametrize("dtype", DTYPES)
def test_moco_loss_with_mixes_chunked(dtype):
    p = moco_pairs(dtype=dtype, seed=12)
    out = MoCHi(num_hard=12, num_mix=5, num_query_mix=3, seed=3)(p)
    full = info_nce(out, TAU, chunk_size=None).loss
    chunked = info_nce(out, TAU, chunk_size=2).loss
    torch.testing.assert_close(full, chunked, **tol(dtype))


def test_no_mixes_is_plain_moco_exactly():
    p = moco_pairs()
    cur = MoCHi(num_hard=8, num_mix=0, num_query_mix=0)
    out = cur(p)
    assert out is p
    a = MoCoLoss(TAU)(p)
    b = MoCoLoss(TAU, curators=[cur])(p)
    assert torch.equal(a, b)
    ga = torch.autograd.grad(a, p.anchors)[0]
    gb = torch.autograd.grad(b, p.anchors)[0]
    assert torch.equal(ga, gb)


def test_mixes_carry_no_gradient_into_queue_or_through_mix():
    """d loss / d q equals the loss with the mixes frozen as leaf constants."""
    p = moco_pairs(seed=13)
    out = MoCHi(num_hard=10, num_mix=6, num_query_mix=6, seed=0)(p)
    frozen = out.replace(per_anchor=out.per_anchor.clone().requires_grad_(True))
    loss = info_nce(frozen, TAU).loss
    gq, gmix = torch.autograd.grad(loss, [p.anchors, frozen.per_anchor])
    (g_out,) = torch.autograd.grad(info_nce(out, TAU).loss, p.anchors)
    torch.testing.assert_close(gq, g_out, rtol=0, atol=0)
    assert gmix.abs().sum() > 0  # they would get gradient if they were not constants


# --------------------------------------------------------------------------- warm-up, RNG
def test_warmup_internal_counter_and_step_argument():
    p = moco_pairs()
    cur = MoCHi(num_hard=8, num_mix=2, num_query_mix=1, warmup_steps=2, seed=0)
    assert cur(p) is p and cur(p) is p
    assert cur(p).per_anchor is not None
    assert cur.num_steps == 3
    assert cur(p, step=1) is p
    assert cur(p, step=2).per_anchor is not None
    assert cur.num_steps == 3  # an explicit step does not advance the counter
    cur.eval()
    cur(p)
    assert cur.num_steps == 3  # nor does evaluation
    # The counter travels in the state dict.
    other = MoCHi(num_hard=8, num_mix=2, num_query_mix=1, warmup_steps=2, seed=0)
    other.load_state_dict(cur.state_dict())
    assert other.num_steps == 3


def test_seeded_generator_is_reproducible_and_restorable():
    p = moco_pairs()

    def make():
        return MoCHi(num_hard=8, num_mix=4, num_query_mix=2, seed=42)

    a, b = make(), make()
    x1, y1 = a(p).per_anchor, b(p).per_anchor
    assert torch.equal(x1, y1)
    state = a.state_dict()
    x2 = a(p).per_anchor
    assert not torch.equal(x1, x2)  # the generator advanced
    c = make()
    c.load_state_dict(state)
    assert torch.equal(c(p).per_anchor, x2)
    # Unseeded: torch's global RNG.
    torch.manual_seed(0)
    u1 = MoCHi(num_hard=8, num_mix=4, num_query_mix=2)(p).per_anchor
    torch.manual_seed(0)
    u2 = MoCHi(num_hard=8, num_mix=4, num_query_mix=2)(p).per_anchor
    assert torch.equal(u1, u2)


def test_vectorised_over_anchors_is_batch_consistent():
    """The hard pool of an anchor does not depend on the other anchors of the batch."""
    p = moco_pairs(b=6)
    full = MoCHi(num_hard=9, num_mix=1, num_query_mix=0, seed=0, record_coefficients=True)(p)
    for b in (0, 5):
        one = p.replace(
            anchors=p.anchors[b : b + 1],
            anchor_keys={"instance": torch.tensor([b])},
        )
        r = MoCHi(num_hard=9, num_mix=1, num_query_mix=0, seed=0, record_coefficients=True)(one)
        assert torch.equal(coefficients(r)["hard_index"][0], coefficients(full)["hard_index"][b])


def test_other_segment_and_small_segment():
    p = moco_pairs(b=4, k=3)
    # Fewer queue rows than num_hard: the pool is the whole queue.
    out = MoCHi(num_hard=50, num_mix=2, num_query_mix=2, seed=0, record_coefficients=True)(p)
    assert torch.equal(coefficients(out)["hard_count"], torch.full((4,), 3))
    # Negatives in a "synthetic" segment.
    syn = Segment("synthetic", unit(10, 16, seed=20), {"instance": torch.full((10,), -1)})
    p2 = p.replace(segments=(*p.segments, syn), negatives=InSegment("synthetic"))
    cur = MoCHi(num_hard=4, num_mix=2, num_query_mix=2, segment="synthetic", seed=0,
                record_coefficients=True)  # fmt: skip
    c = coefficients(cur(p2))
    assert int(c["hard_index"].max()) < 10


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"num_hard": 0}, "num_hard"),
        ({"num_hard": -3}, "num_hard"),
        ({"num_hard": 2.0}, "num_hard"),
        ({"num_mix": -1}, "num_mix"),
        ({"num_query_mix": -1}, "num_query_mix"),
        ({"query_beta_max": 0.0}, "query_beta_max"),
        ({"query_beta_max": 0.6}, "query_beta_max"),
        ({"query_beta_max": -0.1}, "query_beta_max"),
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"segment": "memory"}, "segment"),
        ({"seed": "x"}, "seed"),
        ({"record_coefficients": 1}, "record_coefficients"),
    ],
)
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        MoCHi(**kwargs)


def test_missing_segment_and_bad_step():
    p = moco_pairs()
    with pytest.raises(ValueError, match="segment 'synthetic'"):
        MoCHi(num_hard=4, segment="synthetic")(p)
    with pytest.raises(ValueError, match="step"):
        MoCHi(num_hard=4)(p, step=-1)


def test_earlier_per_anchor_candidates_keep_their_gradient():
    p = moco_pairs()
    extra = unit(6, 2, 16, seed=7).requires_grad_(True)
    p = p.replace(per_anchor=extra)
    out = MoCHi(num_hard=8, num_mix=4, num_query_mix=2, seed=0)(p)
    assert out.per_anchor.shape == (6, 2 + 4 + 2, 16)
    torch.testing.assert_close(out.per_anchor[:, :2], extra)
    info_nce(out, 0.2).loss.backward()
    assert extra.grad is not None and bool(extra.grad.abs().sum() > 0)
