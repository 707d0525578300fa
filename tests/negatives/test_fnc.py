"""FNC (Huynh et al., WACV 2022; survey 4.2) against per-anchor loops of objective.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pairsmith.core.pairs import Pairs, Segment
from pairsmith.core.registry import create_curator, list_entries
from pairsmith.core.weights import Complement, SameKey
from pairsmith.functional.infonce import info_nce, nt_xent
from pairsmith.losses.infonce import InfoNCELoss
from pairsmith.negatives.false_negative_removal import FalseNegativeCancellation, SupportViews

DTYPES = [torch.float32, torch.float64]
TAU = 0.1

# The reference (objective.py) returns (2 / #views) * sum_views mean_images, i.e. twice the
# mean over all anchor views (SimCLR-TF scale, methods.md section 0 item 1); info_nce
# returns the mean. We compare ours == reference / SIMCLR_TF_FACTOR.
SIMCLR_TF_FACTOR = 2.0


def close(got: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    t = 2e-5 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(got, ref, rtol=t, atol=t)


def clustered_views(
    n: int,
    v: int,
    d: int,
    dtype: torch.dtype,
    seed: int = 0,
    clusters: int = 3,
    spread: float = 0.12,
) -> list[torch.Tensor]:
    """V views of N images drawn around a few class centres (so false negatives exist)."""
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(clusters, d, generator=g, dtype=torch.float64), dim=1)
    cls = torch.arange(n) % clusters
    img = F.normalize(
        centres[cls] + spread * torch.randn(n, d, generator=g, dtype=torch.float64), dim=1
    )
    views = [
        F.normalize(img + 0.15 * torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
        for _ in range(v)
    ]
    return [x.to(dtype).requires_grad_(True) for x in views]


def clone(views: list[torch.Tensor]) -> list[torch.Tensor]:
    return [x.detach().clone().requires_grad_(True) for x in views]


# ----------------------------------------------------------------- reference loops
def ref_detect(
    det_views: list[torch.Tensor],
    cand: torch.Tensor,
    own: list[list[int]],
    top_k: int,
    threshold: float,
    aggregation: str = "max",
) -> list[list[int]]:
    """Per-image detection: F_i = top-k(score) ∩ {score > threshold}, own columns out.

    det_views[i]: [V_i, D] detection views of image i; own[i]: columns of image i.
    """
    out = []
    for i, zv in enumerate(det_views):
        scores = []
        for c in range(cand.shape[0]):
            if c in own[i]:
                continue
            dots = torch.stack([zv[v] @ cand[c] for v in range(zv.shape[0])])
            s = dots.max() if aggregation == "max" else dots.mean()
            scores.append((float(s), c))
        scores.sort(key=lambda t: -t[0])
        out.append(sorted(c for s, c in scores[:top_k] if s > threshold))
    return out


def ref_fnc_attraction(
    views: list[torch.Tensor], tau: float, top_k: int, threshold: float
) -> tuple[torch.Tensor, list[list[int]]]:
    """objective.py::add_contrastive_loss (single replica) as a per-anchor loop.

    views: 2 + S views [N, D] (normalised). Returns (SimCLR-TF-scaled loss, F per image).
    """
    v, n = len(views), views[0].shape[0]
    cand = torch.cat(views)  # column j = view j // n of image j % n
    own = [[a * n + i for a in range(v)] for i in range(n)]
    with torch.no_grad():
        det = [torch.stack([x[i] for x in views]).detach() for i in range(n)]
        fn = ref_detect(det, cand.detach(), own, top_k, threshold)
    total = cand.new_zeros(())
    for a in range(v):
        per = []
        for i in range(n):
            row = a * n + i
            logits = cand @ cand[row] / tau
            others = [j for j in range(v * n) if j != row]
            log_den = torch.logsumexp(logits[others], dim=0)
            num = sum(logits[b * n + i] for b in range(v) if b != a) + sum(
                (logits[j] for j in fn[i]), cand.new_zeros(())
            )
            per.append(-num / (v - 1.0 + len(fn[i])) + log_den)
        total = total + torch.stack(per).mean()
    return total * 2.0 / v, fn


def ref_elimination(
    views: list[torch.Tensor], tau: float, fn: list[list[int]], f_in_denominator: bool = False
) -> torch.Tensor:
    """Per-anchor L_elim: mean over the instance positives p of
    -log(exp(s_p) / sum_{k not in F_i, k != self} exp(s_k)); returns [V*N] losses."""
    v, n = len(views), views[0].shape[0]
    cand = torch.cat(views)
    out = []
    for a in range(v):
        for i in range(n):
            row = a * n + i
            logits = cand @ cand[row] / tau
            keep = [j for j in range(v * n) if j != row and (f_in_denominator or j not in fn[i])]
            log_den = torch.logsumexp(logits[keep], dim=0)
            pos = [b * n + i for b in range(v) if b != a]
            out.append(-torch.stack([logits[p] - log_den for p in pos]).mean())
    return torch.stack(out)


def simclr_tf(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> torch.Tensor:
    """google-research/simclr objective.py (twice the 2N-anchor mean NT-Xent)."""
    n = z1.shape[0]
    eye = torch.eye(n, dtype=z1.dtype)
    ab, ba = z1 @ z2.T / tau, z2 @ z1.T / tau
    aa, bb = z1 @ z1.T / tau - 1e9 * eye, z2 @ z2.T / tau - 1e9 * eye
    lbl = torch.arange(n)
    la = F.cross_entropy(torch.cat([ab, aa], 1), lbl, reduction="none")
    lb = F.cross_entropy(torch.cat([ba, bb], 1), lbl, reduction="none")
    return (la + lb).mean()


def ours(
    views: list[torch.Tensor], fnc: FalseNegativeCancellation, tau: float = TAU, support=None
) -> tuple[torch.Tensor, Pairs]:
    n = views[0].shape[0]
    pairs = Pairs.from_views(views, {"instance": torch.arange(n)})
    curated = fnc(pairs, support)
    return info_nce(curated, tau, "all", "mean_log").loss, curated


def fn_sets(curated: Pairs, n: int) -> list[list[int]]:
    cols = curated.info["false_negatives"]
    return [sorted(int(c) for c in cols[i] if c >= 0) for i in range(n)]


# ----------------------------------------------------------------- attraction = code
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_views", [2, 4])  # 4 = 2 main + S=2 support views (as coded)
def test_attraction_matches_objective_py(dtype: torch.dtype, num_views: int) -> None:
    v1 = clustered_views(12, num_views, 16, dtype, seed=1)
    v2 = clone(v1)
    ref, ref_fn = ref_fnc_attraction(v1, TAU, top_k=3, threshold=0.7)
    got, curated = ours(v2, FalseNegativeCancellation("attraction", top_k=3, threshold=0.7))
    # Detection is non-trivial: some images find nothing, some are capped by top-k.
    sizes = [len(f) for f in ref_fn]
    assert min(sizes) < 3 and max(sizes) == 3 and sum(sizes) > 0
    assert fn_sets(curated, 12) == ref_fn
    # Every view of one image gets the same F.
    cols = curated.info["false_negatives"]
    for a in range(1, num_views):
        assert torch.equal(cols[a * 12 : (a + 1) * 12], cols[:12])
    close(got, ref / SIMCLR_TF_FACTOR, dtype)
    ref.backward()
    got.backward()
    for x1, x2 in zip(v1, v2, strict=True):
        assert x1.grad is not None and x2.grad is not None
        close(x2.grad * SIMCLR_TF_FACTOR, x1.grad, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_attraction_through_infonce_loss_module(dtype: torch.dtype) -> None:
    v1 = clustered_views(9, 2, 8, dtype, seed=2)
    ref, _ = ref_fnc_attraction(v1, 0.2, top_k=10, threshold=0.7)
    loss_fn = InfoNCELoss(0.2, "all", "mean_log", curators=[FalseNegativeCancellation()])
    got = loss_fn(Pairs.from_views(v1, {"instance": torch.arange(9)}))
    close(got, ref / SIMCLR_TF_FACTOR, dtype)


def test_attraction_leaves_false_negatives_in_denominator() -> None:
    views = clustered_views(12, 2, 16, torch.float64, seed=1)
    fnc = FalseNegativeCancellation("attraction", top_k=3, threshold=0.7)
    _, curated = ours(views, fnc)
    fn = fn_sets(curated, 12)
    assert any(fn)
    pos, neg = curated.dense_positives(), curated.dense_negatives()
    for row in range(24):
        for c in fn[row % 12]:
            assert pos[row, c] == 1  # F is a positive (numerator) ...
        # ... and the denominator (positives ∪ negatives, "all") is every column but self.
        in_den = (pos > 0) | (neg > 0)
        assert in_den[row].sum() == 23 and not in_den[row, row]
    # Per anchor: mean over positives of s_p - LSE(all but self), F included in the LSE.
    out = info_nce(curated, TAU, "all", "mean_log")
    z = torch.cat(views).detach()
    for row in range(24):
        i = row % 12
        logits = z @ z[row] / TAU
        others = [j for j in range(24) if j != row]
        pos_cols = [(row + 12) % 24, *fn[i]]
        want = -(logits[pos_cols] - torch.logsumexp(logits[others], 0)).mean()
        torch.testing.assert_close(out.losses[row], want)
        if fn[i]:
            keep = [j for j in others if j not in fn[i]]
            dropped = -(logits[pos_cols] - torch.logsumexp(logits[keep], 0)).mean()
            assert not torch.allclose(out.losses[row], dropped)


# ----------------------------------------------------------------- elimination
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_views", [2, 3])
def test_elimination_matches_its_loop(dtype: torch.dtype, num_views: int) -> None:
    v1 = clustered_views(12, num_views, 16, dtype, seed=3)
    v2 = clone(v1)
    fnc = FalseNegativeCancellation("elimination", top_k=4, threshold=0.6)
    got, curated = ours(v2, fnc)
    fn = fn_sets(curated, 12)
    with torch.no_grad():
        det = [torch.stack([x[i] for x in v1]) for i in range(12)]
        own = [[a * 12 + i for a in range(num_views)] for i in range(12)]
        assert fn == ref_detect(det, torch.cat(v1).detach(), own, 4, 0.6)
    assert sum(map(len, fn)) > 0
    # F is removed from the negatives and is not a positive.
    neg, pos = curated.dense_negatives(), curated.dense_positives()
    for row in range(12 * num_views):
        for c in fn[row % 12]:
            assert neg[row, c] == 0 and pos[row, c] == 0
    ref = ref_elimination(v1, TAU, fn).mean()
    close(got, ref, dtype)
    ref.backward()
    got.backward()
    for a, b in zip(v1, v2, strict=True):
        assert a.grad is not None and b.grad is not None
        close(b.grad, a.grad, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_elimination_per_anchor_not_above_infonce(dtype: torch.dtype) -> None:
    views = clustered_views(16, 2, 16, dtype, seed=4)
    pairs = Pairs.from_views(views, {"instance": torch.arange(16)})
    base = info_nce(pairs, TAU).losses
    curated = FalseNegativeCancellation("elimination", top_k=10, threshold=0.5)(pairs)
    elim = info_nce(curated, TAU, "all").losses
    has_fn = (curated.info["false_negatives"] >= 0).any(dim=1)
    assert bool(has_fn.any())
    assert bool((elim <= base + 1e-6).all())
    assert bool((elim[has_fn] < base[has_fn]).all())
    assert torch.equal(elim[~has_fn], base[~has_fn])


# ----------------------------------------------------------------- defining properties
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["attraction", "elimination"])
@pytest.mark.parametrize("off", [{"threshold": 1.5}, {"top_k": 0}])
def test_no_detection_equals_nt_xent(dtype: torch.dtype, mode: str, off: dict) -> None:
    # methods.md 9.1: no detections and S = 0 give the SimCLR-TF objective exactly.
    z1, z2 = clustered_views(10, 2, 16, dtype, seed=5)
    empty_support = SupportViews(torch.zeros(10, 0, 16, dtype=dtype), torch.arange(10))
    fnc = FalseNegativeCancellation(mode, **off)  # type: ignore[arg-type]
    got, curated = ours([z1, z2], fnc, support=empty_support)
    assert bool((curated.info["false_negatives"] < 0).all())
    plain = info_nce(Pairs.from_views([z1, z2], {"instance": torch.arange(10)}), TAU).loss
    close(got, plain, dtype)  # up to rounding: plain NT-Xent takes the cross-entropy fast path
    close(got, nt_xent(z1, z2, TAU, normalize=False), dtype)
    close(got, simclr_tf(z1, z2, TAU) / SIMCLR_TF_FACTOR, dtype)
    ref, _ = ref_fnc_attraction(
        [z1, z2], TAU, top_k=off.get("top_k", 10), threshold=off.get("threshold", 0.7)
    )
    close(ref, simclr_tf(z1, z2, TAU), dtype)


def test_planted_duplicates_are_found() -> None:
    g = torch.Generator().manual_seed(6)
    n, d = 8, 32
    base = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    base[5] = base[2]  # images 2 and 5 are the same picture
    z1 = F.normalize(base + 0.05 * torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    z2 = F.normalize(base + 0.05 * torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    z2[5], z1[5] = z2[2], z1[2]  # identical embeddings
    for mode in ("attraction", "elimination"):
        fnc = FalseNegativeCancellation(mode, top_k=10, threshold=0.7)
        _, curated = ours([z1, z2], fnc)
        fn = fn_sets(curated, n)
        assert fn[2] == [5, 5 + n] and fn[5] == [2, 2 + n]
        assert all(not fn[i] for i in range(n) if i not in (2, 5))
        assert torch.equal(
            curated.info["false_negatives"][2 + n], curated.info["false_negatives"][2]
        )


def test_support_views_vote_in_detection_only() -> None:
    g = torch.Generator().manual_seed(7)
    n, d = 6, 16
    z = [F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1) for _ in range(2)]
    # Image 0's support view coincides with image 3's first view.
    sup = F.normalize(torch.randn(n, 2, d, generator=g, dtype=torch.float64), dim=-1)
    sup[0, 1] = z[0][3]
    support = SupportViews(sup, torch.arange(n))
    fnc = FalseNegativeCancellation(top_k=10, threshold=0.9)
    _, without = ours(z, fnc)
    _, with_sup = ours(z, fnc, support=support)
    assert fn_sets(without, n)[0] == []
    assert 3 in fn_sets(with_sup, n)[0]
    # Support passed to the constructor is the default; a call argument overrides it.
    _, via_ctor = ours(z, FalseNegativeCancellation(top_k=10, threshold=0.9, support=support))
    assert torch.equal(via_ctor.info["false_negatives"], with_sup.info["false_negatives"])
    # Support views are not candidates of the loss: the candidate count is unchanged.
    assert with_sup.num_candidates == 2 * n


@pytest.mark.parametrize("aggregation", ["max", "mean"])
def test_detection_with_support_matches_reference(aggregation: str) -> None:
    n, s, d = 10, 3, 16
    views = clustered_views(n, 2 + s, d, torch.float64, seed=8)
    main, extra = views[:2], torch.stack([x.detach() for x in views[2:]], dim=1)  # [N, S, D]
    # Support instance ids in shuffled order, plus one image absent from the batch.
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    sup = SupportViews(torch.cat([extra[perm], extra[:1]]), torch.cat([perm, torch.tensor([99])]))
    fnc = FalseNegativeCancellation(top_k=4, threshold=0.5, aggregation=aggregation)  # type: ignore[arg-type]
    _, curated = ours(main, fnc, support=sup)
    cand = torch.cat(main).detach()
    det = [torch.cat([torch.stack([x[i].detach() for x in main]), extra[i]]) for i in range(n)]
    own = [[i, i + n] for i in range(n)]
    want = ref_detect(det, cand, own, 4, 0.5, aggregation)
    assert sum(map(len, want)) > 0
    assert fn_sets(curated, n) == want


def test_unknown_instance_anchor_is_its_own_image() -> None:
    z = clustered_views(6, 1, 8, torch.float64, seed=9)[0].detach()
    keys = {"instance": torch.tensor([0, -1, 1, -1, 2, 3])}
    pairs = Pairs(z, keys, (Segment("batch", z, keys),), self_index=torch.arange(6))
    fnc = FalseNegativeCancellation(top_k=6, threshold=-2.0)  # detect every allowed column
    cols = fnc(pairs).info["false_negatives"]
    for row in range(6):
        got = sorted(int(c) for c in cols[row] if c >= 0)
        assert got == [c for c in range(6) if c != row]


def test_small_detection_blocks_give_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    import pairsmith.negatives.false_negative_removal.fnc as mod

    views = clustered_views(12, 2, 16, torch.float64, seed=1)
    fnc = FalseNegativeCancellation(top_k=5, threshold=0.3)
    _, full = ours(views, fnc)
    monkeypatch.setattr(mod, "DETECT_BLOCK_ELEMENTS", 24 * 3)  # 3 columns per block
    _, blocked = ours(views, fnc)
    assert fn_sets(full, 12) == fn_sets(blocked, 12)


# ----------------------------------------------------------------- memory / queue
def ref_fnc_with_memory(
    hidden: list[torch.Tensor],
    hidden_ema: list[torch.Tensor],
    old: torch.Tensor,
    tau: float,
    top_k: int,
    threshold: float,
) -> tuple[torch.Tensor, list[list[int]]]:
    """objective.py::add_contrastive_loss_with_memory (one replica) as a per-anchor loop.

    memory = [EMA views of this batch (view major), old entries]; candidates are memory
    entries only; detection from the EMA views; the anchor's own EMA view is masked.
    """
    v, n = len(hidden), hidden[0].shape[0]
    memory = torch.cat([*hidden_ema, old])
    own = [[a * n + i for a in range(v)] for i in range(n)]
    det = [torch.stack([x[i] for x in hidden_ema]) for i in range(n)]
    fn = ref_detect(det, memory, own, top_k, threshold)
    total = memory.new_zeros(())
    for a in range(v):
        per = []
        for i in range(n):
            logits = memory @ hidden[a][i] / tau
            others = [j for j in range(memory.shape[0]) if j != a * n + i]
            log_den = torch.logsumexp(logits[others], dim=0)
            num = sum(logits[b * n + i] for b in range(v) if b != a) + sum(
                (logits[j] for j in fn[i]), memory.new_zeros(())
            )
            per.append(-num / (v - 1.0 + len(fn[i])) + log_den)
        total = total + torch.stack(per).mean()
    return total * 2.0 / v, fn


@pytest.mark.parametrize("dtype", DTYPES)
def test_memory_variant_matches_objective_py(dtype: torch.dtype) -> None:
    n, v, d = 8, 2, 16
    hidden = clustered_views(n, v, d, dtype, seed=10)
    with torch.no_grad():
        ema = [F.normalize(x + 0.05 * torch.randn_like(x), dim=1) for x in hidden]
        old = torch.cat([x.detach() for x in clustered_views(n, 3, d, dtype, seed=11)])  # 24
    hidden2 = clone(hidden)
    ref, ref_fn = ref_fnc_with_memory(hidden, ema, old, TAU, top_k=5, threshold=0.7)
    assert sum(map(len, ref_fn)) > 0

    memory = torch.cat([*ema, old])
    mem_inst = torch.cat([torch.arange(n).repeat(v), torch.full((old.shape[0],), -1)])
    pairs = Pairs(
        anchors=torch.cat(hidden2),
        anchor_keys={"instance": torch.arange(n).repeat(v)},
        segments=(Segment("queue", memory, {"instance": mem_inst}),),
        self_index=torch.arange(v * n),  # the anchor's own EMA view is masked, as coded
    )
    fnc = FalseNegativeCancellation(top_k=5, threshold=0.7, detect_with_anchors=False)
    curated = fnc(pairs, SupportViews(torch.stack(ema, dim=1), torch.arange(n)))
    assert fn_sets(curated, n) == ref_fn
    got = info_nce(curated, TAU, "all", "mean_log").loss
    close(got, ref / SIMCLR_TF_FACTOR, dtype)
    ref.backward()
    got.backward()
    for a, b in zip(hidden, hidden2, strict=True):
        assert a.grad is not None and b.grad is not None
        close(b.grad * SIMCLR_TF_FACTOR, a.grad, dtype)


def test_queue_entries_are_candidates() -> None:
    n, d = 6, 16
    z1, z2 = (x.detach() for x in clustered_views(n, 2, d, torch.float64, seed=12, spread=1.0))
    g = torch.Generator().manual_seed(3)
    queue = F.normalize(torch.randn(5, d, generator=g, dtype=torch.float64), dim=1)
    queue[3] = z1[4]  # an old copy of image 4 with unknown id; one with its id
    queue[1] = z2[1]
    qinst = torch.tensor([-1, 1, -1, -1, -1])
    pairs = Pairs.from_views(
        [z1, z2],
        {"instance": torch.arange(n)},
        extra=(Segment("queue", queue, {"instance": qinst}),),
    )
    curated = FalseNegativeCancellation(top_k=2, threshold=0.99)(pairs)
    fn = fn_sets(curated, n)
    assert 2 * n + 3 in fn[4]  # detected in the queue
    assert 2 * n + 1 not in fn[1]  # same instance: a positive, never a false negative
    assert curated.dense_positives()[1, 2 * n + 1] == 1


# ----------------------------------------------------------------- conventions
def test_input_pairs_untouched() -> None:
    views = [x.detach() for x in clustered_views(12, 2, 16, torch.float64, seed=1)]
    pairs = Pairs.from_views(views, {"instance": torch.arange(12)})
    pos, neg, info = pairs.positives, pairs.negatives, pairs.info
    before = pairs.dense_positives().clone(), pairs.dense_negatives().clone()
    for mode in ("attraction", "elimination"):
        out = FalseNegativeCancellation(mode, top_k=3, threshold=0.7)(pairs)
        assert out is not pairs and "false_negatives" in out.info
        assert pairs.positives is pos and pairs.negatives is neg and pairs.info is info
        assert "false_negatives" not in pairs.info
        assert isinstance(pairs.positives, SameKey) and isinstance(pairs.negatives, Complement)
        assert torch.equal(pairs.dense_positives(), before[0])
        assert torch.equal(pairs.dense_negatives(), before[1])


def test_detection_carries_no_gradient() -> None:
    views = clustered_views(12, 2, 16, torch.float64, seed=1)
    _, curated = ours(views, FalseNegativeCancellation(top_k=3, threshold=0.7))
    cols = curated.info["false_negatives"]
    assert cols.dtype == torch.long and not cols.requires_grad


def test_registered_with_taxonomy() -> None:
    entry = {e.name: e for e in list_entries("curator")}["negatives.false_negative_removal.fnc"]
    assert entry.taxonomy == ("negatives", "false_negative_removal")
    assert entry.section == "4.2"
    cur = create_curator("negatives.false_negative_removal.fnc", mode="elimination", top_k=None)
    assert isinstance(cur, FalseNegativeCancellation)
    assert cur.mode == "elimination" and cur.top_k == 10 and cur.threshold == 0.7


def test_validation_errors() -> None:
    with pytest.raises(ValueError, match="mode"):
        FalseNegativeCancellation("repulsion")  # type: ignore[arg-type]
    for bad_k in (-1, 2.5, True):
        with pytest.raises(ValueError, match="top_k"):
            FalseNegativeCancellation(top_k=bad_k)  # type: ignore[arg-type]
    for bad_t in (float("nan"), "0.7", None):
        with pytest.raises(ValueError, match="threshold"):
            FalseNegativeCancellation(threshold=bad_t)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="aggregation"):
        FalseNegativeCancellation(aggregation="min")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="detect_with_anchors"):
        FalseNegativeCancellation(detect_with_anchors=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="support"):
        FalseNegativeCancellation(support=torch.zeros(4, 2, 8))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"support embeddings must be a float \[N, S, D\]"):
        FalseNegativeCancellation(support=SupportViews(torch.zeros(4, 8), torch.arange(4)))
    with pytest.raises(ValueError, match="support instance"):
        FalseNegativeCancellation(support=(torch.zeros(4, 2, 8), torch.arange(3)))
    with pytest.raises(ValueError, match="support instance"):
        FalseNegativeCancellation(support=(torch.zeros(4, 2, 8), torch.zeros(4)))

    views = [x.detach() for x in clustered_views(4, 2, 8, torch.float32)]
    pairs = Pairs.from_views(views, {"instance": torch.arange(4)})
    with pytest.raises(ValueError, match=r"support embeddings must be \[N, S, D\] with D=8"):
        FalseNegativeCancellation()(pairs, (torch.zeros(4, 2, 5), torch.arange(4)))
    with pytest.raises(ValueError, match="support must be given"):
        FalseNegativeCancellation(detect_with_anchors=False)(pairs)
    labelled = Pairs.from_views(views, {"label": torch.arange(4)}, positives=SameKey("label"))
    with pytest.raises(ValueError, match="'instance'"):
        FalseNegativeCancellation()(labelled)


@pytest.mark.parametrize("mode", ["attraction", "elimination"])
def test_chunked_loss_matches_single_block(mode: str) -> None:
    views = clustered_views(12, 2, 16, torch.float64, seed=1)
    pairs = Pairs.from_views(views, {"instance": torch.arange(12)})
    curated = FalseNegativeCancellation(mode, top_k=3, threshold=0.7)(pairs)  # type: ignore[arg-type]
    full = info_nce(curated, TAU, "all", chunk_size=None)
    chunked = info_nce(curated, TAU, "all", chunk_size=5)
    torch.testing.assert_close(chunked.losses, full.losses)
    (g_full,) = torch.autograd.grad(full.loss, views[0])
    (g_chunk,) = torch.autograd.grad(chunked.loss, views[0])
    torch.testing.assert_close(g_chunk, g_full)
