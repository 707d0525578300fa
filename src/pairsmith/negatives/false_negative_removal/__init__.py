"""False-negative removal (survey 4.2): detect negatives that are likely positives."""

from pairsmith.negatives.false_negative_removal.fnc import FalseNegativeCancellation, SupportViews

__all__ = ["FalseNegativeCancellation", "SupportViews"]
