"""One gather implementation: rows local, columns global (DESIGN.md, "Distributed").

Under data parallelism (PyTorch DDP, one process per device) each rank holds ``n``
samples of a global batch of ``N = W * n``. Contrastive losses want every sample of the
global batch as a candidate, so each rank scores its **local** anchors ``[B, D]`` against
the **global** candidates ``[V * N, D]``: a ``[B, V * N]`` block per rank, never the
``[V * N, V * N]`` matrix.

Layout chosen here (:func:`distributed_pairs`): the global candidates form **one**
``batch`` segment in the order a single process would build with
:meth:`Pairs.from_views` on the concatenated global batch, i.e. view-major, and inside a
view in rank order. Every rank therefore sees the same column order, identical to the
single-process one, so a column index (``TopK`` neighbours, hard negatives, a queue
filled from gathered keys) means the same sample on every rank (PML #639 is the bug a
rank-dependent order causes). The ``gathered`` segment name stays free for no-grad
candidates from other ranks (:func:`gather_segment`, e.g. momentum-encoder keys).

Rules that avoid the known multi-GPU bugs (shared/reference/anchors.md, "Multi-GPU
correctness"):

* **Gradient of gathered candidates reaches their owner.** :func:`gather` with
  ``grad=True`` is an autograd function whose backward *sums* the incoming gradients
  over ranks (``all_reduce``) and returns this rank's slice (lightly #1528; solo-learn's
  ``GatherLayer``). ``all_reduce`` is used rather than ``reduce_scatter`` because gloo
  has no ``reduce_scatter``.
* **Masks come from gathered keys, never from ``rank * B`` arithmetic** (lightly #1176,
  solo-learn #206). Positives are key rules evaluated on the gathered keys, and
  ``self_index`` is found by *matching* each local instance id inside the gathered ids.
  Instance keys must therefore be globally unique ids (dataset indices).
* **Loss scaling.** DDP *averages* parameter gradients over ranks. With the gather above,
  the gradient of rank ``k``'s loss ``L_k`` reaches every rank, so DDP computes
  ``(1/W) * d(sum_k L_k)``. The single-process loss on the global batch is ``S / A``, with
  ``S = sum_k S_k`` the sum of per-anchor losses and ``A`` the global number of valid
  anchors. Taking ``L_k = W * S_k / A`` (:func:`global_mean`) makes DDP exact for any
  split of valid anchors. The plain local mean ``S_k / A_k`` is exact only when every rank
  has the same number of valid anchors (then ``A_k = A / W``). PML's ``loss * world_size``
  (#363) is the same correction for its layout.

In a single process (not initialised, or a world of one) every function here is a no-op
and :func:`distributed_pairs` is :meth:`Pairs.from_views`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import Tensor

from pairsmith.core.pairs import Pairs, Segment
from pairsmith.core.weights import SameKey, Weight

_MAX_DIMS = 8


class _HasLossesAndValid(Protocol):
    """Anything with per-anchor ``losses [B]`` and ``valid [B]`` (an ``InfoNCEOutput``)."""

    @property
    def losses(self) -> Tensor:
        """``[B]`` per-anchor losses."""
        ...

    @property
    def valid(self) -> Tensor:
        """``[B]`` bool validity."""
        ...


# --------------------------------------------------------------------------- process info
def is_distributed() -> bool:
    """True when ``torch.distributed`` is available and a process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def world_size(group: Any = None) -> int:
    """Number of ranks in ``group`` (the default group), 1 when not distributed."""
    return dist.get_world_size(group) if is_distributed() else 1


def rank(group: Any = None) -> int:
    """This process's rank in ``group`` (the default group), 0 when not distributed."""
    return dist.get_rank(group) if is_distributed() else 0


# --------------------------------------------------------------------------- gather
class _GatherWithGrad(torch.autograd.Function):
    """``all_gather`` whose backward sums gradients over ranks and keeps this rank's slice."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, group: Any) -> Tensor:
        ctx.group = group
        ctx.n = x.shape[0]
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x, group=group)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        # Every rank's loss may depend on this rank's rows: their gradient is the sum of
        # the gradients that all ranks computed for them (lightly #1528).
        g = grad.contiguous().clone()
        dist.all_reduce(g, op=dist.ReduceOp.SUM, group=ctx.group)
        # The slice is this function's own output layout (parts in rank order), not a
        # mask: position of this rank's block in the concatenation it just built.
        start = dist.get_rank(ctx.group) * ctx.n
        return g[start : start + ctx.n], None


def _check_same_shapes(x: Tensor, group: Any) -> None:
    """Raise the same ``ValueError`` on every rank unless all ranks hold the same shape."""
    if x.dim() > _MAX_DIMS or x.dim() == 0:
        raise ValueError(f"gather expects a tensor with 1 to {_MAX_DIMS} dims, got {x.dim()}")
    desc = torch.full((_MAX_DIMS + 1,), -1, dtype=torch.long, device=x.device)
    desc[0] = x.dim()
    desc[1 : 1 + x.dim()] = torch.tensor(x.shape, dtype=torch.long)
    parts = [torch.empty_like(desc) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, desc, group=group)
    shapes = [tuple(int(s) for s in p[1 : 1 + int(p[0])]) for p in parts]
    if len(set(shapes)) != 1:
        raise ValueError(
            "gather requires the same shape on every rank (equal local batch sizes; "
            f"use drop_last=True in the sampler), got shapes by rank {shapes}"
        )


def gather(x: Tensor, grad: bool, group: Any = None) -> Tensor:
    """Concatenate every rank's ``x`` along dim 0, in rank order.

    Args:
        x: ``[n, ...]``; every rank must pass the same shape and dtype.
        grad: ``True``: differentiable; the backward sums the gradients of all ranks for
            this rank's rows (so gradients of remote candidates reach their owner).
            ``False``: a plain ``all_gather`` of ``x.detach()`` (momentum-encoder keys,
            queue pushes).
        group: process group (default: the world).

    Returns:
        ``[W * n, ...]``. In a single process: ``x`` itself (``grad``) or ``x.detach()``.

    Raises:
        ValueError: if the ranks' shapes differ (raised on every rank alike).
    """
    if world_size(group) == 1:
        return x if grad else x.detach()
    _check_same_shapes(x, group)
    if grad:
        out: Tensor = _GatherWithGrad.apply(x, group)
        return out
    x = x.detach().contiguous()
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, x, group=group)
    return torch.cat(parts, dim=0)


def gather_keys(keys: Mapping[str, Tensor], group: Any = None) -> dict[str, Tensor]:
    """Gather every key (one collective for all of them), in rank order.

    Args:
        keys: key name to integer tensor ``[n]``; every rank passes the same names.
        group: process group (default: the world).

    Returns:
        Key name to long tensor ``[W * n]``.

    Raises:
        ValueError: if a key is not a 1-D integer tensor of the common length.
    """
    names = sorted(keys)
    if not names:
        return {}
    _key_length(keys)  # validates
    if world_size(group) == 1:
        return {k: keys[k].long() for k in names}
    stacked = torch.stack([keys[k].long() for k in names], dim=1)  # [n, K]
    g = gather(stacked, grad=False, group=group)
    return {k: g[:, i].contiguous() for i, k in enumerate(names)}


def gather_segment(
    name: str, embeddings: Tensor, keys: Mapping[str, Tensor], group: Any = None
) -> Segment:
    """A no-gradient segment of every rank's rows (momentum-encoder keys, MoCo v3).

    The same gathered rows are what a queue should receive, so that all ranks' queues
    stay identical (MoCo gathers keys before enqueueing)::

        seg = gather_segment("gathered", k, keys)
        queue.push(seg.embeddings, seg.keys)

    Args:
        name: segment name (``batch``, ``gathered``, ...).
        embeddings: ``[n, D]`` local rows; gathered detached.
        keys: key name to ``[n]`` integer tensor.
        group: process group (default: the world).

    Returns:
        ``Segment(name, [W * n, D], keys [W * n])``.
    """
    if embeddings.dim() != 2:
        raise ValueError(f"embeddings must be [n, D], got {tuple(embeddings.shape)}")
    if keys and _key_length(keys) != embeddings.shape[0]:
        raise ValueError(
            f"keys have length {_key_length(keys)}, embeddings have {embeddings.shape[0]} rows"
        )
    return Segment(name, gather(embeddings, grad=False, group=group), gather_keys(keys, group))


# --------------------------------------------------------------------------- pairs
def distributed_pairs(
    views: Sequence[Tensor],
    keys: Mapping[str, Tensor],
    positives: Weight | None = None,
    extra: Sequence[Segment] = (),
    grad: bool = True,
    group: Any = None,
) -> Pairs:
    """Local anchors against the global batch: :meth:`Pairs.from_views` under DDP.

    Rows are this rank's views ``[V * n, D]`` (with gradient). Columns are one ``batch``
    segment holding every rank's views, ``[V * N, D]`` with ``N = W * n``, ordered as
    ``Pairs.from_views`` orders the concatenated global batch (view-major, ranks in
    order inside each view), then the ``extra`` segments. Candidate keys are the
    gathered keys; ``self_index`` is found by matching each local ``instance`` id among
    the gathered ids, never by rank offsets.

    Args:
        views: V tensors ``[n, D]``, this rank's embeddings of V views of n samples.
        keys: key name to integer tensor ``[n]``. Under DDP, ``instance`` is required
            and must be unique over the global batch (dataset indices).
        positives: positive rule (default ``SameKey("instance")``).
        extra: segments appended after the batch (``queue``; they are not gathered:
            keep them identical on every rank, e.g. a queue fed by gathered keys).
        grad: gather the candidates with gradient (online encoder). ``False`` detaches
            them (anchors keep their gradient).
        group: process group (default: the world).

    Returns:
        :class:`Pairs` with ``B = V * n`` anchors and ``V * N + sum(extra)`` candidates.
        In a single process, exactly ``Pairs.from_views(views, keys, positives, extra)``
        (candidates detached when ``grad=False``).

    Raises:
        ValueError: for ragged views or keys, a missing, unknown (-1) or duplicated
            instance id, or unequal local batch sizes across ranks.
    """
    if not views:
        raise ValueError("views must hold at least one [n, D] tensor")
    v0 = views[0]
    for i, v in enumerate(views):
        if not isinstance(v, Tensor) or v.dim() != 2 or v.shape != v0.shape:
            got = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
            raise ValueError(
                f"views[{i}] has shape {got}, expected {tuple(v0.shape)} like views[0]"
            )
    pos = SameKey("instance") if positives is None else positives
    if world_size(group) == 1:
        pairs = Pairs.from_views(views, keys, pos, extra)
        if grad:
            return pairs
        batch = pairs.segments[0]
        detached = Segment(batch.name, batch.embeddings.detach(), batch.keys)
        return pairs.replace(segments=(detached, *pairs.segments[1:]))

    if "instance" not in keys:
        raise ValueError(
            "keys must hold 'instance' (globally unique ids such as dataset indices) under "
            "DDP: each anchor's own column is found by matching it"
        )
    if keys and _key_length(keys) != v0.shape[0]:
        raise ValueError(f"keys have length {_key_length(keys)}, views have {v0.shape[0]} rows")
    num_views, d = len(views), v0.shape[1]
    stacked = torch.stack(list(views), dim=1)  # [n, V, D]: one collective for all views
    g = gather(stacked, grad=grad, group=group)  # [N, V, D]
    candidates = g.transpose(0, 1).reshape(-1, d)  # [V * N, D], view-major
    gkeys = gather_keys(keys, group)
    local = {k: t.long() for k, t in keys.items()}
    self_index = match_self_index(local["instance"], gkeys["instance"], num_views)
    global_keys = {k: t.repeat(num_views) for k, t in gkeys.items()}
    return Pairs(
        anchors=torch.cat(list(views), dim=0),
        anchor_keys={k: t.repeat(num_views) for k, t in local.items()},
        segments=(Segment("batch", candidates, global_keys), *extra),
        positives=pos,
        self_index=self_index,
        info={"world_size": world_size(group)},
    )


def match_self_index(local: Tensor, gathered: Tensor, num_views: int = 1) -> Tensor:
    """Columns of the local rows among view-major global candidates, by id matching.

    Args:
        local: ``[n]`` instance ids of this rank's samples.
        gathered: ``[N]`` instance ids of the global batch (unique, >= 0); the
            candidates are ``num_views`` blocks of ``N`` columns in this order.
        num_views: V, the number of view blocks.

    Returns:
        ``[V * n]`` long: for view v and local row i, ``v * N + j`` where
        ``gathered[j] == local[i]``.

    Raises:
        ValueError: if an id is unknown (< 0), duplicated in ``gathered``, or missing.
    """
    if bool((gathered < 0).any()):
        raise ValueError("instance ids must be known (>= 0) to locate each anchor's own column")
    ordered, order = torch.sort(gathered)
    if bool((ordered[1:] == ordered[:-1]).any()):
        dup = ordered[1:][ordered[1:] == ordered[:-1]][:5].tolist()
        raise ValueError(
            f"instance ids must be unique over the global batch (dataset indices); "
            f"duplicated: {dup}"
        )
    pos = torch.searchsorted(ordered, local).clamp_max(max(ordered.numel() - 1, 0))
    if ordered.numel() == 0 or not bool((ordered[pos] == local).all()):
        raise ValueError("a local instance id is missing from the gathered ids")
    cols = order[pos]
    n_global = gathered.numel()
    return torch.cat([cols + v * n_global for v in range(num_views)])


# --------------------------------------------------------------------------- loss scaling
def global_mean(losses: Tensor, valid: Tensor, group: Any = None) -> Tensor:
    """The per-rank loss whose DDP gradient equals the global-batch mean's gradient.

    Returns ``W * sum(local losses) / (number of valid anchors over all ranks)``. DDP
    averages gradients over the W ranks, so the result is exact for any split of valid
    anchors. Its value on one rank is not the global mean; :func:`mean_over_ranks` of it
    is. In a single process it equals ``InfoNCEOutput.loss``.

    Args:
        losses: ``[B]`` per-anchor losses (invalid rows are ignored).
        valid: ``[B]`` bool.
        group: process group (default: the world).

    Returns:
        Scalar tensor (0 with a working backward when no anchor is valid anywhere).
    """
    if losses.shape != valid.shape:
        raise ValueError(
            f"losses {tuple(losses.shape)} and valid {tuple(valid.shape)} must have one shape"
        )
    total = torch.where(valid, losses, torch.zeros((), dtype=losses.dtype, device=losses.device))
    count = valid.sum().to(losses.dtype)
    w = world_size(group)
    if w > 1:
        count = count.detach().clone()
        dist.all_reduce(count, op=dist.ReduceOp.SUM, group=group)
    return total.sum() * w / count.clamp_min(1)


def scale_loss_for_ddp(output: _HasLossesAndValid, group: Any = None) -> Tensor:
    """:func:`global_mean` of an ``InfoNCEOutput``: the loss to call ``backward`` on."""
    return global_mean(output.losses, output.valid, group)


def mean_over_ranks(x: Tensor, group: Any = None) -> Tensor:
    """Average a (detached) tensor over ranks, for logging; ``x`` in a single process."""
    w = world_size(group)
    if w == 1:
        return x.detach()
    y = x.detach().clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM, group=group)
    return y / w


def _key_length(keys: Mapping[str, Tensor]) -> int:
    lengths = set()
    for k, t in keys.items():
        if not isinstance(t, Tensor) or t.dim() != 1 or t.is_floating_point() or t.is_complex():
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"keys[{k!r}] must be a 1-D integer tensor, got {got}")
        lengths.add(int(t.shape[0]))
    if len(lengths) > 1:
        raise ValueError(f"keys must all have one length, got lengths {sorted(lengths)}")
    return lengths.pop() if lengths else 0


__all__ = [
    "distributed_pairs",
    "gather",
    "gather_keys",
    "gather_segment",
    "global_mean",
    "is_distributed",
    "match_self_index",
    "mean_over_ranks",
    "rank",
    "scale_loss_for_ddp",
    "world_size",
]
