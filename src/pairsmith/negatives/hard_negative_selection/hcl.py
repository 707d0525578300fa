"""HCL: hard negative sampling (Robinson, Chuang, Sra, Jegelka, ICLR 2021; survey 4.1).

HCL samples negatives from ``q(x-) ∝ exp(beta * s(x-))``: the more similar a negative is
to the anchor, the more it counts. It is implemented by importance weighting the
debiased (DCL) negative mass::

    imp_j = exp(beta * s_j)                     (s = <a, c> / tau)
    reweight = sum_j imp_j exp(s_j) / mean_j(imp_j)
    Ng = (-tau_plus * N * exp(s_p) + reweight) / (1 - tau_plus),  Ng >= N * exp(-1 / tau)

and the loss ``-log(e^{s_p} / (e^{s_p} + Ng))`` (:func:`~pairsmith.functional.info_nce`
with ``positives_in_denominator="self"``). ``beta = 0`` is DCL; ``beta = 0`` and
``tau_plus = 0`` is NT-Xent exactly.

Reference: ``criterion`` in ``joshr17/HCL/image/main.py`` (``estimator='hard'``).
Recipe from that code: temperature **0.5** (the loss temperature, not a parameter of
this curator), ``tau_plus = 0.1``, ``beta = 1.0``, batch 256, Adam lr 1e-3, weight
decay 1e-6, 400 epochs, feature dimension 128. ``--anneal down`` lowers beta linearly
to 0 in 9 steps: see :func:`annealed_beta` and :meth:`HardNegatives.for_epoch`.
"""

from __future__ import annotations

import copy
from typing import Literal

from pairsmith.core.pairs import Pairs
from pairsmith.core.registry import register_curator
from pairsmith.functional.estimators import DebiasedEstimator, check_beta

Anneal = Literal["down"]

#: Number of values of the reference's ``np.linspace(beta, 0, n_steps)`` schedule.
ANNEAL_STEPS = 9


def annealed_beta(beta: float, epoch: int, epochs: int, n_steps: int = ANNEAL_STEPS) -> float:
    """Beta used during ``epoch`` under the reference ``--anneal down`` schedule.

    The reference draws ``betas = iter(np.linspace(beta, 0, n_steps))`` and, after every
    (1-based) epoch that is a multiple of ``int(epochs / n_steps)``, sets
    ``beta = next(betas)``. The first draw is ``beta`` itself, so beta stays at its
    initial value for two intervals, then decreases by ``beta / (n_steps - 1)`` per
    interval and reaches 0. This reproduces that schedule exactly, and also covers the
    cases where the reference would fail: ``epochs < n_steps`` (interval 0, a division
    by zero there: here an interval of 1 epoch) and more than ``n_steps`` multiples
    (``StopIteration`` there: here beta stays at 0).

    Args:
        beta: initial concentration ``>= 0``.
        epoch: the current epoch, 0-based (as in :meth:`Method.training_step
            <pairsmith.methods.base.Method.training_step>`).
        epochs: total number of epochs ``> 0``.
        n_steps: number of schedule values ``>= 2`` (9 in the reference).

    Returns:
        The beta for this epoch.

    Raises:
        ValueError: for a negative ``beta`` or ``epoch``, non-positive ``epochs`` or
            ``n_steps < 2``.
    """
    beta = check_beta(beta)
    for name, value, low in (("epoch", epoch, 0), ("epochs", epochs, 1), ("n_steps", n_steps, 2)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    interval = max(1, epochs // n_steps)
    draws = epoch // interval  # number of `beta = next(betas)` done before this epoch
    if draws == 0:
        return beta
    i = min(draws, n_steps) - 1  # index into linspace(beta, 0, n_steps)
    return beta * (n_steps - 1 - i) / (n_steps - 1)


@register_curator(
    "negatives.hard_negative_selection.hcl", taxonomy=("negatives", "hard_negative_selection")
)
class HardNegatives:
    """HCL: importance-weight hard negatives by exp(beta * s) (Robinson et al. 2021).

    Sets :attr:`Pairs.estimator <pairsmith.core.pairs.Pairs.estimator>` to the hard,
    debiased estimator (:func:`~pairsmith.functional.estimators.debiased_log_negative_mass`);
    the positives and negatives are unchanged. The estimator is differentiable on purpose:
    as in the reference code the gradient also flows through the importance weights.
    Replaces any estimator already set (HCL at ``beta = 0`` is DCL).

    Use with temperature 0.5 (the paper's setting) and ``positives_in_denominator="self"``.
    With ``anneal="down"``, call :meth:`for_epoch` once per epoch and apply the curator
    it returns.
    """

    def __init__(
        self, beta: float = 1.0, tau_plus: float = 0.1, anneal: Anneal | None = None
    ) -> None:
        """Create the curator.

        Args:
            beta: concentration ``>= 0`` of the hardness weights (1.0 in the paper's
                best STL-10 run; 0 gives DCL).
            tau_plus: class prior ``tau+`` in ``[0, 1)`` (0 disables debiasing).
            anneal: ``None`` (constant beta) or ``"down"``: beta decreases linearly to 0
                over training (:func:`annealed_beta`), the reference's ``--anneal down``.

        Raises:
            ValueError: for a bad ``beta``, ``tau_plus`` or ``anneal``.
        """
        if anneal not in (None, "down"):
            raise ValueError(f"anneal must be None or 'down', got {anneal!r}")
        self.beta = check_beta(beta)
        self.anneal: Anneal | None = anneal
        self.estimator = DebiasedEstimator(tau_plus=tau_plus, beta=self.beta)

    @property
    def tau_plus(self) -> float:
        """The class prior tau+."""
        return self.estimator.tau_plus

    @property
    def current_beta(self) -> float:
        """The beta the estimator uses now (differs from ``beta`` once annealed)."""
        return self.estimator.beta

    def for_epoch(self, epoch: int, epochs: int) -> HardNegatives:
        """The curator to apply during ``epoch`` (its beta follows ``anneal``).

        Args:
            epoch: the current epoch, 0-based.
            epochs: total number of epochs.

        Returns:
            ``self`` without annealing; otherwise a copy whose estimator uses
            ``annealed_beta(self.beta, epoch, epochs)`` (``self`` is not changed).

        Raises:
            ValueError: for a bad ``epoch`` or ``epochs``.
        """
        if self.anneal is None:
            return self
        out = copy.copy(self)
        out.estimator = DebiasedEstimator(
            tau_plus=self.tau_plus, beta=annealed_beta(self.beta, epoch, epochs)
        )
        return out

    def __call__(self, pairs: Pairs) -> Pairs:
        """Attach the hard-negative estimator.

        Args:
            pairs: anchors ``[B, D]`` against candidates ``[M, D]``.

        Returns:
            A copy of ``pairs`` with ``estimator`` set; ``pairs`` itself is untouched.
        """
        return pairs.replace(estimator=self.estimator)

    def __repr__(self) -> str:
        extra = "" if self.anneal is None else f", anneal={self.anneal!r}"
        return f"HardNegatives(beta={self.beta}, tau_plus={self.tau_plus}{extra})"
