"""Embedding-based positives (survey 3.2.1): neighbours in embedding space are positives."""

from pairsmith.positives.embedding_based.nnclr import (
    NearestNeighbourPositives,
    mean_shift_loss,
    nearest_neighbours,
    neighbour_precision,
    nnclr_loss,
    nnclr_pairs,
)

__all__ = [
    "NearestNeighbourPositives",
    "mean_shift_loss",
    "nearest_neighbours",
    "neighbour_precision",
    "nnclr_loss",
    "nnclr_pairs",
]
