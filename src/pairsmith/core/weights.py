"""Structured pair weights: which candidates are positives or negatives of each anchor.

A weight describes a non-negative ``[B, M]`` matrix (anchors x candidates) without
materialising it. The loss asks for one row block at a time (``block``), so a
``SameKey`` rule over B=4096 anchors and M=65536 candidates never exists as a dense
matrix. Every form has ``dense`` for tests and diagnostics.

Forms (DESIGN.md, "Weights are structured, not dense"):

* :class:`SameKey`: 1 where anchor and candidate share a key value (instance, label,
  attribute, pair id); -1 means unknown and never matches.
* :class:`TopK`: a few columns per anchor with weights (neighbours, hard negatives,
  detected false negatives).
* :class:`Mask`: a boolean ``[B, M]`` matrix.
* :class:`Dense`: arbitrary non-negative values, only when a curator truly produces them.
* :class:`InSegment`: every column of named segments (MoCo's queue-only negatives).
* :class:`Complement`: every column that is not a positive (the default negative set).
* :class:`Union` and :class:`Without`: set algebra, used by false-negative attraction
  (positives plus detections) and elimination (negatives minus detections).

The anchor's own column (``Pairs.self_index``) is removed by the loss, not by the
weights, so weights stay simple rules.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from pairsmith.core.pairs import Pairs


def support(w: Tensor) -> Tensor:
    """Bool ``w > 0`` of a weight block that may already be a bool mask. Shape kept."""
    return w if w.dtype == torch.bool else w > 0


class Weight(ABC):
    """A non-negative ``[B, M]`` weight matrix described by a rule.

    A rule whose every entry is 0 or 1 is *binary* (``binary`` is True): the loss then
    works on :meth:`bool_block` masks, which are cheaper than float blocks and let it mask
    logits instead of adding log-weights.
    """

    #: True when every entry of the matrix is 0 or 1 (set by the binary forms).
    binary: bool = False

    @abstractmethod
    def block(self, pairs: Pairs, rows: slice) -> Tensor:
        """Materialise the rows ``rows`` of the matrix.

        Args:
            pairs: the pairs the weight is evaluated on.
            rows: a contiguous slice of anchor rows.

        Returns:
            Float tensor ``[r, M]`` in the anchors' dtype and device, ``r = len(rows)``.
        """

    def bool_block(self, pairs: Pairs, rows: slice) -> Tensor:
        """``[r, M]`` bool: True where the weight is positive (the support of :meth:`block`).

        Forms override it to skip the float block.
        """
        return self.block(pairs, rows) > 0

    def dense(self, pairs: Pairs) -> Tensor:
        """The whole ``[B, M]`` matrix (tests, diagnostics, small problems)."""
        return self.block(pairs, slice(0, pairs.num_anchors))

    def validate(self, pairs: Pairs, name: str) -> None:  # noqa: B027 - optional hook
        """Raise ``ValueError`` if the weight does not fit ``pairs``.

        Args:
            pairs: the pairs the weight will be evaluated on.
            name: the argument name to report in errors (``positives`` or ``negatives``).
        """


class SameKey(Weight):
    """Weight 1 where the anchor and the candidate share the value of ``key``.

    Single-instance positives are ``SameKey("instance")``; SupCon is
    ``SameKey("label")`` (survey 3.2.3); attribute-based pairing uses the attribute's
    key (survey 3.2.4); cross-modal pairing uses ``"pair"`` (survey 3.2.5).
    A value of -1 is unknown and matches nothing.
    """

    binary = True

    def __init__(self, key: str) -> None:
        """Create the rule.

        Args:
            key: name of a key carried by the anchors and every candidate segment.
        """
        if not isinstance(key, str) or not key:
            raise ValueError(f"key must be a non-empty string, got {key!r}")
        self.key = key

    def validate(self, pairs: Pairs, name: str) -> None:
        """Check that anchors and candidates carry the key."""
        if self.key not in pairs.anchor_keys:
            raise ValueError(
                f"{name}: SameKey({self.key!r}) but the anchors carry keys "
                f"{sorted(pairs.anchor_keys)}; add {self.key!r} to anchor_keys"
            )

    def bool_block(self, pairs: Pairs, rows: slice) -> Tensor:
        """``[r, M]`` bool: True where the anchor row and the candidate share the key."""
        a = pairs.anchor_keys[self.key][rows]
        c = pairs.candidate_keys[self.key]
        # Unknown (negative) values match nothing: send them to two different sentinels
        # so that one [r, M] comparison suffices (a second "& a >= 0" pass cost 2.5x).
        a = torch.where(a >= 0, a, -1)
        c = torch.where(c >= 0, c, -2)
        return a[:, None] == c[None, :]

    def block(self, pairs: Pairs, rows: slice) -> Tensor:
        """Compare the key of each anchor row with every candidate's key."""
        return self.bool_block(pairs, rows).to(pairs.anchors.dtype)

    def single_match(self, pairs: Pairs, rows: slice, skip: Tensor) -> Tensor | None:
        """The one matching column of every row, found without an ``[r, M]`` block.

        The candidates' keys are sorted once and every anchor key is looked up by binary
        search, ``O((r + M) log M)`` instead of the ``O(r M)`` comparison of
        :meth:`bool_block`: the NT-Xent fast path of :func:`~pairsmith.functional.info_nce`.

        Args:
            pairs: the pairs.
            rows: the anchor rows.
            skip: ``[r]`` long column that does not count for each row (the anchor's own
                column), -1 for none.

        Returns:
            ``[r]`` long column, or ``None`` unless every row has exactly one match
            outside ``skip``.
        """
        a = pairs.anchor_keys[self.key][rows]
        c = pairs.candidate_keys[self.key]
        m = c.shape[0]
        if m == 0:
            return None
        sorted_c, order = torch.sort(c)
        lo = torch.searchsorted(sorted_c, a, right=False)
        hi = torch.searchsorted(sorted_c, a, right=True)
        # Does the skipped column itself match (it does for SimCLR's own view)?
        has_skip = (skip >= 0) & (c[skip.clamp(0, m - 1)] == a)
        count = hi - lo - has_skip.long()
        if bool(((count != 1) | (a < 0)).any()):
            return None
        # Each row's matches are order[lo:hi], at most two (the one and the skipped one):
        # take the first unless it is the skipped column.
        first = order[lo.clamp_max(m - 1)]
        second = order[(lo + 1).clamp_max(m - 1)]
        return torch.where(has_skip & (first == skip), second, first)

    def __repr__(self) -> str:
        return f"SameKey({self.key!r})"


class TopK(Weight):
    """A few weighted columns per anchor.

    Args of the constructor:
        cols: ``[B, k]`` long column indices into the candidates; -1 marks an empty slot.
        weight: ``[B, k]`` non-negative weights, or ``None`` for all ones.

    Repeated columns add up.
    """

    def __init__(self, cols: Tensor, weight: Tensor | None = None) -> None:
        """Store the columns and weights (validated against the pairs later)."""
        if not isinstance(cols, Tensor) or cols.dim() != 2:
            raise ValueError(f"cols must be a [B, k] tensor, got {_describe(cols)}")
        if cols.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"cols must be an integer tensor, got dtype {cols.dtype}")
        if weight is not None:
            if not isinstance(weight, Tensor) or weight.shape != cols.shape:
                raise ValueError(
                    f"weight must have the shape of cols {tuple(cols.shape)}, "
                    f"got {_describe(weight)}"
                )
            if bool((weight < 0).any()):
                raise ValueError("weight must be non-negative")
        self.cols = cols.long()
        self.weight = weight

    def validate(self, pairs: Pairs, name: str) -> None:
        """Check shape, range and device against the pairs."""
        if self.cols.shape[0] != pairs.num_anchors:
            raise ValueError(
                f"{name}: TopK cols has {self.cols.shape[0]} rows, expected one per anchor "
                f"({pairs.num_anchors})"
            )
        if self.cols.device != pairs.anchors.device:
            raise ValueError(
                f"{name}: TopK cols on {self.cols.device}, anchors on {pairs.anchors.device}"
            )
        if self.cols.numel() and (
            int(self.cols.max()) >= pairs.num_candidates or int(self.cols.min()) < -1
        ):
            raise ValueError(
                f"{name}: TopK cols must lie in [-1, {pairs.num_candidates - 1}] (M candidates)"
            )

    def block(self, pairs: Pairs, rows: slice) -> Tensor:
        """Scatter the row block's weights into a dense ``[r, M]`` block."""
        cols = self.cols[rows]
        w = (
            torch.ones(cols.shape, dtype=pairs.anchors.dtype, device=cols.device)
            if self.weight is None
            else self.weight[rows].to(pairs.anchors.dtype)
        )
        empty = cols < 0
        w = w.masked_fill(empty, 0.0)
        out = torch.zeros(cols.shape[0], pairs.num_candidates, dtype=w.dtype, device=w.device)
        return out.scatter_add_(1, cols.clamp_min(0), w)

    def __repr__(self) -> str:
        return f"TopK(k={self.cols.shape[1]})"


class Mask(Weight):
    """A boolean ``[B, M]`` matrix: True is weight 1."""

    binary = True

    def __init__(self, mask: Tensor) -> None:
        """Store the mask.

        Args:
            mask: boolean tensor ``[B, M]``.
        """
        if not isinstance(mask, Tensor) or mask.dim() != 2 or mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool [B, M] tensor, got {_describe(mask)}")
        self.mask = mask

    def validate(self, pairs: Pairs, name: str) -> None:
        """Check the shape and device."""
        _check_matrix(self.mask, pairs, f"{name}: Mask")

    def bool_block(self, pairs: Pairs, rows: slice) -> Tensor:
        """Slice the rows."""
        return self.mask[rows]

    def block(self, pairs: Pairs, rows: slice) -> Tensor:
        """Slice the rows and convert to the anchors' dtype."""
        return self.mask[rows].to(pairs.anchors.dtype)

    def __repr__(self) -> str:
        return f"Mask({tuple(self.mask.shape)})"


class Dense(Weight):
    """Arbitrary non-negative ``[B, M]`` weights.

    Use only when a curator truly produces per-pair values; rules are cheaper.
    """

    def __init__(self, weight: Tensor) -> None:
        """Store the weights.

        Args:
            weight: floating tensor ``[B, M]``, non-negative.
        """
        if not isinstance(weight, Tensor) or weight.dim() != 2 or not weight.is_floating_point():
            raise ValueError(f"weight must be a float [B, M] tensor, got {_describe(weight)}")
        if bool((weight < 0).any()):
            raise ValueError("weight must be non-negative")
        self.weight = weight

    def validate(self, pairs: Pairs, name: str) -> None:
        """Check the shape and device."""
        _check_matrix(self.weight, pairs, f"{name}: Dense")

    def block(self, pairs: Pairs, rows: slice) -> Tensor:
        """Slice the rows."""
        return self.weight[rows].to(pairs.anchors.dtype)

    def __repr__(self) -> str:
        return f"Dense({tuple(self.weight.shape)})"


class Complement(Weight):
    """Weight 1 on every column that is not a positive: the default negative set.

    Args of the constructor:
        of: the weight whose zero entries are selected; ``None`` (the default) means
            the pairs' current positives, so a curator that moves candidates into the
            positives (false-negative attraction) removes them from the negatives too.
    """

    binary = True

    def __init__(self, of: Weight | None = None) -> None:
        """Store the weight to complement (``None``: the current positives)."""
        self.of = of

    def validate(self, pairs: Pairs, name: str) -> None:
        """Validate the complemented weight."""
        if self.of is not None:
            self.of.validate(pairs, name)

    def bool_block(self, pairs: Pairs, rows: slice) -> Tensor:
        """True where the complemented weight is zero."""
        of = pairs.positives if self.of is None else self.of
        if isinstance(of, Complement) and of.of is None:
            raise ValueError("positives cannot be Complement() of themselves")
        return ~of.bool_block(pairs, rows)

    def block(self, pairs: Pairs, rows: slice) -> Tensor:
        """Ones where the complemented weight is zero."""
        return self.bool_block(pairs, rows).to(pairs.anchors.dtype)

    def __repr__(self) -> str:
        return "Complement()" if self.of is None else f"Complement({self.of!r})"


class InSegment(Weight):
    """Weight 1 on every column of the named segments (e.g. MoCo: negatives = queue only)."""

    binary = True

    def __init__(self, *names: str) -> None:
        """Store the segment names.

        Args:
            *names: segment names (``batch``, ``gathered``, ``queue``, ``synthetic``).
        """
        if not names:
            raise ValueError("InSegment needs at least one segment name")
        self.names = names

    def validate(self, pairs: Pairs, name: str) -> None:
        """Check that every named segment exists."""
        present = {s.name for s in pairs.segments}
        for n in self.names:
            if n not in present:
                raise ValueError(f"{name}: InSegment({n!r}) but segments are {sorted(present)}")

    def bool_block(self, pairs: Pairs, rows: slice) -> Tensor:
        """True on the named segments' columns for every row (an expanded view)."""
        r = len(range(*rows.indices(pairs.num_anchors)))
        cols = torch.zeros(pairs.num_candidates, dtype=torch.bool, device=pairs.anchors.device)
        for n in self.names:
            cols[pairs.segment_slice(n)] = True
        return cols.expand(r, -1)

    def block(self, pairs: Pairs, rows: slice) -> Tensor:
        """Ones on the named segments' columns for every row."""
        return self.bool_block(pairs, rows).to(pairs.anchors.dtype)

    def __repr__(self) -> str:
        return "InSegment(" + ", ".join(repr(n) for n in self.names) + ")"


class Union(Weight):
    """Element-wise maximum of several weights (set union for 0/1 weights)."""

    def __init__(self, *parts: Weight) -> None:
        """Store the parts.

        Args:
            *parts: at least one weight.
        """
        if not parts or not all(isinstance(p, Weight) for p in parts):
            raise ValueError("Union needs at least one Weight")
        self.parts = parts
        self.binary = all(p.binary for p in parts)

    def validate(self, pairs: Pairs, name: str) -> None:
        """Validate every part."""
        for p in self.parts:
            p.validate(pairs, name)

    def bool_block(self, pairs: Pairs, rows: slice) -> Tensor:
        """True where any part is positive."""
        out = self.parts[0].bool_block(pairs, rows)
        for p in self.parts[1:]:
            out = out | p.bool_block(pairs, rows)
        return out

    def block(self, pairs: Pairs, rows: slice) -> Tensor:
        """Maximum over the parts' blocks."""
        out = self.parts[0].block(pairs, rows)
        for p in self.parts[1:]:
            out = torch.maximum(out, p.block(pairs, rows))
        return out

    def __repr__(self) -> str:
        return "Union(" + ", ".join(repr(p) for p in self.parts) + ")"


class Without(Weight):
    """``base`` with every entry where ``removed`` is positive set to zero."""

    def __init__(self, base: Weight, removed: Weight) -> None:
        """Store both weights.

        Args:
            base: the weight to keep.
            removed: where this weight is non-zero, the result is zero.
        """
        self.base = base
        self.removed = removed
        self.binary = base.binary

    def validate(self, pairs: Pairs, name: str) -> None:
        """Validate both weights."""
        self.base.validate(pairs, name)
        self.removed.validate(pairs, name)

    def bool_block(self, pairs: Pairs, rows: slice) -> Tensor:
        """True where the base is positive and ``removed`` is zero."""
        return self.base.bool_block(pairs, rows) & ~self.removed.bool_block(pairs, rows)

    def block(self, pairs: Pairs, rows: slice) -> Tensor:
        """Zero the removed entries of the base block."""
        return self.base.block(pairs, rows) * (self.removed.block(pairs, rows) == 0)

    def __repr__(self) -> str:
        return f"Without({self.base!r}, {self.removed!r})"


def _check_matrix(t: Tensor, pairs: Pairs, what: str) -> None:
    expected = (pairs.num_anchors, pairs.num_candidates)
    if tuple(t.shape) != expected:
        raise ValueError(f"{what} has shape {tuple(t.shape)}, expected [B, M] = {expected}")
    if t.device != pairs.anchors.device:
        raise ValueError(f"{what} on {t.device}, anchors on {pairs.anchors.device}")


def _describe(x: object) -> str:
    if isinstance(x, Tensor):
        return f"tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    return type(x).__name__
