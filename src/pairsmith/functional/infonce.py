"""The InfoNCE family as one pure function over :class:`~pairsmith.core.pairs.Pairs`.

For anchor i with scaled logits ``s_ij = <a_i, c_j> / tau``, positive weights ``w_ij``
and negative weights ``n_ij`` (the anchor's own column removed), each positive p has a
denominator ``den_ip`` chosen by ``positives_in_denominator``:

* ``"all"``:  every positive and every negative, ``log den = LSE_{w>0}(s) (+) log Ng``
  (SupCon L_out, NT-Xent with one positive, FNC attraction);
* ``"self"``: this positive and the negatives, ``log den_p = s_p (+) log Ng``
  (NT-Xent with several positives: the others are not contrasted);
* ``"none"``: negatives only, ``log den = log Ng`` (decoupled contrastive learning).

``(+)`` is ``logaddexp`` and ``log Ng = LSE_j(s_ij + log n_ij)`` unless a denominator
estimator (DCL, HCL) replaces it. The per-positive terms ``t_p = s_p - log den_p`` are
combined by ``aggregate``:

* ``"mean_log"``: ``L_i = -sum_p w_p t_p / sum_p w_p`` (SupCon L_out, Khosla et al. 2020);
* ``"log_mean"``: ``L_i = -log(sum_p w_p exp(t_p) / sum_p w_p)`` (SupCon L_in).

Weights enter as log-weights folded into the logits (``-inf`` for 0, written as a large
finite negative so that rows without positives never produce NaN, even in backward).
A row without a positive (or, for ``"none"``, without a negative) is *invalid*: its loss
is 0 and it is reported in ``valid``.

Survey section 2 (the InfoNCE loss); configurations: NT-Xent (SimCLR, Chen et al. 2020),
SupCon (Khosla et al. 2020), MoCo's queue loss (He et al. 2020).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from pairsmith.core.pairs import Pairs
from pairsmith.core.weights import Complement, SameKey

PositivesInDenominator = Literal["all", "self", "none"]
Aggregate = Literal["mean_log", "log_mean"]

# Chunk rows automatically once the [B, M] logits would exceed this many elements.
AUTO_CHUNK_ELEMENTS = 1 << 24
# Target size of one [chunk, M] block when chunking automatically.
AUTO_BLOCK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class InfoNCEOutput:
    """Per-anchor result of :func:`info_nce`.

    Attributes:
        losses: ``[B]`` per-anchor losses, 0 for invalid rows.
        valid: ``[B]`` bool, True where the anchor has at least one positive.
    """

    losses: Tensor
    valid: Tensor

    @property
    def loss(self) -> Tensor:
        """Mean over valid anchors; 0 (with a working backward) when none is valid."""
        n = self.valid.sum().clamp_min(1)
        return self.losses.sum() / n


def neg_fill(dtype: torch.dtype) -> float:
    """A finite stand-in for ``-inf`` that survives adding three of them."""
    return -0.25 * torch.finfo(dtype).max


def log_weights(w: Tensor) -> Tensor:
    """``log w`` with zeros mapped to a large finite negative (see :func:`neg_fill`)."""
    fill = neg_fill(w.dtype)
    return torch.where(w > 0, w.clamp_min(torch.finfo(w.dtype).tiny).log(), fill)


def info_nce(
    pairs: Pairs,
    temperature: float = 0.1,
    positives_in_denominator: PositivesInDenominator = "all",
    aggregate: Aggregate = "mean_log",
    chunk_size: int | Literal["auto"] | None = "auto",
) -> InfoNCEOutput:
    """The InfoNCE family over structured pairs.

    Args:
        pairs: anchors ``[B, D]``, candidates ``[M, D]`` (+ per-anchor ``[B, S, D]``) and
            weights. Embeddings are used as given (normalise them first for cosine).
        temperature: tau > 0; logits are ``<a, c> / tau``.
        positives_in_denominator: ``"all"``, ``"self"`` or ``"none"`` (module docstring).
        aggregate: ``"mean_log"`` or ``"log_mean"`` (module docstring).
        chunk_size: rows per block. ``None`` computes one ``[B, M]`` block. An int
            computes blocks of that many rows under activation checkpointing, so at most
            one ``[chunk, M]`` block with gradient is alive, in forward and in backward.
            ``"auto"`` chunks only when ``B * M`` exceeds ``AUTO_CHUNK_ELEMENTS``.

    Returns:
        :class:`InfoNCEOutput` with ``losses [B]`` and ``valid [B]``.

    Raises:
        ValueError: for a bad temperature, mode, aggregate or chunk size.

    Half-precision embeddings (from an autocast forward) are cast to float32 and the
    loss is computed with autocast disabled.
    """
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    if positives_in_denominator not in ("all", "self", "none"):
        raise ValueError(
            "positives_in_denominator must be 'all', 'self' or 'none', "
            f"got {positives_in_denominator!r}"
        )
    if aggregate not in ("mean_log", "log_mean"):
        raise ValueError(f"aggregate must be 'mean_log' or 'log_mean', got {aggregate!r}")
    if pairs.anchors.dtype in (torch.float16, torch.bfloat16):
        # Mixed precision: the encoder may run in half precision, the loss does not
        # (exp/log over thousands of columns loses too many digits in 8 mantissa bits).
        pairs = pairs.to_dtype(torch.float32)
    with torch.autocast(pairs.anchors.device.type, enabled=False):
        return _info_nce(pairs, temperature, positives_in_denominator, aggregate, chunk_size)


def _info_nce(
    pairs: Pairs,
    temperature: float,
    positives_in_denominator: str,
    aggregate: str,
    chunk_size: int | Literal["auto"] | None,
) -> InfoNCEOutput:
    b, m = pairs.num_anchors, pairs.num_candidates
    if chunk_size == "auto":
        chunk = None if b * m <= AUTO_CHUNK_ELEMENTS else max(1, AUTO_BLOCK_ELEMENTS // max(m, 1))
    elif chunk_size is None:
        chunk = None
    elif isinstance(chunk_size, int) and not isinstance(chunk_size, bool) and chunk_size > 0:
        chunk = chunk_size
    else:
        raise ValueError(f"chunk_size must be a positive int, 'auto' or None, got {chunk_size!r}")

    candidates = pairs.candidates

    def run(rows: slice, anchors: Tensor, cands: Tensor, per_anchor: Tensor | None) -> Tensor:
        return _block_losses(
            pairs, rows, anchors, cands, per_anchor, temperature,
            positives_in_denominator, aggregate,
        )  # fmt: skip

    if chunk is None or chunk >= b:
        out = run(slice(0, b), pairs.anchors, candidates, pairs.per_anchor)
    else:
        parts = []
        for start in range(0, b, chunk):
            rows = slice(start, min(start + chunk, b))
            pa = None if pairs.per_anchor is None else pairs.per_anchor[rows]
            # Checkpointing keeps only the inputs of each block; the [chunk, M] logits
            # are recomputed one block at a time during backward.
            parts.append(
                checkpoint(run, rows, pairs.anchors[rows], candidates, pa, use_reentrant=False)
            )
        out = torch.cat(parts, dim=1)
    return InfoNCEOutput(losses=out[0], valid=out[1] > 0)


def _block_losses(
    pairs: Pairs,
    rows: slice,
    anchors: Tensor,
    candidates: Tensor,
    per_anchor: Tensor | None,
    temperature: float,
    mode: str,
    aggregate: str,
) -> Tensor:
    """Losses of one row block; returns ``[2, r]``: losses and validity (as 0/1)."""
    logits = anchors @ candidates.T / temperature  # [r, M]
    if (
        per_anchor is None
        and pairs.estimator is None
        and mode in ("all", "self")
        and isinstance(pairs.negatives, Complement)
        and pairs.negatives.of is None
    ):
        fast = _single_positive_cross_entropy(pairs, rows, logits)
        if fast is not None:
            return fast
    pos, neg = pairs.weight_blocks(rows)
    if per_anchor is not None:
        extra = torch.einsum("bd,bsd->bs", anchors, per_anchor) / temperature
        logits = torch.cat([logits, extra], dim=1)
        r, s = extra.shape
        zeros = extra.new_zeros(r, s)
        pp = pairs.per_anchor_positives
        pn = pairs.per_anchor_negatives
        pos = torch.cat([pos, zeros if pp is None else pp[rows].to(pos.dtype)], dim=1)
        neg = torch.cat([neg, extra.new_ones(r, s) if pn is None else pn[rows].to(neg.dtype)], 1)

    is_pos = pos > 0
    # A column that is a positive is never also counted as a negative.
    neg = neg.masked_fill(is_pos, 0.0)
    fill = neg_fill(logits.dtype)
    if pairs.estimator is None:
        log_ng = torch.logsumexp(logits + log_weights(neg), dim=1, keepdim=True)
    else:
        log_ng = pairs.estimator(logits, neg, temperature)

    if mode == "all":
        log_pos_mass = torch.logsumexp(logits.masked_fill(~is_pos, fill), dim=1, keepdim=True)
        log_den = torch.logaddexp(log_pos_mass, log_ng)
    elif mode == "self":
        log_den = torch.logaddexp(logits, log_ng)
    else:
        log_den = log_ng.expand_as(logits)

    terms = logits - log_den  # [r, M'] log-probability of each column as the positive
    total = pos.sum(dim=1)
    valid = total > 0
    if mode == "none":
        # A decoupled denominator with no negative is empty: the row has no defined loss.
        valid = valid & (neg > 0).any(dim=1)
    safe_total = total.clamp_min(torch.finfo(pos.dtype).tiny)
    if aggregate == "mean_log":
        # where() keeps the huge finite values of non-positive columns out of the sum.
        losses = -torch.where(is_pos, pos * terms, 0.0).sum(dim=1) / safe_total
    else:
        losses = -(torch.logsumexp(terms + log_weights(pos), dim=1) - safe_total.log())
    losses = torch.where(valid, losses, 0.0)
    return torch.stack([losses, valid.to(losses.dtype)])


def _single_positive_cross_entropy(pairs: Pairs, rows: slice, logits: Tensor) -> Tensor | None:
    """Fast path: every row has exactly one positive and every other column is a negative.

    Then "all" and "self" coincide and both aggregates reduce to ``-t_p``, i.e. plain
    cross-entropy over the row with the anchor's own column masked (NT-Xent, MoCo with a
    queue of other instances). Returns ``None`` when the block does not qualify.
    """
    w = pairs.positives
    # SameKey (SimCLR, MoCo) compares keys straight to bool: no float block.
    pos = w.bool_block(pairs, rows) if isinstance(w, SameKey) else w.block(pairs, rows) > 0
    r = logits.shape[0]
    if pairs.self_index is not None:
        si = pairs.self_index[rows]
        has = si >= 0
        ri, ci = torch.arange(r, device=si.device)[has], si[has]
        pos = pos.index_put((ri, ci), torch.zeros((), dtype=torch.bool, device=pos.device))
        logits = logits.index_put((ri, ci), logits.new_tensor(float("-inf")))
    if not bool((pos.sum(dim=1) == 1).all()):
        return None
    losses = F.cross_entropy(logits, pos.to(torch.uint8).argmax(dim=1), reduction="none")
    return torch.stack([losses, torch.ones_like(losses)])


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.1, normalize: bool = True) -> Tensor:
    """NT-Xent (SimCLR, Chen et al. 2020): the 2N-anchor mean over both views.

    Args:
        z1: ``[N, D]`` embeddings of the first views.
        z2: ``[N, D]`` embeddings of the second views.
        temperature: tau.
        normalize: L2-normalise the embeddings first.

    Returns:
        Scalar loss. Note google-research/simclr reports twice this value.
    """
    if normalize:
        z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    n = z1.shape[0]
    keys = {"instance": torch.arange(n, device=z1.device)}
    return info_nce(Pairs.from_views([z1, z2], keys), temperature).loss
