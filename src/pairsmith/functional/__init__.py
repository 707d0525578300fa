"""Pure maths: the InfoNCE family and its denominator estimators."""

from pairsmith.functional.estimators import DebiasedEstimator, debiased_log_negative_mass
from pairsmith.functional.infonce import InfoNCEOutput, info_nce, log_weights, nt_xent

__all__ = [
    "DebiasedEstimator",
    "InfoNCEOutput",
    "debiased_log_negative_mass",
    "info_nce",
    "log_weights",
    "nt_xent",
]
