"""DCL: debiased contrastive learning (Chuang et al., NeurIPS 2020; survey 4.2).

Without labels, some "negatives" of an anchor share its class (false negatives). DCL
keeps every negative but corrects the negative mass of the InfoNCE denominator with the
positive-class prior ``tau_plus``::

    Ng = (-tau_plus * N * exp(s_p) + sum_j exp(s_j)) / (1 - tau_plus),
    Ng >= N * exp(-1 / tau)

where ``s = <a, c> / tau`` and N is the number of negatives of the anchor. The loss is
``-log(e^{s_p} / (e^{s_p} + Ng))``: use :func:`~pairsmith.functional.infonce.info_nce`
with ``positives_in_denominator="self"`` (with one positive, "self" and "all" agree).

Reference: ``chingyaoc/DCL/main.py`` (commit c2a3b96; the earlier commit 30189fb has a
bug in the *biased* branch, ``Ng = neg``). Recipe from the paper's code: temperature
**0.5** (the loss temperature, not a parameter of this curator), ``tau_plus = 0.1``,
batch 256, Adam lr 1e-3, weight decay 1e-6, feature dimension 128.
"""

from __future__ import annotations

from pairsmith.core.pairs import Pairs
from pairsmith.core.registry import register_curator
from pairsmith.functional.estimators import DebiasedEstimator


@register_curator(
    "negatives.false_negative_removal.dcl", taxonomy=("negatives", "false_negative_removal")
)
class DebiasedNegatives:
    """DCL: debias the negative mass with the class prior tau+ (Chuang et al. 2020).

    Sets :attr:`Pairs.estimator <pairsmith.core.pairs.Pairs.estimator>` to the debiased
    estimator (:func:`~pairsmith.functional.estimators.debiased_log_negative_mass` with
    ``beta = 0``); the positives and negatives are unchanged. The estimator is
    differentiable on purpose: the gradient flows through the correction term.
    ``tau_plus = 0`` gives the standard NT-Xent exactly. Replaces any estimator already
    set (DCL and HCL do not compose; HCL at ``beta = 0`` is DCL).

    Use with temperature 0.5 (the papers' setting) and ``positives_in_denominator="self"``.
    """

    def __init__(self, tau_plus: float = 0.1) -> None:
        """Create the curator.

        Args:
            tau_plus: class prior ``tau+`` in ``[0, 1)``, the probability that a random
                negative shares the anchor's class (0.1 for STL-10/CIFAR-10 in the paper).

        Raises:
            ValueError: if ``tau_plus`` is not in ``[0, 1)``.
        """
        self.estimator = DebiasedEstimator(tau_plus=tau_plus, beta=0.0)

    @property
    def tau_plus(self) -> float:
        """The class prior tau+."""
        return self.estimator.tau_plus

    def __call__(self, pairs: Pairs) -> Pairs:
        """Attach the debiased estimator.

        Args:
            pairs: anchors ``[B, D]`` against candidates ``[M, D]``.

        Returns:
            A copy of ``pairs`` with ``estimator`` set; ``pairs`` itself is untouched.
        """
        return pairs.replace(estimator=self.estimator)

    def __repr__(self) -> str:
        return f"DebiasedNegatives(tau_plus={self.tau_plus})"
