"""Weighted k-nearest-neighbour evaluation of frozen features (InstDisc's protocol).

Features are L2-normalised; each test row votes with its ``k`` most cosine-similar training rows,
each weighted ``exp(sim / T)``; the class with the largest summed weight wins. Similarities are
computed in chunks of test rows, so memory stays ``O(chunk * N_train)``.

References:
    1. Wu, Xiong, Yu, Lin. "Unsupervised Feature Learning via Non-Parametric Instance
       Discrimination" (InstDisc). CVPR 2018. (k=200, T=0.1.)

Examples:
    >>> import torch
    >>> train = torch.eye(4).repeat(5, 1); labels = torch.arange(4).repeat(5)
    >>> knn_predict(torch.eye(4), train, labels, k=3).tolist()
    [0, 1, 2, 3]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pairsmith.data.views import normalize


@torch.no_grad()
def knn_scores(
    test: Tensor,
    train: Tensor,
    train_labels: Tensor,
    k: int = 200,
    temperature: float = 0.1,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> Tensor:
    """Per-class summed neighbour weights for every test row.

    Args:
        test: Test features. Shape: (N_test, D).
        train: Training features. Shape: (N_train, D).
        train_labels: Class of every training row, in ``[0, num_classes)``. Shape: (N_train,).
        k: Number of neighbours; capped at ``N_train``.
        temperature: T in ``exp(sim / T)``.
        num_classes: Number of classes; ``None`` uses ``train_labels.max() + 1``.
        chunk_size: Test rows per similarity block.

    Returns:
        Float scores. Shape: (N_test, num_classes).

    Raises:
        ValueError: On mismatched shapes, non-positive ``k``, ``temperature`` or ``chunk_size``, or
            labels outside ``[0, num_classes)``.
    """
    if test.dim() != 2 or train.dim() != 2 or test.shape[1] != train.shape[1]:
        raise ValueError(
            f"knn: `test` (N_test, D) and `train` (N_train, D) must be 2-D with the same D, got "
            f"{tuple(test.shape)} and {tuple(train.shape)}"
        )
    if train_labels.shape != (train.shape[0],):
        raise ValueError(
            f"knn: `train_labels` must have shape ({train.shape[0]},), got "
            f"{tuple(train_labels.shape)}"
        )
    if k < 1 or temperature <= 0 or chunk_size < 1:
        raise ValueError(
            f"knn: `k`, `temperature` and `chunk_size` must be positive, got {k}, {temperature}, "
            f"{chunk_size}"
        )
    labels = train_labels.long().to(train.device)
    c = int(labels.max()) + 1 if num_classes is None else num_classes
    if labels.min() < 0 or labels.max() >= c:
        raise ValueError(
            f"knn: `train_labels` must lie in [0, {c}), got [{labels.min()}, {labels.max()}]"
        )
    k = min(k, train.shape[0])
    train_n = F.normalize(train.float(), dim=1)
    scores = []
    for start in range(0, test.shape[0], chunk_size):
        q = F.normalize(test[start : start + chunk_size].float().to(train.device), dim=1)
        sim, idx = (q @ train_n.T).topk(k, dim=1)  # (chunk, k): the only (chunk, N_train) block
        w = (sim / temperature).exp()
        votes = torch.zeros(q.shape[0], c, device=q.device, dtype=w.dtype)
        votes.scatter_add_(1, labels[idx], w)
        scores.append(votes)
    return torch.cat(scores) if scores else torch.zeros(0, c, device=train.device)


def knn_predict(
    test: Tensor,
    train: Tensor,
    train_labels: Tensor,
    k: int = 200,
    temperature: float = 0.1,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> Tensor:
    """Weighted kNN class predictions; see :func:`knn_scores` for the arguments.

    Returns:
        ``LongTensor`` of predicted classes. Shape: (N_test,).
    """
    return knn_scores(test, train, train_labels, k, temperature, num_classes, chunk_size).argmax(1)


def knn_accuracy(
    test: Tensor,
    test_labels: Tensor,
    train: Tensor,
    train_labels: Tensor,
    k: int = 200,
    temperature: float = 0.1,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> float:
    """Top-1 accuracy (in %) of the weighted kNN classifier.

    Args:
        test: Test features. Shape: (N_test, D).
        test_labels: True classes. Shape: (N_test,).
        train: Training features. Shape: (N_train, D).
        train_labels: Training classes. Shape: (N_train,).
        k: Number of neighbours.
        temperature: Vote temperature.
        num_classes: Number of classes (``None``: inferred from both label sets).
        chunk_size: Test rows per similarity block.

    Returns:
        Top-1 accuracy in percent.

    Raises:
        ValueError: If ``test_labels`` does not have shape (N_test,).
    """
    if test_labels.shape != (test.shape[0],):
        raise ValueError(
            f"knn: `test_labels` must have shape ({test.shape[0]},), got {tuple(test_labels.shape)}"
        )
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    pred = knn_predict(test, train, train_labels, k, temperature, num_classes, chunk_size)
    return 100.0 * (pred.cpu() == test_labels.cpu().long()).float().mean().item()


@torch.no_grad()
def extract_features(
    model: nn.Module,
    images: Tensor,
    batch_size: int = 512,
    device: torch.device | str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Tensor:
    """Run a frozen model over images normalised as the views normalise them (no augmentation).

    The model is put in eval mode for the pass and restored to its previous mode afterwards.

    Args:
        model: Maps (B, C, H, W) float images to (B, D) features.
        images: ``uint8`` or float in [0, 1]. Shape: (N, C, H, W).
        batch_size: Images per forward pass.
        device: Where to run; ``None`` uses the model's parameters' device (or CPU).
        mean: Per-channel normalisation mean (as given to the views); ``None`` means 0.5.
        std: Per-channel normalisation std; ``None`` means 0.5.

    Returns:
        Float features on CPU. Shape: (N, D).

    Raises:
        ValueError: If ``batch_size`` is not positive.
    """
    if batch_size < 1:
        raise ValueError(f"extract_features: `batch_size` must be >= 1, got {batch_size}")
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        out = []
        for start in range(0, images.shape[0], batch_size):
            x = normalize(images[start : start + batch_size].to(device), mean, std)
            out.append(model(x).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


def pixel_features(
    images: Tensor, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> Tensor:
    """Raw-pixel features: normalised images flattened (the "raw pixels" kNN baseline).

    Args:
        images: ``uint8`` or float in [0, 1]. Shape: (N, C, H, W).
        mean: Per-channel normalisation mean; ``None`` means 0.5.
        std: Per-channel normalisation std; ``None`` means 0.5.

    Returns:
        Float tensor. Shape: (N, C * H * W).
    """
    return normalize(images, mean, std).flatten(1)
