"""`Pairs`: anchors against keyed candidate segments, with structured weights.

This is the one structure every technique of the survey is expressed in (DESIGN.md,
"The central structure"). Anchors ``[B, D]`` (local rows, with gradient) are scored
against candidates ``[M, D]`` made of named segments:

* ``batch``: the other views of this step (with gradient),
* ``gathered``: rows from other ranks (see :mod:`pairsmith.core.distributed`),
* ``queue``: a memory of past embeddings (no gradient, :class:`pairsmith.sources.Queue`),
* ``synthetic``: generated candidates shared by every anchor.

Every segment carries the same keys as the anchors (``instance``, ``label``, attributes;
-1 = unknown) so a rule such as "same label" works across the batch, other ranks and
the queue alike. Candidates private to one anchor (MoCHi's mixes, All4One's centroids)
go in the ``per_anchor`` slot ``[B, S, D]``.

Curators are ``Pairs -> Pairs`` functions; they return a modified copy
(:meth:`Pairs.replace`) and never change their input.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor

from pairsmith.core.weights import Complement, SameKey, Weight

if TYPE_CHECKING:
    pass

SEGMENT_KINDS = ("batch", "gathered", "queue", "synthetic")


class DenominatorEstimator(Protocol):
    """Replaces the negative mass of the InfoNCE denominator (DCL, HCL; survey 4.1-4.2).

    Called once per row block with the scaled logits ``[r, M']``, the negative weights
    (a bool mask, or non-negative floats, ``[r, M']``, zero at the anchor's own column
    and at its positives), the temperature and the positive entries ``(rows, cols)``
    (``[P]`` each). Returns ``log Ng`` ``[P]`` for each positive entry: an estimator may
    depend on the positive's logit, as DCL's does.
    """

    def __call__(
        self, logits: Tensor, neg_weight: Tensor, temperature: float, rows: Tensor, cols: Tensor
    ) -> Tensor:
        """Return the log negative mass ``[P]`` at the entries ``(rows, cols)``."""
        ...


@dataclass(frozen=True)
class Segment:
    """A named block of candidates with their keys.

    Attributes:
        name: one of ``batch``, ``gathered``, ``queue``, ``synthetic``.
        embeddings: ``[m, D]`` candidate embeddings.
        keys: key name to long tensor ``[m]`` (-1 = unknown).
    """

    name: str
    embeddings: Tensor
    keys: Mapping[str, Tensor]

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])


@dataclass(frozen=True)
class Pairs:
    """Anchors, candidates and the weights that say which pairs are positive or negative.

    Attributes:
        anchors: ``[B, D]`` floating tensor, usually L2-normalised and with gradient.
        anchor_keys: key name to long tensor ``[B]``.
        segments: candidate segments; their concatenation is the ``[M, D]`` candidates.
        positives: weight over ``[B, M]`` (default ``SameKey("instance")``).
        negatives: weight over ``[B, M]`` (default ``Complement()``: every non-positive).
        self_index: ``[B]`` long, the column of each anchor itself among the candidates,
            or -1; that column is never a positive nor a negative. When ``None`` and a
            segment holds the anchors tensor itself, it is inferred from that segment.
        per_anchor: ``[B, S, D]`` candidates private to each anchor, or ``None``.
        per_anchor_positives: ``[B, S]`` weights of those candidates as positives.
        per_anchor_negatives: ``[B, S]`` weights of those candidates as negatives.
        estimator: optional denominator estimator (DCL, HCL) used by the loss.
        info: free-form diagnostics written by curators (not used by the loss).
    """

    anchors: Tensor
    anchor_keys: Mapping[str, Tensor]
    segments: tuple[Segment, ...]
    positives: Weight = field(default_factory=lambda: SameKey("instance"))
    negatives: Weight = field(default_factory=Complement)
    self_index: Tensor | None = None
    per_anchor: Tensor | None = None
    per_anchor_positives: Tensor | None = None
    per_anchor_negatives: Tensor | None = None
    estimator: DenominatorEstimator | None = None
    info: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "segments", tuple(self.segments))
        _validate(self)

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_views(
        cls,
        views: Sequence[Tensor],
        keys: Mapping[str, Tensor],
        positives: Weight | None = None,
        extra: Sequence[Segment] = (),
    ) -> Pairs:
        """Every view is an anchor against every view (the SimCLR layout).

        Args:
            views: V tensors ``[N, D]``, the embeddings of V views of the same N samples.
            keys: key name to long tensor ``[N]``, shared by all views.
            positives: positive rule (default ``SameKey("instance")``).
            extra: more segments (``queue``, ``gathered``, ...) appended after the batch.

        Returns:
            Pairs with ``B = M_batch = V * N`` and ``self_index = arange(V * N)``.
        """
        if not views:
            raise ValueError("views must hold at least one [N, D] tensor")
        n = views[0].shape[0]
        for i, v in enumerate(views):
            if v.dim() != 2 or v.shape[0] != n:
                raise ValueError(
                    f"views[{i}] has shape {tuple(v.shape)}, expected [N, D] with N={n}"
                )
        z = torch.cat(list(views), dim=0)
        tiled = {k: _check_key(k, t, n, "keys").repeat(len(views)) for k, t in keys.items()}
        return cls(
            anchors=z,
            anchor_keys=tiled,
            segments=(Segment("batch", z, tiled), *extra),
            positives=SameKey("instance") if positives is None else positives,
            self_index=torch.arange(z.shape[0], device=z.device),
        )

    def replace(self, **changes: Any) -> Pairs:
        """A copy with some fields changed (curators use this; the input is untouched)."""
        return dataclasses.replace(self, **changes)

    # ----------------------------------------------------------------- derived views
    @property
    def num_anchors(self) -> int:
        """B, the number of anchor rows."""
        return int(self.anchors.shape[0])

    @cached_property
    def candidates(self) -> Tensor:
        """``[M, D]``: the segments concatenated in order."""
        if len(self.segments) == 1:
            return self.segments[0].embeddings
        return torch.cat([s.embeddings for s in self.segments], dim=0)

    @property
    def num_candidates(self) -> int:
        """M, the number of shared candidate columns."""
        return sum(len(s) for s in self.segments)

    @cached_property
    def candidate_keys(self) -> dict[str, Tensor]:
        """Key name to long tensor ``[M]``, concatenated like :attr:`candidates`."""
        if len(self.segments) == 1:
            return dict(self.segments[0].keys)
        return {k: torch.cat([s.keys[k] for s in self.segments], dim=0) for k in self.anchor_keys}

    def segment_slice(self, name: str) -> slice:
        """Columns of the first segment called ``name``.

        Raises:
            KeyError: if no segment has that name.
        """
        start = 0
        for s in self.segments:
            if s.name == name:
                return slice(start, start + len(s))
            start += len(s)
        raise KeyError(f"no segment named {name!r}; segments are {[s.name for s in self.segments]}")

    def fill_self(self, block: Tensor, rows: slice, value: float | bool = 0) -> Tensor:
        """A copy of ``block`` ``[r, M]`` (any dtype) with each anchor's own column at ``value``.

        The one place that removes self-pairs: weight blocks get 0 (or False), logits
        ``-inf``. Without ``self_index`` the block is returned as it is.
        """
        if self.self_index is None:
            return block
        idx = self.self_index[rows]
        has = idx >= 0
        r_idx = torch.arange(idx.shape[0], device=idx.device)[has]
        fill = torch.tensor(value, dtype=block.dtype, device=block.device)
        return block.index_put((r_idx, idx[has]), fill)

    def positive_block(self, rows: slice) -> Tensor:
        """``[r, M]`` positive weights with the anchor's own column zeroed."""
        return self.fill_self(self.positives.block(self, rows), rows)

    def negative_block(self, rows: slice) -> Tensor:
        """``[r, M]`` negative weights with the anchor's own column zeroed."""
        return self.fill_self(self.negatives.block(self, rows), rows)

    def weight_masks(self, rows: slice) -> tuple[Tensor, Tensor]:
        """Positive and negative ``[r, M]`` blocks for the loss, self removed.

        A binary rule (``Weight.binary``) gives a bool block, any other a float block;
        the loss masks logits with the former and adds log-weights for the latter.
        Negatives are not yet made disjoint from the positives (the loss does that after
        appending the per-anchor columns).
        """
        pos_rule, neg_rule = self.positives, self.negatives
        pos = pos_rule.bool_block(self, rows) if pos_rule.binary else pos_rule.block(self, rows)
        if isinstance(neg_rule, Complement) and neg_rule.of is None:
            # The default negatives reuse the positive block instead of a second rule pass.
            neg = ~pos if pos.dtype == torch.bool else pos == 0
        elif neg_rule.binary:
            neg = neg_rule.bool_block(self, rows)
        else:
            neg = neg_rule.block(self, rows)
        return self.fill_self(pos, rows), self.fill_self(neg, rows)

    def dense_positives(self) -> Tensor:
        """``[B, M]`` positive weights (self removed)."""
        return self.positive_block(slice(0, self.num_anchors))

    def dense_negatives(self) -> Tensor:
        """``[B, M]`` negative weights (self removed)."""
        return self.negative_block(slice(0, self.num_anchors))

    def to_dtype(self, dtype: torch.dtype) -> Pairs:
        """A copy with anchors, candidates and per-anchor candidates cast to ``dtype``.

        The loss uses it to compute in float32 when a mixed-precision forward produced
        bfloat16 or float16 embeddings (gradients flow through the cast).
        """
        if self.anchors.dtype == dtype:
            return self
        return self.replace(
            anchors=self.anchors.to(dtype),
            segments=tuple(
                dataclasses.replace(s, embeddings=s.embeddings.to(dtype)) for s in self.segments
            ),
            per_anchor=None if self.per_anchor is None else self.per_anchor.to(dtype),
        )

    def detach(self) -> Pairs:
        """A copy whose anchors and candidates carry no gradient (diagnostics)."""
        return self.replace(
            anchors=self.anchors.detach(),
            segments=tuple(
                dataclasses.replace(s, embeddings=s.embeddings.detach()) for s in self.segments
            ),
            per_anchor=None if self.per_anchor is None else self.per_anchor.detach(),
        )


# --------------------------------------------------------------------------- validation
def _check_key(name: str, t: object, n: int, where: str) -> Tensor:
    if not isinstance(t, Tensor) or t.dim() != 1 or t.shape[0] != n:
        got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
        raise ValueError(f"{where}[{name!r}] must be a 1-D tensor of length {n}, got {got}")
    if t.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise ValueError(f"{where}[{name!r}] must be an integer tensor, got dtype {t.dtype}")
    return t.long()


def _validate(p: Pairs) -> None:
    a = p.anchors
    if not isinstance(a, Tensor) or a.dim() != 2:
        raise ValueError(
            f"anchors must be a [B, D] tensor, got "
            f"{tuple(a.shape) if isinstance(a, Tensor) else type(a).__name__}"
        )
    if not a.is_floating_point():
        raise ValueError(f"anchors must be floating point, got dtype {a.dtype}")
    b, d = a.shape
    keys = {k: _check_key(k, t, b, "anchor_keys") for k, t in p.anchor_keys.items()}
    for k, t in keys.items():
        if t.device != a.device:
            raise ValueError(f"anchor_keys[{k!r}] on {t.device}, anchors on {a.device}")
    object.__setattr__(p, "anchor_keys", keys)
    if not p.segments:
        raise ValueError("segments must hold at least one Segment")
    segs = []
    for s in p.segments:
        if not isinstance(s, Segment):
            raise ValueError(f"segments must hold Segment objects, got {type(s).__name__}")
        if s.name not in SEGMENT_KINDS:
            raise ValueError(f"segment name must be one of {SEGMENT_KINDS}, got {s.name!r}")
        e = s.embeddings
        if not isinstance(e, Tensor) or e.dim() != 2 or e.shape[1] != d:
            raise ValueError(
                f"segment {s.name!r} embeddings must be [m, D] with D={d}, got "
                f"{tuple(e.shape) if isinstance(e, Tensor) else type(e).__name__}"
            )
        if e.dtype != a.dtype:
            raise ValueError(f"segment {s.name!r} dtype {e.dtype} differs from anchors {a.dtype}")
        if e.device != a.device:
            raise ValueError(f"segment {s.name!r} on {e.device}, anchors on {a.device}")
        missing = set(keys) - set(s.keys)
        if missing:
            raise ValueError(
                f"segment {s.name!r} lacks keys {sorted(missing)} carried by the anchors; "
                "pass -1 for unknown values"
            )
        skeys = {k: _check_key(k, s.keys[k], len(s), f"segment {s.name!r} keys") for k in keys}
        for k, t in skeys.items():
            if t.device != a.device:
                raise ValueError(
                    f"segment {s.name!r} key {k!r} on {t.device}, anchors on {a.device}"
                )
        segs.append(dataclasses.replace(s, keys=skeys))
    object.__setattr__(p, "segments", tuple(segs))
    m = sum(len(s) for s in segs)
    if p.self_index is None:
        # Anchors passed again as a candidate segment (the same tensor object) are their
        # own columns: infer self_index so an anchor is never its own positive.
        offset = 0
        for s in segs:
            if s.embeddings is a:
                object.__setattr__(p, "self_index", offset + torch.arange(b, device=a.device))
                break
            offset += len(s)
    if p.self_index is not None:
        si = p.self_index
        if not isinstance(si, Tensor) or si.shape != (b,) or si.dtype != torch.int64:
            raise ValueError(f"self_index must be a long tensor [B]={b}, got {si!r}")
        if b and (int(si.max()) >= m or int(si.min()) < -1):
            raise ValueError(f"self_index values must lie in [-1, {m - 1}]")
    if p.per_anchor is not None:
        pa = p.per_anchor
        if pa.dim() != 3 or pa.shape[0] != b or pa.shape[2] != d:
            raise ValueError(f"per_anchor must be [B, S, D] = [{b}, S, {d}], got {tuple(pa.shape)}")
        if pa.dtype != a.dtype or pa.device != a.device:
            raise ValueError("per_anchor must have the anchors' dtype and device")
        s_ = pa.shape[1]
        for name in ("per_anchor_positives", "per_anchor_negatives"):
            w = getattr(p, name)
            if w is not None and (w.shape != (b, s_) or bool((w < 0).any())):
                raise ValueError(f"{name} must be non-negative [B, S] = [{b}, {s_}]")
    elif p.per_anchor_positives is not None or p.per_anchor_negatives is not None:
        raise ValueError("per_anchor_positives/negatives given without per_anchor")
    for name in ("positives", "negatives"):
        w = getattr(p, name)
        if not isinstance(w, Weight):
            raise ValueError(f"{name} must be a Weight, got {type(w).__name__}")
        w.validate(p, name)
