"""Supervised positives (survey 3.2.3): samples sharing a human label are positives."""

from pairsmith.positives.supervised.supcon import SupConPositives

__all__ = ["SupConPositives"]
