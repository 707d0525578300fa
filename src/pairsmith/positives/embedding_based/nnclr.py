"""Nearest-neighbour positives from a support set: NNCLR and mean-shift (MSF) style.

NNCLR: Dwibedi et al., "With a Little Help from My Friends: Nearest-Neighbor Contrastive
Learning of Visual Representations", ICCV 2021. MSF: Koohpayegani et al., "Mean Shift for
Self-Supervised Learning", ICCV 2021. Survey section 3.2.1 (multi-instance positives,
embedding-based). There is no official NNCLR code; this follows solo-learn
(``solo/losses/nnclr.py``, ``solo/methods/nnclr.py``) and lightly's
``NNMemoryBankModule``; MSF follows ``UMBCvision/MSF/train_msf.py`` (methods.md 3.1, 3.2).

solo-learn's NNCLR loss, with ``z`` the normalised projections, ``p`` the predictions,
``Q`` a FIFO of view-1 projections and ``NN(z) = Q[argmax_q cos(z, q)]`` (no gradient)::

    nnclr(nn, p) = CE(normalize(nn) @ normalize(p).T / tau, arange(B))
    L = 1/2 [nnclr(NN(z1), p2) + nnclr(NN(z2), p1)],   tau = 0.1

As pairs: anchors ``NN(z1)`` (constants), candidates the batch segment ``normalize(p2)``
with instance keys, positives ``SameKey("instance")``, negatives every other
prediction, every positive in the denominator; :func:`pairsmith.functional.info_nce`
then computes exactly that row-wise cross-entropy (:func:`nnclr_pairs`,
:func:`nnclr_loss`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from pairsmith.core.pairs import SEGMENT_KINDS, Pairs, Segment
from pairsmith.core.registry import register_curator
from pairsmith.core.weights import Complement, InSegment, SameKey, TopK, Union, Weight, Without
from pairsmith.functional.infonce import info_nce
from pairsmith.sources.queue import Queue

Replace = Literal["anchors", "positives"]
Search = Literal["anchors", "positive"]

# Bank rows per block in nearest_neighbours when chunk_size is None: one [B, rows] block
# of about this many elements.
_BLOCK_ELEMENTS = 1 << 22


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def nearest_neighbours(
    x: Tensor, bank: Tensor, k: int = 1, chunk_size: int | None = None
) -> tuple[Tensor, Tensor]:
    """The ``k`` rows of ``bank`` with the largest cosine similarity to each row of ``x``.

    Computed without gradient, block by block over the bank (a running top-k), so the
    full ``[B, K]`` similarity matrix never exists when the bank is large.

    Args:
        x: ``[B, D]`` queries.
        bank: ``[K, D]`` support set (K >= k).
        k: number of neighbours, ``1 <= k <= K``.
        chunk_size: bank rows per block; ``None`` picks blocks of about 4M similarities.

    Returns:
        ``(idx, sim)``: ``idx [B, k]`` long rows of ``bank`` and ``sim [B, k]`` their cosine
        similarities, most similar first. Ties are broken arbitrarily (as ``topk``).

    Raises:
        ValueError: for mismatched shapes, an empty bank or a bad ``k`` / ``chunk_size``.
    """
    if not isinstance(x, Tensor) or x.dim() != 2:
        raise ValueError(f"x must be a [B, D] tensor, got {_describe(x)}")
    if not isinstance(bank, Tensor) or bank.dim() != 2 or bank.shape[1] != x.shape[1]:
        raise ValueError(f"bank must be a [K, D] tensor with D={x.shape[1]}, got {_describe(bank)}")
    if bank.shape[0] == 0:
        raise ValueError("bank is empty: nearest neighbours need at least one row")
    if not _is_int(k) or not 1 <= k <= bank.shape[0]:
        raise ValueError(f"k must be an int in [1, {bank.shape[0]}] (bank rows), got {k!r}")
    if chunk_size is not None and (not _is_int(chunk_size) or chunk_size <= 0):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    n_bank = bank.shape[0]
    chunk = chunk_size or max(k, _BLOCK_ELEMENTS // max(x.shape[0], 1))
    with torch.no_grad():
        xn = F.normalize(x.detach(), dim=1)
        best_sim: Tensor | None = None
        best_idx: Tensor | None = None
        for start in range(0, n_bank, chunk):
            block = F.normalize(bank[start : start + chunk].detach().to(xn.dtype), dim=1)
            sim, idx = (xn @ block.T).topk(min(k, block.shape[0]), dim=1)
            idx = idx + start
            if best_sim is None or best_idx is None:
                best_sim, best_idx = sim, idx
            else:
                sim = torch.cat([best_sim, sim], dim=1)
                idx = torch.cat([best_idx, idx], dim=1)
                best_sim, pos = sim.topk(min(k, sim.shape[1]), dim=1)
                best_idx = idx.gather(1, pos)
    assert best_sim is not None and best_idx is not None
    return best_idx, best_sim


@register_curator("positives.embedding_based.nnclr", taxonomy=("positives", "embedding_based"))
class NearestNeighbourPositives:
    """Nearest neighbours from a support segment as positives (NNCLR, MSF; survey 3.2.1).

    The support set is a segment of the pairs (``segment``, by default the ``queue``: a
    :class:`~pairsmith.sources.Queue` of past projections); similarity is cosine
    (:func:`nearest_neighbours`); the lookup runs without gradient.

    ``replace="anchors"`` (NNCLR; requires ``k = 1``): every anchor ``z_i`` is replaced by
    ``normalize(support[NN(z_i)])``, a constant; the anchor keeps its keys, positives and
    negatives; the support segment is removed from the candidates (it served the lookup,
    it is not contrasted against). With the :func:`nnclr_pairs` layout (candidates = the
    other view's normalised predictions, ``SameKey("instance")`` positives, every other
    prediction a negative) the InfoNCE loss is solo-learn's ``CE(nn @ p.T / tau,
    arange(B))`` row for row. ``self_index`` is remapped to the remaining columns. The
    positive / negative rules must not index columns (``TopK``, ``Mask``, ``Dense``, or an
    ``InSegment`` naming the support): apply this curator before curators that produce
    them.

    ``replace="positives"`` (mean-shift style, any ``k``): the anchors stay; for each
    anchor a search vector is chosen (``search="positive"``: its current positive column
    with the largest weight, ties to the lowest column, e.g. MSF's target ``t`` in the
    batch segment; ``search="anchors"``: the anchor itself), its ``k`` nearest support rows
    are found, and their columns become the positives ``TopK([B, k])`` (weight 1 each). With
    ``keep_positives=False`` (default) they replace the old positives and the old positives
    are removed from the negatives (neither pulled nor pushed: the target's own batch copy
    is not a negative); with ``keep_positives=True`` the positives are
    ``Union(old, TopK)``. Anchors without a search vector (no positive) get no neighbour
    (TopK slot -1). If the support has fewer than ``k`` rows, the missing slots are -1.
    MSF (``UMBCvision/MSF``) enqueues the target before the search, so with ``k = 1`` the
    neighbour is the target itself and :func:`mean_shift_loss` is BYOL's loss.

    In both modes ``pairs.info`` gets ``nn_index [B, k]`` (rows of the support segment, -1
    where none), ``nn_similarity [B, k]`` (cosine) and ``nn_keys`` (key name to
    ``[B, k]``: the neighbours' keys, -1 where none) for diagnostics such as NN-positive
    precision (:func:`neighbour_precision`). Per-anchor candidates are left as they are.

    Args:
        k: neighbours per anchor (``k = 1`` for NNCLR; MSF uses 5 by default, 10 in its
            README command).
        segment: name of the support segment.
        replace: ``"anchors"`` (NNCLR) or ``"positives"`` (mean-shift style).
        search: ``"anchors"`` or ``"positive"``; ``None`` picks ``"anchors"`` for
            ``replace="anchors"`` (the only valid choice) and ``"positive"`` for
            ``replace="positives"``.
        keep_positives: only for ``replace="positives"`` (see above).
        chunk_size: bank rows per block of the search (:func:`nearest_neighbours`).

    Raises:
        ValueError: for a bad argument (named in the message); at call time when the
            support segment is missing or empty, or the weights index columns in
            ``"anchors"`` mode.
    """

    def __init__(
        self,
        k: int = 1,
        segment: str = "queue",
        replace: Replace = "anchors",
        search: Search | None = None,
        keep_positives: bool = False,
        chunk_size: int | None = None,
    ) -> None:
        """Store and validate the options."""
        if not _is_int(k) or k <= 0:
            raise ValueError(f"k must be a positive int, got {k!r}")
        if segment not in SEGMENT_KINDS:
            raise ValueError(f"segment must be one of {SEGMENT_KINDS}, got {segment!r}")
        if replace not in ("anchors", "positives"):
            raise ValueError(f"replace must be 'anchors' or 'positives', got {replace!r}")
        if search is None:
            search = "anchors" if replace == "anchors" else "positive"
        if search not in ("anchors", "positive"):
            raise ValueError(f"search must be 'anchors', 'positive' or None, got {search!r}")
        if replace == "anchors" and k != 1:
            raise ValueError(f"k must be 1 with replace='anchors' (one row per anchor), got {k}")
        if replace == "anchors" and search != "anchors":
            raise ValueError("search must be 'anchors' with replace='anchors'")
        if not isinstance(keep_positives, bool):
            raise ValueError(f"keep_positives must be a bool, got {keep_positives!r}")
        if keep_positives and replace == "anchors":
            raise ValueError("keep_positives applies to replace='positives' only")
        if chunk_size is not None and (not _is_int(chunk_size) or chunk_size <= 0):
            raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
        self.k = k
        self.segment = segment
        self.replace = replace
        self.search = search
        self.keep_positives = keep_positives
        self.chunk_size = chunk_size

    def __call__(self, pairs: Pairs) -> Pairs:
        """Look up the neighbours and return the curated copy (``pairs`` is untouched)."""
        names = [s.name for s in pairs.segments]
        if self.segment not in names:
            raise ValueError(
                f"segment {self.segment!r} (the support set) is not among the pairs' "
                f"segments {names}"
            )
        pos_seg = names.index(self.segment)
        support = pairs.segments[pos_seg]
        if len(support) == 0:
            raise ValueError(
                f"support segment {self.segment!r} is empty; fill the queue first (solo-learn "
                "starts from a random queue: Queue(init='random'))"
            )
        with torch.no_grad():
            if self.replace == "anchors":
                return self._replace_anchors(pairs, pos_seg)
            return self._replace_positives(pairs, pos_seg)

    def _info(self, pairs: Pairs, support: Segment, idx: Tensor, sim: Tensor) -> dict[str, Any]:
        has = idx >= 0
        safe = idx.clamp_min(0)
        keys = {name: torch.where(has, t[safe], -1) for name, t in support.keys.items()}
        return {**pairs.info, "nn_index": idx, "nn_similarity": sim, "nn_keys": keys}

    def _replace_anchors(self, pairs: Pairs, pos_seg: int) -> Pairs:
        support = pairs.segments[pos_seg]
        for name in ("positives", "negatives"):
            bad = _column_indexed(getattr(pairs, name), self.segment)
            if bad is not None:
                raise ValueError(
                    f"{name} is {bad!r}, which indexes columns (or names the support "
                    f"segment {self.segment!r}); replace='anchors' removes that segment, so "
                    "apply NearestNeighbourPositives before curators that produce such weights"
                )
        idx, sim = nearest_neighbours(pairs.anchors, support.embeddings, 1, self.chunk_size)
        anchors = F.normalize(support.embeddings[idx[:, 0]].detach().to(pairs.anchors.dtype), dim=1)
        sl = pairs.segment_slice(self.segment)
        segments = tuple(s for i, s in enumerate(pairs.segments) if i != pos_seg)
        if not segments:
            raise ValueError(
                f"the pairs hold only the support segment {self.segment!r}; add the "
                "candidates to contrast with (e.g. the other view's predictions)"
            )
        self_index = pairs.self_index
        if self_index is not None:
            width = sl.stop - sl.start
            inside = (self_index >= sl.start) & (self_index < sl.stop)
            shifted = torch.where(self_index >= sl.stop, self_index - width, self_index)
            self_index = torch.where(inside, -1, shifted)
        return pairs.replace(
            anchors=anchors,
            segments=segments,
            self_index=self_index,
            info=self._info(pairs, support, idx, sim),
        )

    def _replace_positives(self, pairs: Pairs, pos_seg: int) -> Pairs:
        support = pairs.segments[pos_seg]
        sl = pairs.segment_slice(self.segment)
        b = pairs.num_anchors
        if self.search == "anchors":
            query = pairs.anchors.detach()
            found = torch.ones(b, dtype=torch.bool, device=query.device)
        else:
            query, found = _first_positive(pairs)
        k = min(self.k, len(support))
        idx, sim = nearest_neighbours(query, support.embeddings, k, self.chunk_size)
        idx = torch.where(found[:, None], idx, -1)
        sim = torch.where(found[:, None], sim, 0.0)
        if k < self.k:
            idx = torch.cat([idx, idx.new_full((b, self.k - k), -1)], dim=1)
            sim = torch.cat([sim, sim.new_zeros(b, self.k - k)], dim=1)
        cols = torch.where(idx >= 0, idx + sl.start, -1)
        nn_pos = TopK(cols)
        if self.keep_positives:
            positives: Weight = Union(pairs.positives, nn_pos)
            negatives = pairs.negatives
        else:
            positives = nn_pos
            negatives = Without(pairs.negatives, pairs.positives)
        return pairs.replace(
            positives=positives,
            negatives=negatives,
            info=self._info(pairs, support, idx, sim),
        )

    def __repr__(self) -> str:
        return (
            f"NearestNeighbourPositives(k={self.k}, segment={self.segment!r}, "
            f"replace={self.replace!r}, search={self.search!r})"
        )


def _first_positive(pairs: Pairs) -> tuple[Tensor, Tensor]:
    """Each anchor's positive with the largest weight (lowest column on ties).

    Returns:
        ``([B, D]`` embeddings (zeros where none), ``[B]`` bool: the anchor has one).
    """
    b, m = pairs.num_anchors, pairs.num_candidates
    rows_per_block = max(1, _BLOCK_ELEMENTS // max(m, 1))
    cols, found = [], []
    for start in range(0, b, rows_per_block):
        w = pairs.positive_block(slice(start, min(start + rows_per_block, b)))
        best, col = w.max(dim=1)
        cols.append(col)
        found.append(best > 0)
    col, has = torch.cat(cols), torch.cat(found)
    emb = pairs.candidates.detach()[col]
    return torch.where(has[:, None], emb, 0.0), has


def _column_indexed(w: Weight, support: str) -> Weight | None:
    """The first part of ``w`` whose meaning depends on column positions, or ``None``."""
    if isinstance(w, SameKey):
        return None
    if isinstance(w, InSegment):
        return w if support in w.names else None
    if isinstance(w, Complement):
        return None if w.of is None else _column_indexed(w.of, support)
    if isinstance(w, Union):
        for p in w.parts:
            bad = _column_indexed(p, support)
            if bad is not None:
                return bad
        return None
    if isinstance(w, Without):
        return _column_indexed(w.base, support) or _column_indexed(w.removed, support)
    return w


def nnclr_pairs(
    z1: Tensor,
    z2: Tensor,
    p1: Tensor,
    p2: Tensor,
    keys: Mapping[str, Tensor],
    queue: Queue | Segment,
    curator: NearestNeighbourPositives | None = None,
) -> tuple[Pairs, Pairs]:
    """NNCLR's curated pairs for both directions: ``(NN(z1) vs p2, NN(z2) vs p1)``.

    Each direction: anchors ``normalize(z)``, candidates one ``batch`` segment
    ``normalize(p_other)`` with ``keys``, the support segment, ``SameKey("instance")``
    positives and every other prediction a negative; then ``curator`` (default
    ``NearestNeighbourPositives()``) replaces the anchors by their nearest support rows.
    ``info_nce(pairs, tau)`` of each is solo-learn's ``nnclr_loss_func(NN(z), p, tau)``.

    The queue is read, not written: push ``normalize(z1).detach()`` with its keys after
    the step, as solo-learn does. Key names the queue does not store get -1 (unknown).

    Args:
        z1: ``[N, D]`` projections of view 1 (the NN lookups carry no gradient).
        z2: ``[N, D]`` projections of view 2.
        p1: ``[N, D]`` predictions ``predictor(z1)`` (these carry the gradient).
        p2: ``[N, D]`` predictions of view 2.
        keys: key name to long ``[N]``; must hold ``instance``.
        queue: the support :class:`~pairsmith.sources.Queue` (or a ready ``Segment``).
        curator: the nearest-neighbour curator (``replace="anchors"``).

    Returns:
        The two curated :class:`Pairs`.

    Raises:
        ValueError: for mismatched shapes, missing ``instance`` key or an empty queue.
    """
    n, d = z1.shape if z1.dim() == 2 else (-1, -1)
    for name, t in (("z1", z1), ("z2", z2), ("p1", p1), ("p2", p2)):
        if not isinstance(t, Tensor) or t.dim() != 2 or tuple(t.shape) != (n, d) or n < 0:
            raise ValueError(f"{name} must be [N, D] like z1 {tuple(z1.shape)}, got {_describe(t)}")
    if "instance" not in keys:
        raise ValueError(f"keys must hold 'instance' (NNCLR's positives), got {sorted(keys)}")
    # Duck-typed: anything with Queue's ``segment(dtype=...)`` (e.g. a reloaded Queue class).
    support = queue if isinstance(queue, Segment) else getattr(queue, "segment", None)
    if callable(support):
        support = support(dtype=z1.dtype)
    if not isinstance(support, Segment):
        raise ValueError(f"queue must be a Queue or a Segment, got {type(queue).__name__}")
    skeys = dict(support.keys)
    for name in keys:
        if name not in skeys:
            skeys[name] = torch.full((len(support),), -1, dtype=torch.long, device=z1.device)
    support = dataclasses.replace(support, keys=skeys)
    cur = NearestNeighbourPositives(segment=support.name) if curator is None else curator
    if cur.replace != "anchors":
        raise ValueError("curator must use replace='anchors' for NNCLR")
    out = []
    for z, p in ((z1, p2), (z2, p1)):
        pairs = Pairs(
            anchors=F.normalize(z, dim=1),
            anchor_keys=keys,
            segments=(Segment("batch", F.normalize(p, dim=1), keys), support),
            positives=SameKey("instance"),
            negatives=Complement(),
        )
        out.append(cur(pairs))
    return out[0], out[1]


def nnclr_loss(
    z1: Tensor,
    z2: Tensor,
    p1: Tensor,
    p2: Tensor,
    keys: Mapping[str, Tensor],
    queue: Queue | Segment,
    temperature: float = 0.1,
) -> Tensor:
    """solo-learn's symmetric NNCLR loss ``1/2 [nnclr(NN(z1), p2) + nnclr(NN(z2), p1)]``.

    Args and shapes as :func:`nnclr_pairs`; ``temperature`` is tau (0.1 in NNCLR).

    Returns:
        The scalar loss (gradient flows to ``p1`` and ``p2`` only).
    """
    a, b = nnclr_pairs(z1, z2, p1, p2, keys, queue)
    return 0.5 * (info_nce(a, temperature).loss + info_nce(b, temperature).loss)


def mean_shift_loss(pairs: Pairs) -> Tensor:
    """MSF's loss on curated pairs: ``mean_b sum_j w_bj (2 - 2 a_b . c_j) / sum_j w_bj``.

    The weighted mean, over each anchor's positives (shared and per-anchor), of
    ``2 - 2 a . c`` (the squared distance for unit vectors), averaged over anchors that
    have a positive (0 when none has). With ``NearestNeighbourPositives(k,
    replace="positives")`` and anchors = MSF's normalised queries, targets enqueued before
    the call, this is ``UMBCvision/MSF``'s loss; with ``k = 1`` it is BYOL's.

    Args:
        pairs: anchors ``[B, D]`` and candidates (normalise them first).

    Returns:
        Scalar loss.
    """
    b, m = pairs.num_anchors, pairs.num_candidates
    rows_per_block = max(1, _BLOCK_ELEMENTS // max(m, 1))
    cands = pairs.candidates
    sums, totals = [], []
    for start in range(0, b, rows_per_block):
        rows = slice(start, min(start + rows_per_block, b))
        a = pairs.anchors[rows]
        w = pairs.positive_block(rows)
        dist = 2 - 2 * (a @ cands.T)
        s = (w * dist).sum(dim=1)
        t = w.sum(dim=1)
        if pairs.per_anchor is not None and pairs.per_anchor_positives is not None:
            wp = pairs.per_anchor_positives[rows].to(w.dtype)
            dp = 2 - 2 * torch.einsum("bd,bsd->bs", a, pairs.per_anchor[rows])
            s = s + (wp * dp).sum(dim=1)
            t = t + wp.sum(dim=1)
        sums.append(s)
        totals.append(t)
    s_all, t_all = torch.cat(sums), torch.cat(totals)
    valid = t_all > 0
    per_anchor = torch.where(valid, s_all / t_all.clamp_min(torch.finfo(t_all.dtype).tiny), 0.0)
    return per_anchor.sum() / valid.sum().clamp_min(1)


def neighbour_precision(pairs: Pairs, key: str = "label") -> Tensor:
    """Fraction of retrieved neighbours sharing the anchor's ``key`` (NNCLR's NN accuracy).

    Reads ``pairs.info["nn_keys"]`` written by :class:`NearestNeighbourPositives`; counts
    only anchors with a known key (>= 0) and neighbour slots that exist.

    Args:
        pairs: curated pairs.
        key: the key to compare (``"label"``).

    Returns:
        0-dim tensor in [0, 1] (0 when nothing is countable).

    Raises:
        ValueError: if the pairs carry no neighbours or the key is unknown.
    """
    nn_keys = pairs.info.get("nn_keys")
    if nn_keys is None or "nn_index" not in pairs.info:
        raise ValueError("pairs.info has no 'nn_keys': apply NearestNeighbourPositives first")
    if key not in nn_keys or key not in pairs.anchor_keys:
        raise ValueError(f"key {key!r} is not carried by both the anchors and the support")
    mine = pairs.anchor_keys[key][:, None]
    counted = (mine >= 0) & (pairs.info["nn_index"] >= 0)
    hits = (nn_keys[key] == mine) & counted
    return hits.sum().float() / counted.sum().clamp_min(1).float()


def _describe(x: object) -> str:
    if isinstance(x, Tensor):
        return f"tensor of shape {tuple(x.shape)}"
    return type(x).__name__
