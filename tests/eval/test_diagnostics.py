"""pair_diagnostics against slow loops on tiny hand-built cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pairsmith.core.pairs import Pairs, Segment
from pairsmith.core.weights import InSegment, SameKey, TopK, Union, Without
from pairsmith.eval.diagnostics import (
    METRICS,
    alignment,
    average,
    lookup_labels,
    pair_diagnostics,
    uniformity,
)
from pairsmith.methods.base import StepOutput


def unit(n: int, d: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=1)


def out_of(pairs: Pairs, emb: tuple[torch.Tensor, ...] = ()) -> StepOutput:
    return StepOutput(torch.tensor(0.0), pairs, emb)


def slow(pairs: Pairs, k: int = 10) -> dict[str, float]:
    """Per-anchor, per-candidate loops over the dense weights."""
    pos_w, neg_w = pairs.dense_positives(), pairs.dense_negatives()
    a, c = pairs.anchors, pairs.candidates
    la, lc = pairs.anchor_keys["label"], pairs.candidate_keys["label"]
    ia, ic = pairs.anchor_keys["instance"], pairs.candidate_keys["instance"]
    fn_num = fn_den = ps = pw = ns = nw = ew = eh = ek = 0.0
    hard = []
    for i in range(pairs.num_anchors):
        sims = []
        for j in range(pairs.num_candidates):
            p, n = float(pos_w[i, j]), float(neg_w[i, j])
            if p > 0:
                n = 0.0
            s = float(a[i] @ c[j])
            known = la[i] >= 0 and lc[j] >= 0
            same = known and la[i] == lc[j]
            ps, pw, ns, nw = ps + p * s, pw + p, ns + n * s, nw + n
            if known:
                fn_den += n
                fn_num += n * same
            if not (ia[i] >= 0 and ia[i] == ic[j]):
                ew += p
                if known:
                    ek += p
                    eh += p * same
            if n > 0:
                sims.append(s)
        if sims:
            top = sorted(sims, reverse=True)[:k]
            hard.append(sum(top) / len(top))
    return {
        "fn_rate": fn_num / fn_den,
        "pos_sim": ps / pw,
        "neg_sim": ns / nw,
        "extra_pos_per_anchor": ew / pairs.num_anchors,
        "extra_pos_precision": eh / ek if ek else math.nan,
        "hardness": sum(hard) / len(hard),
    }


def check(d: dict[str, float], ref: dict[str, float]) -> None:
    for key, value in ref.items():
        if math.isnan(value):
            assert math.isnan(d[key]), key
        else:
            assert d[key] == pytest.approx(float(value), abs=1e-6), key


def test_known_false_negative_rate() -> None:
    # Labels 0 0 1 1 (two views): each anchor has 6 negatives, 2 of its class -> 1/3.
    z = unit(4)
    keys = {"instance": torch.arange(4), "label": torch.tensor([0, 0, 1, 1])}
    d = pair_diagnostics(out_of(Pairs.from_views([z, z], keys)))
    assert d["fn_rate"] == pytest.approx(1 / 3)
    assert d["neg_per_anchor"] == 6 and d["pos_per_anchor"] == 1
    assert d["valid_fraction"] == 1.0
    assert math.isnan(d["extra_pos_precision"]) and d["extra_pos_per_anchor"] == 0


def test_unknown_labels_are_ignored() -> None:
    # Sample 3 unlabeled: anchors 0,1 (x2 views) see 4 labeled negatives, 2 same-class ...
    z1, z2 = unit(4, seed=1), unit(4, seed=2)
    keys = {"instance": torch.arange(4), "label": torch.tensor([0, 0, 1, -1])}
    pairs = Pairs.from_views([z1, z2], keys)
    d = pair_diagnostics(out_of(pairs))
    check(d, slow(pairs))
    # by hand: labeled anchors (6) x labeled non-positive columns (4) = 24 pairs, of which
    # anchors of samples 0/1 have 2 same-class columns each: 8 / 24.
    assert d["fn_rate"] == pytest.approx(8 / 24)


def test_no_label_gives_nan() -> None:
    z = unit(3)
    d = pair_diagnostics(out_of(Pairs.from_views([z, z], {"instance": torch.arange(3)})))
    assert set(METRICS) <= set(d)
    assert math.isnan(d["fn_rate"]) and math.isnan(d["nn_precision"])
    assert math.isnan(d["align"])  # no embeddings given


def test_labels_looked_up_through_instance_when_pairs_lack_them() -> None:
    z = unit(4)
    pairs = Pairs.from_views([z, z], {"instance": torch.tensor([7, 3, 5, 9])})
    keys = {"instance": torch.tensor([3, 5, 7, 9]), "label": torch.tensor([1, 1, 0, 0])}
    d = pair_diagnostics(out_of(pairs), keys)
    assert d["fn_rate"] == pytest.approx(1 / 3)
    looked = lookup_labels(torch.tensor([9, 4, -1, 3]), keys["instance"], keys["label"])
    assert looked.tolist() == [0, -1, -1, 1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_elimination_and_attraction_match_slow_loops(dtype: torch.dtype) -> None:
    z1, z2 = unit(5, seed=3).to(dtype), unit(5, seed=4).to(dtype)
    keys = {"instance": torch.arange(5), "label": torch.tensor([0, 1, 0, 1, 2])}
    base = Pairs.from_views([z1, z2], keys)
    # detections: anchor i -> columns (i + 2) % 10 and (i + 7) % 10
    cols = torch.stack([(torch.arange(10) + 2) % 10, (torch.arange(10) + 7) % 10], dim=1)
    cols[0, 1] = -1
    elim = base.replace(
        negatives=Without(base.negatives, TopK(cols)), info={"false_negatives": cols}
    )
    attr = base.replace(positives=Union(base.positives, TopK(cols)), info={"false_negatives": cols})
    for pairs in (base, elim, attr):
        check(pair_diagnostics(out_of(pairs), k=3), slow(pairs, k=3))
    d = pair_diagnostics(out_of(attr))
    # detection precision by hand
    la = keys["label"].repeat(2)
    hits = sum(int(la[i] == la[j]) for i in range(10) for j in cols[i].tolist() if j >= 0)
    assert d["fn_detection_precision"] == pytest.approx(hits / 19)
    assert d["fn_detected_per_anchor"] == pytest.approx(19 / 10)
    assert d["extra_pos_precision"] == pytest.approx(hits / 19)


def test_known_extra_positive_precision() -> None:
    # 2 anchors; extra positives: anchor 0 -> cols 1 (same label), 2 (other); anchor 1 -> col 3
    a = unit(2, seed=5)
    c = unit(4, seed=6)
    keys_a = {"instance": torch.tensor([0, 1]), "label": torch.tensor([0, 1])}
    keys_c = {"instance": torch.tensor([0, 2, 3, 4]), "label": torch.tensor([0, 0, 1, 1])}
    cols = torch.tensor([[0, 1, 2], [3, -1, -1]])
    pairs = Pairs(a, keys_a, (Segment("batch", c, keys_c),), positives=TopK(cols))
    d = pair_diagnostics(out_of(pairs))
    assert d["extra_pos_per_anchor"] == pytest.approx(3 / 2)  # column 0 is anchor 0's own
    assert d["extra_pos_precision"] == pytest.approx(2 / 3)


def test_nn_precision_from_info_and_from_queue() -> None:
    a = unit(3, seed=7)
    keys = {"instance": torch.arange(3), "label": torch.tensor([0, 1, -1])}
    batch = Segment("batch", unit(3, seed=8), keys)
    qkeys = {"instance": torch.tensor([10, 11, 12, 13]), "label": torch.tensor([0, 2, 1, -1])}
    queue = Segment("queue", unit(4, seed=9), qkeys)
    idx = torch.tensor([[0], [1], [2]])  # anchor 0 -> label 0 (hit), 1 -> 2 (miss), 2 unknown
    with_queue = Pairs(a, keys, (batch, queue), info={"nn_index": idx})
    assert pair_diagnostics(out_of(with_queue))["nn_precision"] == pytest.approx(1 / 2)
    nn_keys = {"label": torch.tensor([[0], [1], [1]])}  # anchors 0, 1 hit
    with_info = Pairs(a, keys, (batch,), info={"nn_index": idx, "nn_keys": nn_keys})
    assert pair_diagnostics(out_of(with_info))["nn_precision"] == pytest.approx(1.0)


def test_queue_negatives_and_per_anchor_candidates() -> None:
    # MoCo layout: positives the batch key, negatives the queue, plus per-anchor mixes.
    q = unit(3, seed=10)
    keys = {"instance": torch.arange(3), "label": torch.tensor([0, 1, 1])}
    qkeys = {"instance": torch.tensor([5, 6, 7, 8]), "label": torch.tensor([1, 1, -1, 0])}
    pairs = Pairs(
        q,
        keys,
        (Segment("batch", unit(3, seed=11), keys), Segment("queue", unit(4, seed=12), qkeys)),
        positives=Without(SameKey("instance"), InSegment("queue")),
        negatives=InSegment("queue"),
        per_anchor=F.normalize(torch.randn(3, 2, 6), dim=-1),
    )
    d = pair_diagnostics(out_of(pairs), k=2)
    # labeled queue negatives: anchor 0 (label 0) -> [1, 1, 0] one hit; anchors 1, 2 two hits
    assert d["fn_rate"] == pytest.approx(5 / 9)
    assert d["neg_per_anchor"] == pytest.approx(4 + 2)
    sims = torch.cat(
        [q @ pairs.segments[1].embeddings.T, torch.einsum("bd,bsd->bs", q, pairs.per_anchor)], 1
    )
    assert d["neg_sim"] == pytest.approx(float(sims.mean()), abs=1e-6)
    assert d["hardness"] == pytest.approx(float(sims.topk(2, dim=1).values.mean()), abs=1e-6)


def test_alignment_and_uniformity_known_values() -> None:
    e = torch.eye(3)
    assert alignment(e, e) == 0.0
    assert alignment(e, -e) == pytest.approx(4.0)
    # two antipodal points: ||zi - zj||^2 = 4, log exp(-8) = -8
    assert uniformity(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(-8.0)
    # orthonormal basis: every squared distance is 2 -> -4
    assert uniformity(e) == pytest.approx(-4.0)
    z = unit(6, seed=13)
    loop = [
        math.exp(-2 * float((z[i] - z[j]).pow(2).sum())) for i in range(6) for j in range(i + 1, 6)
    ]
    assert uniformity(z) == pytest.approx(math.log(sum(loop) / len(loop)), abs=1e-6)
    assert math.isnan(uniformity(z[:1]))
    d = pair_diagnostics(StepOutput(torch.tensor(0.0), None, (e, -e)))
    assert d["align"] == pytest.approx(4.0) and d["uniform"] == pytest.approx(-4.0)
    assert math.isnan(d["fn_rate"])


def test_curator_info_scalars_and_chunking() -> None:
    z = unit(6)
    keys = {"instance": torch.arange(6), "label": torch.arange(6) % 2}
    pairs = Pairs.from_views([z, z], keys).replace(
        info={"fnc/count": torch.tensor(3.0), "n": 2, "idx": torch.arange(4)}
    )
    d = pair_diagnostics(out_of(pairs))
    assert d["info.fnc/count"] == 3.0 and d["info.n"] == 2.0 and "info.idx" not in d
    import pairsmith.eval.diagnostics as diag

    old = diag.BLOCK_ELEMENTS
    try:
        diag.BLOCK_ELEMENTS = 12  # one row per block
        chunked = pair_diagnostics(out_of(pairs))
    finally:
        diag.BLOCK_ELEMENTS = old
    for key in d:
        assert d[key] == pytest.approx(chunked[key], abs=1e-6, nan_ok=True), key


def test_bad_k_and_average() -> None:
    z = unit(2)
    with pytest.raises(ValueError, match="k"):
        pair_diagnostics(out_of(Pairs.from_views([z, z], {"instance": torch.arange(2)})), k=0)
    avg = average([{"a": 1.0, "b": math.nan}, {"a": 3.0, "b": math.nan}, {"a": math.nan}])
    assert avg["a"] == 2.0 and math.isnan(avg["b"])
