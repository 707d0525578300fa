"""Pair diagnostics: what the curation did to one batch, made visible (survey §5-6).

:func:`pair_diagnostics` reads a method's :class:`~pairsmith.methods.base.StepOutput`
(the curated :class:`~pairsmith.core.pairs.Pairs` and the two views' embeddings) and
returns plain floats:

* **false-negative rate** (``fn_rate``): the share of the negative weight that falls on
  candidates with the anchor's label (only pairs where both labels are known, -1 is
  unknown). Uncurated SimCLR on 10 balanced classes sits near 0.1; false-negative removal
  should lower it.
* **precision of positives beyond the instance** (``extra_pos_precision``): positives that
  are not a view of the anchor's own image (NN positives, FNC attractions, SupCon's label
  positives) and share its label, as a share of their weight; ``extra_pos_per_anchor`` is
  their weight per anchor.
* **NN-positive precision** (``nn_precision``): for NNCLR-style curation, the share of the
  retrieved neighbours (``pairs.info["nn_index"]``, their keys in ``info["nn_keys"]`` or
  the queue segment's keys) that share the anchor's label.
* **detections** (``fn_detected_per_anchor``, ``fn_detection_precision``): for curators
  that record detected false negatives as columns (``info["false_negatives"]``, FNC), how
  many per anchor and the share that truly share the anchor's label.
* **similarities**: weighted mean cosine of positives (``pos_sim``) and of negatives
  (``neg_sim``), and ``hardness``: the mean over anchors of the mean of their ``k``
  most similar negatives.
* **alignment and uniformity** (Wang & Isola 2020) of the L2-normalised embeddings:
  ``align = E ||z1_i - z2_i||^2`` (alpha = 2) and ``uniform = log E_{i<j}
  exp(-2 ||z_i - z_j||^2)``, the mean of the two views' values, as in the paper's code.
* every scalar the curators wrote in ``pairs.info`` (``info.<name>``).

Values that cannot be computed (no label known, no extra positive, no embeddings) are
``nan``, so every call returns the same keys. Everything runs under ``torch.no_grad`` in
row blocks of at most ``2**22`` similarities (dense blocks, as the loss builds them).

References:
    1. Wang, Isola. "Understanding Contrastive Representation Learning through Alignment
       and Uniformity on the Hypersphere". ICML 2020.
    2. Survey §5 (false negatives) and §6 (evaluating curation).

Examples:
    >>> import torch
    >>> from pairsmith.core.pairs import Pairs
    >>> from pairsmith.methods.base import StepOutput
    >>> z = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    >>> keys = {"instance": torch.arange(4), "label": torch.tensor([0, 0, 1, 1])}
    >>> out = StepOutput(torch.tensor(0.0), Pairs.from_views([z, z], keys), (z, z))
    >>> d = pair_diagnostics(out)
    >>> round(d["fn_rate"], 4), d["align"], round(d["pos_sim"], 4)  # 2 of 6 negatives
    (0.3333, 0.0, 1.0)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from pairsmith.core.pairs import Pairs
from pairsmith.methods.base import StepOutput

#: Largest ``[rows, M]`` block materialised at once.
BLOCK_ELEMENTS = 1 << 22

#: The keys every call returns (plus ``info.<name>`` for the curators' scalars).
METRICS = (
    "valid_fraction",
    "pos_per_anchor",
    "neg_per_anchor",
    "fn_rate",
    "extra_pos_per_anchor",
    "extra_pos_precision",
    "nn_precision",
    "fn_detected_per_anchor",
    "fn_detection_precision",
    "pos_sim",
    "neg_sim",
    "hardness",
    "align",
    "uniform",
)

NAN = float("nan")


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else NAN


def lookup_labels(instance: Tensor, batch_instance: Tensor, batch_label: Tensor) -> Tensor:
    """Labels of ``instance`` ids found in a batch (-1 where absent or unknown).

    Args:
        instance: ids to look up. Shape: (n,).
        batch_instance: the batch's ids. Shape: (B,).
        batch_label: the batch's labels. Shape: (B,).

    Returns:
        Long labels. Shape: (n,).
    """
    inst = instance.long()
    bi, bl = batch_instance.long().to(inst.device), batch_label.long().to(inst.device)
    if bi.numel() == 0:
        return torch.full_like(inst, -1)
    order = torch.argsort(bi)
    sorted_ids = bi[order]
    pos = torch.searchsorted(sorted_ids, inst).clamp_max(bi.numel() - 1)
    found = (sorted_ids[pos] == inst) & (inst >= 0)
    return torch.where(found, bl[order][pos], -1)


def _labels(
    pairs: Pairs, keys: Mapping[str, Tensor] | None, label_key: str
) -> tuple[Tensor, Tensor]:
    """Anchor ``[B]`` and candidate ``[M]`` labels: from the pairs' keys, else via instance."""
    b, m, dev = pairs.num_anchors, pairs.num_candidates, pairs.anchors.device
    if label_key in pairs.anchor_keys:
        return pairs.anchor_keys[label_key], pairs.candidate_keys[label_key]
    unknown_a = torch.full((b,), -1, dtype=torch.long, device=dev)
    unknown_c = torch.full((m,), -1, dtype=torch.long, device=dev)
    if keys is None or label_key not in keys or "instance" not in keys:
        return unknown_a, unknown_c
    if "instance" not in pairs.anchor_keys:
        return unknown_a, unknown_c
    bi, bl = keys["instance"], keys[label_key]
    return (
        lookup_labels(pairs.anchor_keys["instance"], bi, bl),
        lookup_labels(pairs.candidate_keys["instance"], bi, bl),
    )


def _nn_precision(pairs: Pairs, anchor_labels: Tensor, label_key: str) -> tuple[float, float]:
    """(hits, counted) of retrieved neighbours sharing the anchor's label."""
    idx = pairs.info.get("nn_index")
    if not isinstance(idx, Tensor):
        return 0.0, 0.0
    idx = idx.reshape(idx.shape[0], -1)
    nn_keys = pairs.info.get("nn_keys")
    if isinstance(nn_keys, Mapping) and label_key in nn_keys:
        nn_labels = nn_keys[label_key].reshape(idx.shape).to(idx.device)
    else:
        queue = next((s for s in pairs.segments if s.name == "queue"), None)
        if queue is None or label_key not in queue.keys or len(queue) == 0:
            return 0.0, 0.0
        ql = queue.keys[label_key]
        nn_labels = torch.where(idx >= 0, ql[idx.clamp(0, len(queue) - 1)], -1)
    mine = anchor_labels[:, None].to(idx.device)
    counted = (mine >= 0) & (nn_labels >= 0) & (idx >= 0)
    hits = counted & (nn_labels == mine)
    return float(hits.sum()), float(counted.sum())


def _detections(
    pairs: Pairs, anchor_labels: Tensor, cand_labels: Tensor
) -> tuple[float, float, float]:
    """(detected count, hits, counted) from ``info["false_negatives"]`` columns."""
    cols = pairs.info.get("false_negatives")
    if not isinstance(cols, Tensor) or cols.dim() != 2 or cols.shape[0] != pairs.num_anchors:
        return NAN, 0.0, 0.0
    has = cols >= 0
    lab = torch.where(has, cand_labels[cols.clamp_min(0)], -1)
    mine = anchor_labels[:, None]
    counted = has & (lab >= 0) & (mine >= 0)
    hits = counted & (lab == mine)
    return float(has.sum()), float(hits.sum()), float(counted.sum())


def alignment(z1: Tensor, z2: Tensor, alpha: float = 2.0) -> float:
    """``E ||z1_i - z2_i||^alpha`` of the L2-normalised rows (Wang & Isola 2020).

    Args:
        z1: first view. Shape: (N, D).
        z2: second view. Shape: (N, D).
        alpha: exponent (2 in the paper).

    Returns:
        The alignment (lower is better), ``nan`` for N = 0.
    """
    if z1.shape[0] == 0:
        return NAN
    a, b = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
    return float((a - b).norm(dim=1).pow(alpha).mean())


def uniformity(z: Tensor, t: float = 2.0) -> float:
    """``log E_{i<j} exp(-t ||z_i - z_j||^2)`` of the L2-normalised rows (Wang & Isola 2020).

    Computed as a log-sum-exp over the ``N(N-1)/2`` pairs (no underflow).

    Args:
        z: embeddings. Shape: (N, D).
        t: the scale (2 in the paper).

    Returns:
        The uniformity (lower is better), ``nan`` for N < 2.
    """
    n = z.shape[0]
    if n < 2:
        return NAN
    x = F.normalize(z.float(), dim=1)
    sq = torch.pdist(x, p=2).pow(2)
    return float(torch.logsumexp(-t * sq, dim=0) - math.log(sq.numel()))


@torch.no_grad()
def pair_diagnostics(
    out: StepOutput,
    keys: Mapping[str, Tensor] | None = None,
    k: int = 10,
    label_key: str = "label",
) -> dict[str, float]:
    """Curation diagnostics of one step (see the module docstring for each value).

    Args:
        out: a method's step output: ``pairs`` (curated, anchors ``[B, D]`` against
            ``[M, D]`` candidates, optional per-anchor ``[B, S, D]``) and ``embeddings``
            (the first two views' projections, ``[N, D]`` each).
        keys: the batch keys (``[N]`` each). Only needed when the pairs do not carry
            ``label_key`` themselves: labels are then looked up through ``instance``.
        k: how many of an anchor's most similar negatives define its hardness.
        label_key: the key holding the class label (-1 unknown).

    Returns:
        Metric name to float (``nan`` where undefined); the names of :data:`METRICS`
        plus ``info.<name>`` for every scalar in ``pairs.info``.

    Raises:
        ValueError: if ``k`` is not a positive int.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    res: dict[str, float] = dict.fromkeys(METRICS, NAN)
    if len(out.embeddings) >= 2:
        z1, z2 = out.embeddings[0].detach(), out.embeddings[1].detach()
        res["align"] = alignment(z1, z2)
        u1, u2 = uniformity(z1), uniformity(z2)
        res["uniform"] = 0.5 * (u1 + u2)
    pairs = out.pairs
    if pairs is None:
        return res
    pairs = pairs.detach()
    res.update(_pair_stats(pairs, keys, k, label_key))
    res.update(_info_scalars(pairs.info))
    return res


def _pair_stats(
    pairs: Pairs, keys: Mapping[str, Tensor] | None, k: int, label_key: str
) -> dict[str, float]:
    b = pairs.num_anchors
    la, lc = _labels(pairs, keys, label_key)
    inst_a = pairs.anchor_keys.get("instance")
    inst_c = pairs.candidate_keys.get("instance") if inst_a is not None else None
    anchors = F.normalize(pairs.anchors.float(), dim=1)
    cands = F.normalize(pairs.candidates.float(), dim=1)
    per_anchor = pairs.per_anchor
    m_total = pairs.num_candidates + (0 if per_anchor is None else per_anchor.shape[1])
    rows_per_block = max(1, BLOCK_ELEMENTS // max(m_total, 1))

    acc = dict.fromkeys(
        (
            "pos_w", "neg_w", "pos_sim", "neg_sim", "fn_num", "fn_den", "extra_w",
            "extra_hit", "extra_known", "hard_sum", "hard_rows", "valid",
        ),
        0.0,
    )  # fmt: skip
    for start in range(0, b, rows_per_block):
        rows = slice(start, min(start + rows_per_block, b))
        pos = pairs.positive_block(rows).float()
        neg = pairs.negative_block(rows).float()
        neg = neg * (pos == 0)  # as the loss: a positive column is never a negative
        sim = anchors[rows] @ cands.T
        a_lab = la[rows][:, None]
        known = (a_lab >= 0) & (lc[None, :] >= 0)
        same = known & (a_lab == lc[None, :])
        if inst_a is not None and inst_c is not None:
            own = (inst_a[rows][:, None] == inst_c[None, :]) & (inst_a[rows][:, None] >= 0)
        else:
            own = torch.zeros_like(known)
        extra = pos * (~own)
        acc["fn_num"] += float((neg * same).sum())
        acc["fn_den"] += float((neg * known).sum())
        acc["extra_w"] += float(extra.sum())
        acc["extra_hit"] += float((extra * same).sum())
        acc["extra_known"] += float((extra * known).sum())

        if per_anchor is not None:
            pa = F.normalize(per_anchor[rows].float(), dim=-1)
            extra_sim = torch.einsum("bd,bsd->bs", anchors[rows], pa)
            r, s = extra_sim.shape
            pp, pn = pairs.per_anchor_positives, pairs.per_anchor_negatives
            ppos = extra_sim.new_zeros(r, s) if pp is None else pp[rows].float()
            pneg = extra_sim.new_ones(r, s) if pn is None else pn[rows].float()
            pneg = pneg * (ppos == 0)
            sim = torch.cat([sim, extra_sim], dim=1)
            pos = torch.cat([pos, ppos], dim=1)
            neg = torch.cat([neg, pneg], dim=1)
        acc["pos_w"] += float(pos.sum())
        acc["neg_w"] += float(neg.sum())
        acc["pos_sim"] += float((pos * sim).sum())
        acc["neg_sim"] += float((neg * sim).sum())
        acc["valid"] += float((pos.sum(dim=1) > 0).sum())
        is_neg = neg > 0
        count = is_neg.sum(dim=1)
        kk = min(k, sim.shape[1])
        if kk > 0:
            top = sim.masked_fill(~is_neg, float("-inf")).topk(kk, dim=1).values
            take = torch.arange(kk, device=top.device)[None, :] < count[:, None]
            has = count > 0
            per_row = torch.where(take, top, 0.0).sum(dim=1) / count.clamp(1, kk)
            acc["hard_sum"] += float(per_row[has].sum())
            acc["hard_rows"] += float(has.sum())

    nn_hit, nn_count = _nn_precision(pairs, la, label_key)
    det, det_hit, det_count = _detections(pairs, la, lc)
    return {
        "valid_fraction": _ratio(acc["valid"], b),
        "pos_per_anchor": _ratio(acc["pos_w"], b),
        "neg_per_anchor": _ratio(acc["neg_w"], b),
        "fn_rate": _ratio(acc["fn_num"], acc["fn_den"]),
        "extra_pos_per_anchor": _ratio(acc["extra_w"], b),
        "extra_pos_precision": _ratio(acc["extra_hit"], acc["extra_known"]),
        "nn_precision": _ratio(nn_hit, nn_count),
        "fn_detected_per_anchor": det / b if b and not math.isnan(det) else NAN,
        "fn_detection_precision": _ratio(det_hit, det_count),
        "pos_sim": _ratio(acc["pos_sim"], acc["pos_w"]),
        "neg_sim": _ratio(acc["neg_sim"], acc["neg_w"]),
        "hardness": _ratio(acc["hard_sum"], acc["hard_rows"]),
    }


def _info_scalars(info: Mapping[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, v in info.items():
        if isinstance(v, (bool, int, float)):
            out[f"info.{name}"] = float(v)
        elif isinstance(v, Tensor) and v.numel() == 1 and not v.is_complex():
            out[f"info.{name}"] = float(v.detach().float().item())
    return out


def average(rows: list[dict[str, float]]) -> dict[str, float]:
    """Mean of several diagnostics dicts, key by key, ignoring ``nan`` entries.

    Args:
        rows: dicts from :func:`pair_diagnostics`.

    Returns:
        Key to the mean of its non-``nan`` values (``nan`` if it has none).
    """
    keys: dict[str, None] = {}
    for r in rows:
        keys.update(dict.fromkeys(r))
    out: dict[str, float] = {}
    for key in keys:
        vals = [r[key] for r in rows if key in r and not math.isnan(r[key])]
        out[key] = sum(vals) / len(vals) if vals else NAN
    return out
