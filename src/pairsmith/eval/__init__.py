"""Evaluation of frozen representations: weighted kNN and linear probe."""

from pairsmith.eval.knn import (
    extract_features,
    knn_accuracy,
    knn_predict,
    knn_scores,
    pixel_features,
)
from pairsmith.eval.linear import linear_probe, train_linear

__all__ = [
    "extract_features",
    "knn_accuracy",
    "knn_predict",
    "knn_scores",
    "linear_probe",
    "pixel_features",
    "train_linear",
]
