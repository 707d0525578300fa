"""MoCHi: synthetic hard negatives mixed from each query's hardest queue negatives.

Kalantidis et al., "Hard Negative Mixing for Contrastive Learning", NeurIPS 2020; survey
section 4.1 (hard negative selection). There is no official code; the formulas follow the
paper as summarised in ``shared/reference/methods.md`` section 8.1 and the two public
ports, ``giakoumoglou/synco`` (``synco/builder.py``, whose types 3 and 1 are MoCHi's
types 1 and 2) and ``davidsvy/hard-negative-mixing`` (``src/moco.py``).

For a query (anchor) ``q`` with negatives ``Q`` in one segment (MoCo's queue), let
``Q~^N`` be the ``N`` negatives with the largest ``q . n``. MoCHi(N, s, s') appends to
*that query's* logits only:

* type 1, ``s`` mixes: ``h = normalize(alpha n_i + (1 - alpha) n_j)``, with ``n_i, n_j``
  drawn uniformly (with replacement) from ``Q~^N`` and ``alpha ~ U(0, 1)``;
* type 2, ``s'`` mixes: ``h' = normalize(beta q + (1 - beta) n_j)``, ``n_j`` drawn from
  ``Q~^N`` and ``beta ~ U(0, beta_max)`` with ``beta_max <= 0.5``: the query's share stays
  below one half (the ``davidsvy`` README writes the opposite, ``beta n + (1 - beta) q``;
  its code, the SynCo port and the paper keep the query's share below 0.5).

The mixes are constants (computed without gradient, like both ports), never enqueued,
and private to their anchor, so they live in the ``per_anchor`` slot of
:class:`~pairsmith.core.pairs.Pairs` with ``per_anchor_negatives = 1``; the InfoNCE loss
then computes, per query, logits ``[l_pos, l_neg(queue), l_mix] / tau`` exactly as the
ports do.

What holds and what does not (methods.md section 0 item 5, section 8.1):
``||h|| = ||h'|| = 1``; ``q . h >= alpha q . n_i + (1 - alpha) q . n_j`` when both parents
have positive similarity (a convex combination of unit vectors has norm <= 1, so
normalising increases a positive dot product); ``q . h' > q . n_j`` (``h'`` lies on the arc
from ``n_j`` to ``q``). Mixes are *not* generally more similar to ``q`` than the single
hardest real negative; on average they are more similar than the mean of ``Q~^N``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from pairsmith.core.pairs import SEGMENT_KINDS, Pairs, Segment
from pairsmith.core.registry import register_curator
from pairsmith.core.weights import support

# Rows per block when ranking the hardest negatives: keep one [rows, M] block this size.
_BLOCK_ELEMENTS = 1 << 22
# Rows per block when building the mixes: one block's gathered parents ([rows, s + s', D]
# each) stay in the CPU cache while they are combined, normalised and written out. Larger
# blocks spill to memory and every pass over them costs a full read (measured on CPU).
_MIX_BLOCK_ELEMENTS = 1 << 20
# F.normalize's default eps: a mix is x / max(||x||, eps).
_NORM_EPS = 1e-12


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _build_mixes(
    table: Tensor, first: Tensor, second: Tensor, share: Tensor, out: Tensor
) -> Tensor:
    """Write ``normalize(share * table[first] + (1 - share) * table[second])`` into ``out``.

    The straightforward form (gather ``[B, S, D]`` parents, combine, ``F.normalize``,
    then concatenate) allocates several tensors the size of the output, and on CPU the
    first touch of each fresh page costs more than the arithmetic. Here the work runs in
    row blocks through two small reused buffers, and each mix is written once, into
    ``out``. The element-wise operations are the straightforward ones in the same order
    (``F.normalize`` is ``x / max(||x||, eps)``), so the mixes are the same numbers.

    Args:
        table: ``[T, D]`` parent rows.
        first: ``[B, S]`` long rows of ``table``, the first parents.
        second: ``[B, S]`` long rows of ``table``, the second parents.
        share: ``[B, S, 1]`` the first parent's share.
        out: ``[B, S, D]`` destination (may be a strided view).

    Returns:
        ``[B, S]``: the divisor of each mix, ``max(||x||, eps)`` of its unnormalised
        combination ``x``.
    """
    b, s_new, d = out.shape
    rest = 1 - share
    rows_per_block = max(1, _MIX_BLOCK_ELEMENTS // max(s_new * d, 1))
    r_max = min(rows_per_block, b)
    first_buf, second_buf = table.new_empty(r_max * s_new, d), table.new_empty(r_max * s_new, d)
    norms = table.new_empty(b, s_new, 1)
    for start in range(0, b, rows_per_block):
        rows = slice(start, min(start + rows_per_block, b))
        r = rows.stop - rows.start
        x = torch.index_select(table, 0, first[rows].reshape(-1), out=first_buf[: r * s_new])
        y = torch.index_select(table, 0, second[rows].reshape(-1), out=second_buf[: r * s_new])
        x, y = x.view(r, s_new, d), y.view(r, s_new, d)
        # Not addcmul: it rounds differently from the straightforward a * x + b * y.
        x.mul_(share[rows]).add_(y.mul_(rest[rows]))
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True, out=norms[rows])
        torch.div(x, norm.clamp_min_(_NORM_EPS), out=out[rows])
    return norms[..., 0]


@register_curator(
    "negatives.hard_negative_selection.mochi", taxonomy=("negatives", "hard_negative_selection")
)
class MoCHi(nn.Module):
    """MoCHi(N, s, s') hard negative mixing (Kalantidis et al. 2020; survey 4.1).

    Per anchor ``q`` (vectorised over anchors, no Python loop):

    1. candidates: the columns of segment ``segment`` whose negative weight for this
       anchor is non-zero and that are not positives of it (the loss would not count them
       as negatives either); the anchor's own column is never a candidate;
    2. ``Q~^N``: the ``min(N, #candidates)`` candidates with the largest ``q . n``;
    3. ``s`` type-1 mixes ``normalize(alpha n_i + (1 - alpha) n_j)``, then ``s'`` type-2
       mixes ``normalize(beta q + (1 - beta) n_j)`` (module docstring), all detached.

    The mixes are appended to ``per_anchor`` (``[B, S + s + s', D]``, after any existing
    per-anchor candidates) with negative weight 1 and positive weight 0. An anchor without
    any candidate gets mixes of weight 0 (ignored by the loss). Embeddings are used as
    given: like MoCo, pass L2-normalised queries and queue entries.

    Defaults: ``N = 1024, s = 1024, s' = 128`` is the paper's ImageNet-100 setting
    MoCHi(1024, 1024, 128) (methods.md 8.1, low confidence); ``beta_max = 0.5`` is the
    paper's / ports' query share bound. The paper also mixes only after a short warm-up
    (SynCo's port: 10 epochs); the default here is no warm-up, set ``warmup_steps``.

    Warm-up: ``forward(pairs, step=None)``. With ``step=None`` an internal counter
    (``num_steps``, advanced by each call while the module is in training mode, saved in
    ``state_dict``) gives the step. Before ``warmup_steps`` (``step < warmup_steps``), and
    whenever ``s = s' = 0``, the curator is the identity: it returns its input.

    Randomness: with ``seed`` set, a ``torch.Generator`` per device seeded with ``seed``
    (its state is saved in ``state_dict``; under DDP give each rank its own seed, e.g.
    ``seed + rank``); with ``seed=None``, torch's global RNG. Draw
    order per call: type-1 first parent slots, second parent slots, alphas; type-2 parent
    slots, betas.

    Diagnostics in ``pairs.info`` (detached 0-dim tensors, means over anchors that have
    candidates): ``mochi/hardest_similarity`` (``max q . n``), ``mochi/hard_pool_similarity``
    (mean ``q . n`` over ``Q~^N``), ``mochi/mix_similarity`` and
    ``mochi/mix_above_hardest`` (mean ``q . h`` of type-1 mixes, fraction above the
    hardest real negative), ``mochi/query_mix_similarity`` and
    ``mochi/query_mix_above_hardest`` (the same for type 2). With
    ``record_coefficients=True`` (tests, debugging) ``mochi/coefficients`` holds the draws:
    ``hard_index [B, N]`` and ``hard_count [B]`` (segment rows of ``Q~^N``, hardest first,
    and how many are valid), ``mix_index`` (a pair of ``[B, s]`` segment rows),
    ``alpha [B, s]``, ``query_mix_index [B, s']``, ``beta [B, s']``.

    Args:
        num_hard: N > 0, the size of each anchor's hard-negative pool.
        num_mix: s >= 0, type-1 mixes (two hard negatives) per anchor.
        num_query_mix: s' >= 0, type-2 mixes (query and a hard negative) per anchor.
        query_beta_max: the query's largest share, in (0, 0.5].
        warmup_steps: >= 0; identity while ``step < warmup_steps``.
        segment: the segment holding the negatives (``"queue"`` for MoCo).
        seed: seed of the curator's generator, or ``None`` for the global RNG.
        record_coefficients: store the random draws in ``pairs.info``.

    Raises:
        ValueError: for a bad argument (named in the message), at construction; at call
            time if ``pairs`` has no segment ``segment`` or ``step`` is not an int >= 0.

    Example:
        >>> from pairsmith.losses.infonce import MoCoLoss
        >>> loss_fn = MoCoLoss(0.2, curators=[MoCHi(1024, 1024, 128, seed=0)])  # doctest: +SKIP
    """

    def __init__(
        self,
        num_hard: int = 1024,
        num_mix: int = 1024,
        num_query_mix: int = 128,
        query_beta_max: float = 0.5,
        warmup_steps: int = 0,
        segment: str = "queue",
        seed: int | None = None,
        record_coefficients: bool = False,
    ) -> None:
        super().__init__()
        if not _is_int(num_hard) or num_hard <= 0:
            raise ValueError(f"num_hard must be a positive int, got {num_hard!r}")
        if not _is_int(num_mix) or num_mix < 0:
            raise ValueError(f"num_mix must be an int >= 0, got {num_mix!r}")
        if not _is_int(num_query_mix) or num_query_mix < 0:
            raise ValueError(f"num_query_mix must be an int >= 0, got {num_query_mix!r}")
        if (
            not isinstance(query_beta_max, (int, float))
            or isinstance(query_beta_max, bool)
            or not 0.0 < query_beta_max <= 0.5
        ):
            raise ValueError(
                f"query_beta_max must lie in (0, 0.5] (the query's share stays below one "
                f"half), got {query_beta_max!r}"
            )
        if not _is_int(warmup_steps) or warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an int >= 0, got {warmup_steps!r}")
        if segment not in SEGMENT_KINDS:
            raise ValueError(f"segment must be one of {SEGMENT_KINDS}, got {segment!r}")
        if seed is not None and not _is_int(seed):
            raise ValueError(f"seed must be an int or None, got {seed!r}")
        if not isinstance(record_coefficients, bool):
            raise ValueError(f"record_coefficients must be a bool, got {record_coefficients!r}")
        self.num_hard = num_hard
        self.num_mix = num_mix
        self.num_query_mix = num_query_mix
        self.query_beta_max = float(query_beta_max)
        self.warmup_steps = warmup_steps
        self.segment = segment
        self.seed = seed
        self.record_coefficients = record_coefficients
        self.num_steps = 0
        self._generators: dict[str, torch.Generator] = {}

    # ------------------------------------------------------------------ state
    def get_extra_state(self) -> dict[str, Any]:
        """The step counter and the generators' states (saved in ``state_dict``)."""
        return {
            "num_steps": self.num_steps,
            "generators": {k: g.get_state() for k, g in self._generators.items()},
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`get_extra_state` saved."""
        self.num_steps = int(state["num_steps"])
        self._generators = {}
        for dev, st in state.get("generators", {}).items():
            g = torch.Generator(device=dev)
            g.set_state(st)
            self._generators[dev] = g

    def _generator(self, device: torch.device) -> torch.Generator | None:
        if self.seed is None:
            return None
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[key]

    # ------------------------------------------------------------------ curation
    def forward(self, pairs: Pairs, step: int | None = None) -> Pairs:
        """Append each anchor's mixes to the ``per_anchor`` slot (or return ``pairs``).

        Args:
            pairs: anchors ``[B, D]`` (the queries) and a segment ``self.segment`` ``[K, D]``
                holding the negatives, with their positive / negative weights.
            step: the training step for the warm-up; ``None`` uses the internal counter.

        Returns:
            A copy with ``per_anchor [B, S + s + s', D]``, ``per_anchor_negatives`` (1 for
            the mixes), ``per_anchor_positives`` (0 for the mixes) and diagnostics in
            ``info``; ``pairs`` itself during the warm-up or when ``s = s' = 0``.
        """
        if step is None:
            step = self.num_steps
            if self.training:
                self.num_steps += 1
        elif not _is_int(step) or step < 0:
            raise ValueError(f"step must be an int >= 0 or None, got {step!r}")
        names = [s.name for s in pairs.segments]
        if self.segment not in names:
            raise ValueError(
                f"segment {self.segment!r} (the negatives to mix) is not among the pairs' "
                f"segments {names}"
            )
        total = self.num_mix + self.num_query_mix
        if step < self.warmup_steps or total == 0:
            return pairs
        with torch.no_grad():
            return self._mix(pairs)

    def _segment(self, pairs: Pairs) -> Segment:
        """The first segment called ``self.segment`` (the one ``segment_slice`` finds)."""
        return next(s for s in pairs.segments if s.name == self.segment)

    def _hardest(self, pairs: Pairs, sl: slice, n: int) -> tuple[Tensor, Tensor, Tensor]:
        """Per anchor: the ``n`` best candidate similarities, their segment rows, counts."""
        q = pairs.anchors.detach()
        emb = self._segment(pairs).embeddings.detach()
        b, m = pairs.num_anchors, pairs.num_candidates
        rows_per_block = max(1, _BLOCK_ELEMENTS // max(m, 1))
        sims, idxs, counts = [], [], []
        for start in range(0, b, rows_per_block):
            rows = slice(start, min(start + rows_per_block, b))
            # The loss's own masks (bool for binary rules, self removed): a candidate is a
            # negative column that is not a positive, the columns the loss counts as
            # negatives. Same support as ``negative_block > 0 & positive_block == 0``.
            pos, neg = pairs.weight_masks(rows)
            cand = support(neg[:, sl]) & ~support(pos[:, sl])
            scores = (q[rows] @ emb.T).masked_fill_(~cand, float("-inf"))
            v, i = scores.topk(n, dim=1, largest=True, sorted=True)
            sims.append(v)
            idxs.append(i)
            counts.append(cand.sum(dim=1).clamp_max(n))
        if len(sims) == 1:
            return sims[0], idxs[0], counts[0]
        return torch.cat(sims), torch.cat(idxs), torch.cat(counts)

    def _slots(self, count: Tensor, n: int, gen: torch.Generator | None) -> Tensor:
        """``[B, n]`` uniform positions in ``[0, count_b)`` (0 where ``count_b = 0``)."""
        u = torch.rand(count.shape[0], n, generator=gen, device=count.device)
        top = (count - 1).clamp_min(0)[:, None]
        return torch.minimum((u * count[:, None]).long(), top)

    def _mix(self, pairs: Pairs) -> Pairs:
        sl = pairs.segment_slice(self.segment)
        k = sl.stop - sl.start
        if k == 0:
            return pairs
        q = pairs.anchors.detach()
        emb = self._segment(pairs).embeddings.detach()
        b, dev, dtype = q.shape[0], q.device, q.dtype
        n = min(self.num_hard, k)
        hard_sim, hard_idx, count = self._hardest(pairs, sl, n)
        has = count > 0
        gen = self._generator(dev)

        info: dict[str, Any] = {}
        coef: dict[str, Any] = {"hard_index": hard_idx, "hard_count": count}
        hardest = hard_sim[:, 0]
        pool_valid = torch.arange(n, device=dev)[None, :] < count[:, None]

        def mean_over(x: Tensor, valid: Tensor) -> Tensor:
            return torch.where(valid, x, 0.0).sum() / valid.sum().clamp_min(1)

        info["mochi/hardest_similarity"] = mean_over(hardest, has)
        pool_sim = torch.where(pool_valid, hard_sim, 0.0)  # hard_sim is -inf off the pool
        info["mochi/hard_pool_similarity"] = mean_over(pool_sim, pool_valid)
        # Every mix is ``share * first + (1 - share) * second``, normalised, with the
        # parents as rows of ``table`` = the segment, then (for type 2) the queries:
        # type 1 (first, second, share) = (n_i, n_j, alpha), type 2 = (q, n_j, beta).
        # The draws are made here, in the documented order, before any mix is built.
        # ``q_first`` / ``q_second`` are the query's similarities to the parents, read
        # from the ranking (``pool_sim`` at the drawn slot) instead of recomputed.
        s, s2 = self.num_mix, self.num_query_mix
        parts: list[tuple[Tensor, Tensor, Tensor, Tensor, Tensor]] = []
        if s:
            slot_i, slot_j = self._slots(count, s, gen), self._slots(count, s, gen)
            ci, cj = hard_idx.gather(1, slot_i), hard_idx.gather(1, slot_j)
            alpha = torch.rand(b, s, 1, generator=gen, device=dev).to(dtype)
            parts.append((ci, cj, alpha, pool_sim.gather(1, slot_i), pool_sim.gather(1, slot_j)))
            coef.update(mix_index=(ci, cj), alpha=alpha[..., 0])
        if s2:
            slot_k = self._slots(count, s2, gen)
            ck = hard_idx.gather(1, slot_k)
            beta = torch.rand(b, s2, 1, generator=gen, device=dev).to(dtype) * self.query_beta_max
            query_rows = torch.arange(k, k + b, device=dev)[:, None].expand(b, s2)
            q_q = (q * q).sum(dim=1, keepdim=True).expand(b, s2)
            parts.append((query_rows, ck, beta, q_q, pool_sim.gather(1, slot_k)))
            coef.update(query_mix_index=ck, beta=beta[..., 0])
        table = torch.cat([emb, q]) if s2 else emb
        first, second, share, q_first, q_second = (
            p[0] if len(parts) == 1 else torch.cat(p, dim=1) for p in zip(*parts, strict=True)
        )

        # The mixes are written straight into the new per-anchor tensor (after any
        # existing per-anchor candidates) instead of being concatenated afterwards.
        s_new = s + s2
        s_old = 0 if pairs.per_anchor is None else pairs.per_anchor.shape[1]
        old = pairs.per_anchor
        keep_grad = old is not None and old.requires_grad
        per_anchor = q.new_empty(b, s_new if keep_grad else s_old + s_new, q.shape[1])
        if old is not None and not keep_grad:
            per_anchor[:, :s_old] = old
        norm = _build_mixes(table, first, second, share, per_anchor[:, -s_new:])
        if old is not None and keep_grad:
            # Earlier per-anchor candidates with gradient (another curator's) keep it: the
            # constant mixes are concatenated outside this no-grad block.
            with torch.enable_grad():
                per_anchor = torch.cat([old, per_anchor], dim=1)
        # q . h without a pass over the mixes: h = (share a + (1 - share) b) / norm, so
        # q . h = (share q.a + (1 - share) q.b) / norm (the same number up to rounding; a
        # mix at an exact tie with the hardest negative may count as above it or not).
        w = share[..., 0]
        sim = (w * q_first + (1 - w) * q_second) / norm
        if s:
            self._record(info, "mix", sim[:, :s], hardest, has)
        if s2:
            self._record(info, "query_mix", sim[:, s:], hardest, has)
        if self.record_coefficients:
            info["mochi/coefficients"] = coef

        w_new = has[:, None].expand(b, s_new).to(dtype)
        if pairs.per_anchor is None:
            neg_w, pos_w = w_new, None
        else:
            old_neg = pairs.per_anchor_negatives
            if old_neg is None:  # the loss reads None as "every per-anchor candidate"
                old_neg = torch.ones(b, s_old, dtype=dtype, device=dev)
            neg_w = torch.cat([old_neg.to(dtype), w_new], dim=1)
            old_pos = pairs.per_anchor_positives
            pos_w = (
                None
                if old_pos is None
                else torch.cat([old_pos, old_pos.new_zeros(b, s_new)], dim=1)
            )
        return pairs.replace(
            per_anchor=per_anchor,
            per_anchor_negatives=neg_w,
            per_anchor_positives=pos_w,
            info={**pairs.info, **info},
        )

    @staticmethod
    def _record(info: dict[str, Any], name: str, sim: Tensor, hardest: Tensor, has: Tensor) -> None:
        valid = has[:, None].expand_as(sim)
        n = valid.sum().clamp_min(1)
        info[f"mochi/{name}_similarity"] = torch.where(valid, sim, 0.0).sum() / n
        above = (sim > hardest[:, None]) & valid
        info[f"mochi/{name}_above_hardest"] = above.sum().to(sim.dtype) / n

    def extra_repr(self) -> str:
        """The options, for ``repr``."""
        return (
            f"num_hard={self.num_hard}, num_mix={self.num_mix}, "
            f"num_query_mix={self.num_query_mix}, query_beta_max={self.query_beta_max}, "
            f"warmup_steps={self.warmup_steps}, segment={self.segment!r}, seed={self.seed}"
        )
