"""Linear probe: logistic regression on frozen features, trained with torch.

Features are standardised with the training set's statistics, then a single linear layer is
fitted with full-batch L-BFGS (default; deterministic and fast for up to ~10^5 x 10^3 features) or
mini-batch Adam.

References:
    1. Kolesnikov, Zhai, Beyer. "Revisiting Self-Supervised Visual Representation Learning."
       CVPR 2019 (linear evaluation with L-BFGS / logistic regression).

Examples:
    >>> import torch
    >>> x = torch.randn(100, 8); y = (x[:, 0] > 0).long()
    >>> linear_probe(x, y, x, y, epochs=20) > 90
    True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _check(features: Tensor, labels: Tensor, name: str) -> None:
    if features.dim() != 2 or labels.shape != (features.shape[0],):
        raise ValueError(
            f"linear_probe: `{name}` features must be (N, D) with labels (N,), got "
            f"{tuple(features.shape)} and {tuple(labels.shape)}"
        )


def train_linear(
    features: Tensor,
    labels: Tensor,
    num_classes: int | None = None,
    epochs: int = 100,
    optimizer: str = "lbfgs",
    lr: float | None = None,
    weight_decay: float = 1e-4,
    batch_size: int = 1024,
    seed: int = 0,
) -> tuple[nn.Linear, Tensor, Tensor]:
    """Fit a logistic-regression layer on standardised features.

    Args:
        features: Training features. Shape: (N, D).
        labels: Classes in ``[0, num_classes)``. Shape: (N,).
        num_classes: ``None`` uses ``labels.max() + 1``.
        epochs: L-BFGS iterations, or Adam passes over the data.
        optimizer: ``"lbfgs"`` (full batch) or ``"adam"`` (mini-batch).
        lr: Learning rate; ``None`` means 1.0 for L-BFGS, 1e-2 for Adam.
        weight_decay: L2 penalty on the weights (added to the loss).
        batch_size: Adam mini-batch size.
        seed: Seed of the initialisation and shuffling.

    Returns:
        ``(layer, mean, std)``: the fitted ``nn.Linear(D, num_classes)`` and the standardisation
        statistics, each of shape (D,).

    Raises:
        ValueError: On mismatched shapes, ``epochs`` < 1 or an unknown ``optimizer``.
    """
    _check(features, labels, "train")
    if epochs < 1:
        raise ValueError(f"linear_probe: `epochs` must be >= 1, got {epochs}")
    if optimizer not in ("lbfgs", "adam"):
        raise ValueError(f"linear_probe: `optimizer` must be 'lbfgs' or 'adam', got {optimizer!r}")
    x = features.float()
    y = labels.long()
    c = int(y.max()) + 1 if num_classes is None else num_classes
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    x = (x - mean) / std
    g = torch.Generator().manual_seed(seed)
    layer = nn.Linear(x.shape[1], c)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) * 0.01)
        layer.bias.zero_()

    def objective(xb: Tensor, yb: Tensor) -> Tensor:
        return F.cross_entropy(layer(xb), yb) + weight_decay * layer.weight.pow(2).sum()

    if optimizer == "lbfgs":
        opt = torch.optim.LBFGS(
            layer.parameters(),
            lr=1.0 if lr is None else lr,
            max_iter=epochs,
            history_size=20,
            line_search_fn="strong_wolfe",
        )

        def closure() -> Tensor:
            opt.zero_grad()
            loss = objective(x, y)
            loss.backward()
            return loss

        opt.step(closure)
    else:
        adam = torch.optim.Adam(layer.parameters(), lr=1e-2 if lr is None else lr)
        for _ in range(epochs):
            perm = torch.randperm(x.shape[0], generator=g)
            for start in range(0, x.shape[0], batch_size):
                idx = perm[start : start + batch_size]
                adam.zero_grad()
                objective(x[idx], y[idx]).backward()
                adam.step()
    layer.requires_grad_(False)
    return layer, mean, std


@torch.enable_grad()
def linear_probe(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    num_classes: int | None = None,
    epochs: int = 100,
    optimizer: str = "lbfgs",
    lr: float | None = None,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> float:
    """Top-1 accuracy (in %) of a logistic-regression probe on frozen features.

    Args:
        train_features: Shape: (N_train, D).
        train_labels: Shape: (N_train,).
        test_features: Shape: (N_test, D).
        test_labels: Shape: (N_test,).
        num_classes: ``None`` infers it from both label sets.
        epochs: L-BFGS iterations or Adam epochs.
        optimizer: ``"lbfgs"`` or ``"adam"``.
        lr: Learning rate (``None``: optimiser default, see :func:`train_linear`).
        weight_decay: L2 penalty on the weights.
        seed: Seed.

    Returns:
        Top-1 accuracy in percent.

    Raises:
        ValueError: On mismatched shapes or feature sizes.
    """
    _check(train_features, train_labels, "train")
    _check(test_features, test_labels, "test")
    if test_features.shape[1] != train_features.shape[1]:
        raise ValueError(
            f"linear_probe: train and test feature sizes differ: {train_features.shape[1]} vs "
            f"{test_features.shape[1]}"
        )
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    layer, mean, std = train_linear(
        train_features, train_labels, num_classes, epochs, optimizer, lr, weight_decay, seed=seed
    )
    with torch.no_grad():
        pred = layer((test_features.float() - mean) / std).argmax(1)
    return 100.0 * (pred == test_labels.long()).float().mean().item()
