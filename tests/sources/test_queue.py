"""Queue: FIFO of embeddings and keys."""

from __future__ import annotations

import pytest
import torch

from pairsmith import Queue


def test_fifo_wraps_and_keeps_keys():
    q = Queue(size=6, dim=2, keys=("instance", "label"))
    assert len(q) == 0 and len(q.segment()) == 0
    for step in range(4):  # 4 pushes of 2 rows into 6 slots: wraps once
        e = torch.full((2, 2), float(step))
        q.push(
            e,
            {
                "instance": torch.tensor([2 * step, 2 * step + 1]),
                "label": torch.tensor([step, step]),
            },
        )
    assert len(q) == 6 and int(q.ptr) == 2
    # slots 0-1 were overwritten by step 3; slots 2-5 hold steps 1 and 2
    assert q.embeddings[:, 0].tolist() == [3, 3, 1, 1, 2, 2]
    assert q.key_instance.tolist() == [6, 7, 2, 3, 4, 5]
    seg = q.segment()
    assert seg.name == "queue" and not seg.embeddings.requires_grad


def test_moco_pointer_property():
    """After a push, queue[ptr_old:ptr_old+B] equals the batch keys (MoCo, methods.md 2.2)."""
    q = Queue(size=8, dim=3, batch_multiple=4)
    q.push(torch.randn(4, 3), {"instance": torch.arange(4)})
    old = int(q.ptr)
    k = torch.randn(4, 3)
    q.push(k, {"instance": torch.arange(4, 8)})
    assert torch.equal(q.embeddings[old : old + 4], k)
    assert int(q.ptr) == (old + 4) % 8


def test_state_dict_round_trip():
    q = Queue(size=5, dim=2, keys=("instance", "label"))
    q.push(torch.randn(3, 2), {"instance": torch.arange(3), "label": torch.tensor([1, 2, 3])})
    r = Queue(size=5, dim=2, keys=("instance", "label"))
    r.load_state_dict(q.state_dict())
    assert torch.equal(r.embeddings, q.embeddings) and int(r.ptr) == 3 and len(r) == 3
    assert torch.equal(r.key_label, q.key_label)


def test_push_detaches():
    q = Queue(size=4, dim=2)
    x = torch.randn(2, 2, requires_grad=True)
    q.push(x, {"instance": torch.arange(2)})
    assert not q.embeddings.requires_grad


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(size=0, dim=2), "size"),
        (dict(size=4, dim=0), "dim"),
        (dict(size=10, dim=2, batch_multiple=4), "multiple"),
        (dict(size=4, dim=2, init="zeros"), "init"),
    ],
)
def test_bad_sizes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Queue(**kwargs)


def test_bad_push():
    q = Queue(size=4, dim=2, keys=("instance", "label"))
    with pytest.raises(ValueError, match="embeddings"):
        q.push(torch.randn(2, 3), {"instance": torch.arange(2), "label": torch.arange(2)})
    with pytest.raises(ValueError, match="cannot push 5"):
        q.push(torch.randn(5, 2), {"instance": torch.arange(5), "label": torch.arange(5)})
    with pytest.raises(ValueError, match="lacks"):
        q.push(torch.randn(2, 2), {"instance": torch.arange(2)})
    with pytest.raises(ValueError, match="shape"):
        q.push(torch.randn(2, 2), {"instance": torch.arange(3), "label": torch.arange(2)})


def test_segment_is_a_copy_so_pushing_before_backward_is_safe():
    q = Queue(size=4, dim=2)
    q.push(torch.randn(4, 2), {"instance": torch.arange(4)})
    a = torch.randn(3, 2, requires_grad=True)
    seg = q.segment()
    loss = (a @ seg.embeddings.T).sum()
    q.push(torch.randn(2, 2), {"instance": torch.arange(2)})  # MoCo enqueues in the same step
    loss.backward()
    assert not torch.equal(seg.embeddings, q.embeddings)
