"""MoCo v2, MoCo v2 + MoCHi and NNCLR: queues, momentum encoders, neighbours."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pairsmith.methods import NNCLR, MoCoV2, MoCoV2MoCHi

from .conftest import make_batch, make_method


def moco(**kw: object) -> MoCoV2:
    m = make_method("methods.mocov2", **kw)
    assert isinstance(m, MoCoV2)
    return m


def test_moco_logits_are_key_plus_queue_and_loss_is_cross_entropy() -> None:
    m = moco()
    views, keys = make_batch()
    out = m.training_step(views, keys, step=0, epoch=0)
    pairs = out.pairs
    assert pairs is not None
    b, k = 8, m.queue_size
    assert pairs.num_candidates == b + k and pairs.self_index is None
    pos, neg = pairs.dense_positives(), pairs.dense_negatives()
    assert torch.equal(pos[:, :b], torch.eye(b)) and pos[:, b:].sum() == 0
    assert neg[:, :b].sum() == 0 and neg[:, b:].eq(1).all()
    # Reference: logits [q.k, q.queue] / T with the positive in column 0, CE with label 0.
    q, key = out.embeddings
    queue = pairs.segments[1].embeddings
    logits = torch.cat([(q * key).sum(1, keepdim=True), q @ queue.T], dim=1) / m.temperature
    ref = F.cross_entropy(logits, torch.zeros(b, dtype=torch.long))
    torch.testing.assert_close(out.loss.detach(), ref)


def test_moco_enqueues_keys_with_their_keys() -> None:
    m = moco()
    views, keys = make_batch()
    ptr = int(m.queue.ptr)
    out = m.training_step(views, keys, step=0, epoch=0)
    assert int(m.queue.ptr) == (ptr + 8) % m.queue_size
    torch.testing.assert_close(m.queue.embeddings[ptr : ptr + 8], out.embeddings[1])
    assert torch.equal(m.queue.key_label[ptr : ptr + 8], keys["label"])
    assert torch.equal(m.queue.key_instance[ptr : ptr + 8], keys["instance"])
    # The returned pairs hold the queue as it was before the push.
    assert out.pairs is not None
    assert not torch.equal(out.pairs.segments[1].embeddings[ptr : ptr + 8], out.embeddings[1])


def test_moco_eval_mode_neither_enqueues_nor_updates() -> None:
    m = moco(momentum=0.0)
    views, keys = make_batch()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m.eval()
    m.training_step(views, keys, step=0, epoch=0)
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k


def _step_and_update(m: MoCoV2, steps: int = 2) -> None:
    views, keys = make_batch()
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    for s in range(steps):
        out = m.training_step(views, keys, step=s, epoch=0)
        opt.zero_grad()
        out.loss.backward()
        opt.step()


def test_moco_momentum_one_freezes_the_key_encoder() -> None:
    m = moco(momentum=1.0)
    k0 = [p.clone() for p in m.momentum_parameters()]
    _step_and_update(m)
    for a, b in zip(k0, m.momentum_parameters(), strict=True):
        assert torch.equal(a, b)


def test_moco_ema_is_applied_before_the_keys() -> None:
    m = moco(momentum=0.0)  # m = 0: the key encoder copies the query encoder
    _step_and_update(m)
    q_after = [p.detach().clone() for p in m.online_parameters()]
    views, keys = make_batch()
    m.training_step(views, keys, step=2, epoch=0)
    for a, b in zip(q_after, m.momentum_parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_moco_queue_must_be_a_multiple_of_the_pushed_keys() -> None:
    views, keys = make_batch()
    with pytest.raises(ValueError, match="queue_size"):
        moco(queue_size=36).training_step(views, keys, step=0, epoch=0)
    with pytest.raises(ValueError, match="queue_size"):
        moco(queue_size=40, symmetric=True).training_step(views, keys, step=0, epoch=0)
    with pytest.raises(ValueError, match="bn_splits"):
        moco(bn_splits=3).training_step(views, keys, step=0, epoch=0)


def test_moco_symmetric_pushes_both_key_sets() -> None:
    m = moco(symmetric=True)
    views, keys = make_batch()
    out = m.training_step(views, keys, step=0, epoch=0)
    assert int(m.queue.ptr) == 16
    assert {"loss_12", "loss_21"} <= set(out.logs)


def test_moco_old_copy_of_the_same_image_stays_a_negative() -> None:
    m = moco()
    views, keys = make_batch()
    m.training_step(views, keys, step=0, epoch=0)  # enqueues the same instances
    out = m.training_step(views, keys, step=1, epoch=0)
    assert out.pairs is not None
    assert out.pairs.dense_positives().sum(1).eq(1).all()


def mochi(**kw: object) -> MoCoV2MoCHi:
    m = make_method("methods.mocov2_mochi", **kw)
    assert isinstance(m, MoCoV2MoCHi)
    return m


def test_mochi_warmup_then_per_anchor_mixes() -> None:
    m = mochi(warmup_epochs=1)
    views, keys = make_batch()
    out = m.training_step(views, keys, step=0, epoch=0)
    assert out.pairs is not None and out.pairs.per_anchor is None
    out = m.training_step(views, keys, step=1, epoch=1)
    assert out.pairs is not None and out.pairs.per_anchor is not None
    assert out.pairs.per_anchor.shape == (8, 4 + 2, 8)
    assert "info.mochi/hardest_similarity" in out.logs


def test_mochi_without_mixes_is_moco() -> None:
    views, keys = make_batch()
    a = mochi(num_mix=0, num_query_mix=0)
    b = moco()
    b.load_state_dict(a.state_dict(), strict=False)
    torch.manual_seed(3)
    la = a.training_step(views, keys, step=0, epoch=5).loss
    torch.manual_seed(3)
    lb = b.training_step(views, keys, step=0, epoch=5).loss
    torch.testing.assert_close(la, lb)


def test_mochi_mixes_raise_the_loss() -> None:
    views, keys = make_batch()
    a, b = mochi(num_mix=0, num_query_mix=0), mochi()
    b.load_state_dict(a.state_dict())
    torch.manual_seed(3)
    la = a.training_step(views, keys, step=0, epoch=5).loss
    torch.manual_seed(3)
    lb = b.training_step(views, keys, step=0, epoch=5).loss
    assert lb.item() > la.item()


def nnclr(**kw: object) -> NNCLR:
    m = make_method("methods.nnclr", **kw)
    assert isinstance(m, NNCLR)
    return m


def test_nnclr_neighbour_is_the_argmax_cosine_and_loss_is_solo_learn() -> None:
    m = nnclr()
    views, keys = make_batch()
    support = F.normalize(m.queue.embeddings.clone(), dim=1)
    out = m.training_step(views, keys, step=0, epoch=0)
    assert out.pairs is not None
    z1, z2 = out.embeddings
    idx = out.pairs.info["nn_index"][:, 0]
    assert torch.equal(idx, (z1 @ support.T).argmax(1))
    torch.testing.assert_close(out.pairs.anchors, support[idx])
    assert not out.pairs.anchors.requires_grad
    # solo-learn: 1/2 [CE(NN(z1) p2^T / tau) + CE(NN(z2) p1^T / tau)] with arange labels.
    with torch.no_grad():
        z = m.projector(m.backbone(torch.cat(views)))
        p1, p2 = F.normalize(m.predictor(z), dim=1).chunk(2)
    nn2 = support[(z2 @ support.T).argmax(1)]
    target = torch.arange(8)
    ref = 0.5 * (
        F.cross_entropy(support[idx] @ p2.T / 0.1, target)
        + F.cross_entropy(nn2 @ p1.T / 0.1, target)
    )
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-4)


def test_nnclr_enqueues_view_one_projections_with_labels() -> None:
    m = nnclr()
    views, keys = make_batch()
    out = m.training_step(views, keys, step=0, epoch=0)
    torch.testing.assert_close(m.queue.embeddings[:8], out.embeddings[0])
    assert torch.equal(m.queue.key_label[:8], keys["label"])


def test_nnclr_neighbour_keys_reach_the_pairs() -> None:
    m = nnclr()
    views, keys = make_batch()
    m.training_step(views, keys, step=0, epoch=0)
    m.training_step(views, keys, step=1, epoch=0)
    m.queue.embeddings[8:] = 0.0  # leave only this batch's projections to be found
    out = m.training_step(views, keys, step=2, epoch=0)
    assert out.pairs is not None
    nn_labels = out.pairs.info["nn_keys"]["label"][:, 0]
    assert bool((nn_labels >= 0).all())
