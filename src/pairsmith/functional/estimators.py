"""Denominator estimators: debiased (DCL) and hard-negative (HCL) negative mass.

InfoNCE's denominator holds the negative mass ``Ng = sum_j n_ij exp(s_ij)``. Two
techniques of the survey replace it by an estimator (see
:class:`~pairsmith.core.pairs.DenominatorEstimator` and
:func:`~pairsmith.functional.infonce.info_nce`):

* **DCL**, debiased contrastive learning (Chuang et al., NeurIPS 2020; survey 4.2): the
  "negatives" of an anchor contain same-class samples with prior ``tau_plus``; their
  expected contribution, estimated with the positive, is subtracted::

      Ng = (-tau_plus * N * exp(s_p) + sum_j exp(s_j)) / (1 - tau_plus)

* **HCL**, hard negative sampling (Robinson et al., ICLR 2021; survey 4.1): the negatives
  are importance-weighted by ``imp_j = exp(beta * s_j)`` so harder (more similar)
  negatives count more::

      reweight = sum_j imp_j exp(s_j) / mean_j(imp_j)
      Ng = (-tau_plus * N * exp(s_p) + reweight) / (1 - tau_plus)

  HCL at ``beta = 0`` is DCL, and DCL at ``tau_plus = 0`` is the plain negative mass.

Both clamp ``Ng >= N * exp(-1 / tau)`` (the smallest mass N unit-norm negatives can have),
with :func:`torch.clamp` semantics: a clamped entry is the constant bound and passes no
gradient. ``s`` are the logits already divided by the temperature ``tau``; ``N`` is the
number of negatives of the row. This follows ``criterion`` in ``joshr17/HCL/image/main.py``
and the debiased branch of ``chingyaoc/DCL/main.py`` (commit c2a3b96), computed in log
space so that large ``1 / tau`` does not overflow.

Weighted negatives (``n_ij`` in ``(0, 1]``) enter as weights of the sums and of the mean:
``reweight = (sum_j n_j) * sum_j n_j imp_j exp(s_j) / sum_j n_j imp_j``, so that at
``beta = 0`` the estimator is exactly the default ``sum_j n_j exp(s_j)``. ``N`` counts
the columns with ``n_ij > 0``. With 0/1 weights (every published configuration) this is
the reference formula.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from pairsmith.functional.infonce import masked_logsumexp, neg_fill


def check_tau_plus(tau_plus: object) -> float:
    """Validate the positive-class prior.

    Args:
        tau_plus: the prior ``tau+`` of a negative being a false negative.

    Returns:
        ``tau_plus`` as a float.

    Raises:
        ValueError: unless ``tau_plus`` is a real number in ``[0, 1)``.
    """
    if (
        isinstance(tau_plus, bool)
        or not isinstance(tau_plus, (int, float))
        or not 0.0 <= float(tau_plus) < 1.0
    ):
        raise ValueError(f"tau_plus must be a number in [0, 1), got {tau_plus!r}")
    return float(tau_plus)


def check_beta(beta: object) -> float:
    """Validate the hardness concentration.

    Args:
        beta: HCL's concentration ``beta`` (0 = uniform weights, i.e. DCL).

    Returns:
        ``beta`` as a float.

    Raises:
        ValueError: unless ``beta`` is a finite real number ``>= 0``.
    """
    if (
        isinstance(beta, bool)
        or not isinstance(beta, (int, float))
        or not (math.isfinite(beta) and beta >= 0.0)
    ):
        raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
    return float(beta)


def _check_temperature(temperature: object) -> float:
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not (math.isfinite(temperature) and temperature > 0)
    ):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return float(temperature)


def _log1mexp(a: Tensor) -> Tensor:
    """``log(1 - exp(a))`` for ``a < 0``, accurate on both sides of ``-log 2``."""
    return torch.where(a > -math.log(2.0), torch.log(-torch.expm1(a)), torch.log1p(-torch.exp(a)))


def debiased_log_negative_mass(
    logits: Tensor,
    neg_weight: Tensor,
    temperature: float,
    tau_plus: float,
    beta: float = 0.0,
    at: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """``log Ng`` of the HCL estimator (DCL when ``beta = 0``), for every column.

    ``Ng_ij`` is the estimate used when column ``j`` is the positive of anchor ``i``; the
    loss reads it at the positive columns (``at``). It depends on the positive's own logit
    ``s_ij`` through the debiasing term ``-tau_plus * N_i * exp(s_ij)``.

    Args:
        logits: ``[r, M']`` logits ``s = <a, c> / temperature``.
        neg_weight: ``[r, M']`` negative weights, a bool mask or non-negative floats (0 at
            the anchor's own column and at its positives).
        temperature: the ``tau > 0`` the logits were divided by (sets the clamp
            ``N * exp(-1 / tau)``).
        tau_plus: class prior ``tau+`` in ``[0, 1)``; 0 disables debiasing.
        beta: concentration ``>= 0`` of the hardness weights ``exp(beta * s)``; 0 is DCL.
        at: ``(rows, cols)`` long ``[P]`` each: compute ``log Ng`` only at these entries
            (the loss passes its positives; the row sums still see every column).

    Returns:
        ``[r, M']`` tensor ``log Ng`` (``[P]`` with ``at``). Rows without negatives get
        ``Ng = 0`` (a large finite negative, as
        :func:`~pairsmith.functional.infonce.neg_fill`), never NaN. Gradient flows through
        the logits, including the hardness weights (as in the reference code, nothing is
        detached); clamped entries carry no gradient.

    Raises:
        ValueError: for a bad ``tau_plus``, ``beta``, ``temperature`` or shapes.
    """
    tau_plus = check_tau_plus(tau_plus)
    beta = check_beta(beta)
    temperature = _check_temperature(temperature)
    if logits.dim() != 2:
        raise ValueError(f"logits must be [r, M'], got shape {tuple(logits.shape)}")
    if neg_weight.shape != logits.shape:
        raise ValueError(
            f"neg_weight must have the logits' shape {tuple(logits.shape)}, "
            f"got {tuple(neg_weight.shape)}"
        )
    if not logits.is_floating_point():
        raise ValueError(f"logits must be floating point, got dtype {logits.dtype}")

    dtype = logits.dtype
    fill = neg_fill(dtype)
    binary = neg_weight.dtype == torch.bool
    present = neg_weight if binary else neg_weight > 0
    count = present.sum(dim=1, keepdim=True).to(dtype)  # N, [r, 1]
    has_neg = count > 0
    log_n = torch.where(has_neg, count, 1.0).log()

    def weighted_lse(x: Tensor) -> Tensor:  # LSE_j(x_j + log w_j), [r, 1]
        return masked_logsumexp(x, neg_weight).unsqueeze(1)

    # log reweight = log sum_j w_j imp_j e^{s_j} - log(sum_j w_j imp_j / sum_j w_j)
    if beta == 0.0:
        # imp = 1: exactly the default negative mass LSE(s + log w).
        log_reweight = weighted_lse(logits)
    else:
        total_w = count if binary else neg_weight.to(dtype).sum(dim=1, keepdim=True)
        log_total_w = torch.where(has_neg, total_w, 1.0).log()
        log_reweight = (
            log_total_w + weighted_lse((1.0 + beta) * logits) - weighted_lse(beta * logits)
        )
    log_reweight = torch.where(has_neg, log_reweight, 0.0)
    log_floor = log_n - 1.0 / temperature  # log(N e^{-1/tau}), [r, 1]

    if at is None:
        s = logits
    else:
        # Only the read entries: [P] instead of [r, M'] for the per-column terms.
        rows, cols = at
        s = logits[rows, cols]
        log_n, log_reweight, log_floor, has_neg = (
            t[rows, 0] for t in (log_n, log_reweight, log_floor, has_neg)
        )

    if tau_plus == 0.0:
        log_raw = log_reweight.expand_as(s)
        active = log_raw >= log_floor
    else:
        # Ng = reweight (1 - ratio) / (1 - tau+), ratio = tau+ N e^{s_p} / reweight.
        log_ratio = math.log(tau_plus) + log_n + s - log_reweight
        with torch.no_grad():
            below_one = log_ratio < 0
            safe = torch.where(below_one, log_ratio, -1.0)
            raw = log_reweight + _log1mexp(safe) - math.log1p(-tau_plus)
            # torch.clamp semantics: the raw value passes (with gradient) iff raw >= bound.
            active = below_one & (raw >= log_floor)
        # Only unclamped entries are evaluated with gradient, so log(1 - ratio) is never
        # differentiated near ratio = 1 (which would give 0 * inf = NaN in backward).
        safe = torch.where(active, log_ratio, -1.0)
        log_raw = log_reweight + _log1mexp(safe) - math.log1p(-tau_plus)
    log_ng = torch.where(active, log_raw, log_floor)
    return torch.where(has_neg, log_ng, fill)


@dataclass(frozen=True)
class DebiasedEstimator:
    """A :class:`~pairsmith.core.pairs.DenominatorEstimator` for DCL and HCL.

    Set on :attr:`Pairs.estimator <pairsmith.core.pairs.Pairs.estimator>` by the curators
    :class:`~pairsmith.negatives.false_negative_removal.dcl.DebiasedNegatives` and
    :class:`~pairsmith.negatives.hard_negative_selection.hcl.HardNegatives`.

    Attributes:
        tau_plus: class prior ``tau+`` in ``[0, 1)``.
        beta: hardness concentration ``>= 0`` (0 = DCL).
    """

    tau_plus: float
    beta: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "tau_plus", check_tau_plus(self.tau_plus))
        object.__setattr__(self, "beta", check_beta(self.beta))

    def __call__(
        self, logits: Tensor, neg_weight: Tensor, temperature: float, rows: Tensor, cols: Tensor
    ) -> Tensor:
        """Return ``log Ng`` ``[P]`` at the entries ``(rows, cols)``.

        See :func:`debiased_log_negative_mass`.
        """
        return debiased_log_negative_mass(
            logits, neg_weight, temperature, self.tau_plus, self.beta, at=(rows, cols)
        )
