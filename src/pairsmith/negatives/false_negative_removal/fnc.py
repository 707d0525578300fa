"""FNC: false-negative cancellation with support views.

Huynh, Kornblith, Walter, Maire, Khademi, "Boosting Contrastive Self-Supervised Learning
with False Negative Cancellation", WACV 2022; survey section 4.2 (negative pairs,
false-negative removal). Reference code: ``google-research/fnc``, ``objective.py``
(``add_contrastive_loss``, ``add_contrastive_loss_with_memory``) and the ``run.py`` flags
(``support_size=8``, ``fn_topk=10``, ``fn_threshold=0.7``, ``memory_multiplier=16``).

Detection (as in the code). For an image ``i`` with detection views ``z_v`` (its views
among the anchors, found by the ``instance`` key, plus optional support views) and a
candidate column ``c``::

    score(i, c) = agg_v <z_v, z_c>          (agg = max in the code; mean is offered)
    F_i = top-k_c(score(i, .)) ∩ {c : score(i, c) > threshold}

with the image's own columns (same instance, and each anchor's own column) excluded.
``F_i`` is computed once per image and applied to every anchor view of that image.

The two strategies of the paper:

* **attraction** (the only one in the public ``objective.py``): ``positives =
  Union(positives, TopK(F))``. Detected columns become positives *and stay in the
  denominator*; with ``positives_in_denominator="all"`` and ``aggregate="mean_log"`` the
  loss averages the log-probabilities over the instance positives and ``F_i``, exactly
  ``objective.py``'s ``sum / (#views - 1 + |F_i|)``.
* **elimination** (paper only): ``negatives = Without(negatives, TopK(F))``; the
  denominator loses ``F_i``, i.e. ``L_elim = -log(exp(s_ii') / sum_{k not in F_i, k != i}
  exp(s_ik))`` with ``positives_in_denominator="all"``.

Scale: ``objective.py`` returns ``(2 / #views) * sum_views mean_anchors`` = twice the
mean over all anchor views (the SimCLR-TF convention, methods.md section 0 item 1);
:func:`pairsmith.functional.info_nce` returns the mean, i.e. half of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from pairsmith.core.pairs import Pairs
from pairsmith.core.registry import register_curator
from pairsmith.core.weights import TopK, Union, Without

Mode = Literal["attraction", "elimination"]
Aggregation = Literal["max", "mean"]

#: Target number of elements of one ``[views, columns]`` score block during detection.
DETECT_BLOCK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class SupportViews:
    """Extra views of some images, used only to detect false negatives.

    In the reference code the support views are ordinary extra crops that are also
    anchors and candidates of the loss; to reproduce that, put them in
    ``Pairs.from_views`` instead (``2 + S`` views). ``SupportViews`` is for views that
    should only vote in the detection (or for the momentum-encoder views of the memory
    variant, ``add_contrastive_loss_with_memory``).

    Attributes:
        embeddings: ``[N, S, D]``, S views of each of N images (``S = 0`` allowed).
        instance: ``[N]`` long instance ids of those images; ids not present among the
            anchors (and -1) are ignored.
    """

    embeddings: Tensor
    instance: Tensor


@register_curator(
    "negatives.false_negative_removal.fnc", taxonomy=("negatives", "false_negative_removal")
)
class FalseNegativeCancellation:
    """FNC (Huynh et al., WACV 2022; survey 4.2): attract or eliminate detected false negatives.

    See the module docstring for the detection rule and both strategies. Use with
    :class:`~pairsmith.losses.infonce.InfoNCELoss` and ``positives_in_denominator="all"``
    (both modes), ``aggregate="mean_log"``.

    Decision points (where we follow the code, and where we go beyond it):

    * Aggregation over views is ``max`` and the filter is ``top-k AND threshold``
      (strict ``>``), as in ``objective.py``; ``mean`` is the paper's alternative.
    * The image's own columns are excluded through the ``instance`` key (the code masks
      the own image's block). In a memory, old entries of the same image are therefore
      excluded too when they carry its instance id; entries with id -1 are candidates,
      as every memory entry other than the current batch's is in the code.
    * Candidates are every shared column (``batch``, ``gathered``, ``queue``,
      ``synthetic``); per-anchor candidates (``Pairs.per_anchor``) are never detected.
    * Detection runs under ``torch.no_grad`` (the code's masks carry no gradient either).
    * Only attraction is in the public code; elimination follows the paper's L_elim.

    Args:
        mode: ``"attraction"`` or ``"elimination"``.
        top_k: k >= 0 of the top-k screen (``fn_topk``; 0 disables detection).
        threshold: score threshold (``fn_threshold``, strict ``>``); a value above 1
            disables detection for unit-norm embeddings.
        aggregation: ``"max"`` (code) or ``"mean"`` over an image's detection views.
        support: default :class:`SupportViews` (or a ``(embeddings, instance)`` tuple),
            used when ``__call__`` gets none.
        detect_with_anchors: use the image's anchor views for detection. Set False with
            momentum-encoder support views to reproduce ``add_contrastive_loss_with_memory``
            (detection from the EMA views only).

    Raises:
        ValueError: for a bad ``mode``, ``top_k``, ``threshold``, ``aggregation``,
            ``support`` or ``detect_with_anchors``.

    Example:
        >>> fnc = FalseNegativeCancellation("attraction", top_k=10, threshold=0.7)
        >>> loss_fn = InfoNCELoss(0.1, "all", "mean_log", curators=[fnc])  # doctest: +SKIP
    """

    def __init__(
        self,
        mode: Mode = "attraction",
        top_k: int = 10,
        threshold: float = 0.7,
        aggregation: Aggregation = "max",
        support: SupportViews | tuple[Tensor, Tensor] | None = None,
        detect_with_anchors: bool = True,
    ) -> None:
        """Store and validate the options (see the class docstring)."""
        if mode not in ("attraction", "elimination"):
            raise ValueError(f"mode must be 'attraction' or 'elimination', got {mode!r}")
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0:
            raise ValueError(f"top_k must be an int >= 0, got {top_k!r}")
        if (
            not isinstance(threshold, (int, float))
            or isinstance(threshold, bool)
            or math.isnan(threshold)
        ):
            raise ValueError(f"threshold must be a real number (not NaN), got {threshold!r}")
        if aggregation not in ("max", "mean"):
            raise ValueError(f"aggregation must be 'max' or 'mean', got {aggregation!r}")
        if not isinstance(detect_with_anchors, bool):
            raise ValueError(f"detect_with_anchors must be a bool, got {detect_with_anchors!r}")
        self.mode: Mode = mode
        self.top_k = top_k
        self.threshold = float(threshold)
        self.aggregation: Aggregation = aggregation
        self.detect_with_anchors = detect_with_anchors
        self.support = None if support is None else _as_support(support)

    # ------------------------------------------------------------------ curation
    def __call__(
        self, pairs: Pairs, support: SupportViews | tuple[Tensor, Tensor] | None = None
    ) -> Pairs:
        """Detect false negatives and return the re-weighted pairs.

        Args:
            pairs: anchors ``[B, D]`` and candidates ``[M, D]`` carrying an ``instance``
                key (-1 = unknown: such an anchor is its own image with one view).
            support: optional :class:`SupportViews` ``[N, S, D]`` for this step
                (overrides the constructor's).

        Returns:
            A new :class:`Pairs` (the input is untouched) with the positives
            (attraction) or negatives (elimination) changed and
            ``info["false_negatives"]``: ``[B, k]`` long candidate columns of ``F``
            per anchor, -1 for empty slots (``k = min(top_k, M)``).

        Raises:
            ValueError: if the pairs lack the ``instance`` key, or the support views do
                not fit the anchors, or no detection view is available.
        """
        sup = self.support if support is None else _as_support(support)
        if "instance" not in pairs.anchor_keys:
            raise ValueError(
                "FalseNegativeCancellation needs an 'instance' key on the anchors and every "
                f"segment; the anchors carry {sorted(pairs.anchor_keys)}"
            )
        if not self.detect_with_anchors and sup is None:
            raise ValueError("support must be given when detect_with_anchors is False")
        if sup is not None:
            _check_support(sup, pairs)
        cols = self.detect(pairs, sup)
        found = TopK(cols)
        info = {**pairs.info, "false_negatives": cols}
        if self.mode == "attraction":
            # objective.py: F joins the numerator and stays in the denominator.
            return pairs.replace(positives=Union(pairs.positives, found), info=info)
        # Paper's elimination: F leaves the denominator and is not a positive.
        return pairs.replace(negatives=Without(pairs.negatives, found), info=info)

    @torch.no_grad()
    def detect(self, pairs: Pairs, support: SupportViews | None = None) -> Tensor:
        """The detected set ``F`` per anchor, computed per image.

        Args:
            pairs: as in :meth:`__call__`.
            support: optional validated support views ``[N, S, D]``.

        Returns:
            ``[B, k]`` long candidate columns, -1 for empty slots, ``k = min(top_k, M)``;
            anchors of one image get the same row.
        """
        anchors = pairs.anchors.detach()
        device = anchors.device
        b, m = pairs.num_anchors, pairs.num_candidates
        k = min(self.top_k, m)
        if k == 0 or b == 0:
            return torch.full((b, k), -1, dtype=torch.long, device=device)

        # Images: one group per known instance id; an anchor with id -1 is its own image.
        inst = pairs.anchor_keys["instance"]
        known = inst >= 0
        uniq, inv = torch.unique(inst[known], return_inverse=True)
        n_unknown = int((~known).sum())
        g = int(uniq.numel()) + n_unknown
        group = torch.empty(b, dtype=torch.long, device=device)
        group[known] = inv
        group[~known] = uniq.numel() + torch.arange(n_unknown, device=device)
        group_inst = torch.cat([uniq, inst.new_full((n_unknown,), -1)])

        # Detection views and the image each one votes for.
        views, vgroup = [], []
        if self.detect_with_anchors:
            views.append(anchors)
            vgroup.append(group)
        if support is not None and support.embeddings.shape[1] > 0 and uniq.numel() > 0:
            n, s, d = support.embeddings.shape
            pos = torch.searchsorted(uniq, support.instance).clamp_max(uniq.numel() - 1)
            present = (uniq[pos] == support.instance) & (support.instance >= 0)
            emb = support.embeddings.detach().to(anchors.dtype)[present].reshape(-1, d)
            views.append(emb)
            vgroup.append(pos[present].repeat_interleave(s))
        z = torch.cat(views) if views else anchors.new_zeros(0, anchors.shape[1])
        zg = torch.cat(vgroup) if vgroup else group.new_zeros(0)
        counts = torch.bincount(zg, minlength=g)

        # Columns each image may not detect: its own instance and its anchors' own columns.
        cand = pairs.candidates.detach()
        cand_inst = pairs.candidate_keys["instance"]
        self_rows = torch.zeros(b, dtype=torch.bool, device=device)
        self_cols = torch.zeros(b, dtype=torch.long, device=device)
        if pairs.self_index is not None:
            self_rows = pairs.self_index >= 0
            self_cols = pairs.self_index.clamp_min(0)

        neg_inf = float("-inf")
        best_val = anchors.new_full((g, 0), neg_inf)
        best_idx = torch.zeros(g, 0, dtype=torch.long, device=device)
        step = max(1, DETECT_BLOCK_ELEMENTS // max(1, z.shape[0]))
        for start in range(0, m, step):
            stop = min(start + step, m)
            scores = z @ cand[start:stop].T  # [R, c]
            c = stop - start
            if self.aggregation == "max":
                agg = anchors.new_full((g, c), neg_inf)
                agg.scatter_reduce_(0, zg[:, None].expand(-1, c), scores, "amax")
            else:
                agg = anchors.new_zeros(g, c).index_add_(0, zg, scores)
                agg = agg / counts.clamp_min(1)[:, None].to(agg.dtype)
            agg[counts == 0] = neg_inf
            own = (group_inst[:, None] == cand_inst[None, start:stop]) & (group_inst[:, None] >= 0)
            inblock = self_rows & (self_cols >= start) & (self_cols < stop)
            own[group[inblock], self_cols[inblock] - start] = True
            agg = agg.masked_fill(own, neg_inf)
            # Running top-k over column blocks.
            kk = min(k, c)
            v, i = agg.topk(kk, dim=1)
            best_val = torch.cat([best_val, v], dim=1)
            best_idx = torch.cat([best_idx, i + start], dim=1)
            if best_val.shape[1] > k:
                best_val, sel = best_val.topk(k, dim=1)
                best_idx = best_idx.gather(1, sel)
        keep = best_val > self.threshold
        cols_img = torch.where(keep, best_idx, torch.full_like(best_idx, -1))
        return cols_img[group]

    def __repr__(self) -> str:
        return (
            f"FalseNegativeCancellation(mode={self.mode!r}, top_k={self.top_k}, "
            f"threshold={self.threshold}, aggregation={self.aggregation!r})"
        )


def _as_support(support: object) -> SupportViews:
    if isinstance(support, SupportViews):
        sv = support
    elif isinstance(support, tuple) and len(support) == 2:
        sv = SupportViews(*support)
    else:
        raise ValueError(
            "support must be SupportViews(embeddings [N, S, D], instance [N]) or an "
            f"(embeddings, instance) tuple, got {type(support).__name__}"
        )
    e, ids = sv.embeddings, sv.instance
    if not isinstance(e, Tensor) or e.dim() != 3 or not e.is_floating_point():
        got = tuple(e.shape) if isinstance(e, Tensor) else type(e).__name__
        raise ValueError(f"support embeddings must be a float [N, S, D] tensor, got {got}")
    if (
        not isinstance(ids, Tensor)
        or ids.dim() != 1
        or ids.shape[0] != e.shape[0]
        or ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)
    ):
        got = tuple(ids.shape) if isinstance(ids, Tensor) else type(ids).__name__
        raise ValueError(
            f"support instance must be an integer [N] tensor with N={e.shape[0]}, got {got}"
        )
    return SupportViews(e, ids.long())


def _check_support(sv: SupportViews, pairs: Pairs) -> None:
    d = pairs.anchors.shape[1]
    if sv.embeddings.shape[2] != d:
        raise ValueError(
            f"support embeddings must be [N, S, D] with D={d}, got {tuple(sv.embeddings.shape)}"
        )
    dev = pairs.anchors.device
    if sv.embeddings.device != dev or sv.instance.device != dev:
        raise ValueError(f"support must be on the anchors' device {dev}")
