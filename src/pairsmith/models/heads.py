"""Projection and prediction heads (MLPs between the backbone and the loss).

References:
    1. Chen et al. "A Simple Framework for Contrastive Learning of Visual Representations"
       (SimCLR: the projection head). ICML 2020.
    2. Grill et al. "Bootstrap Your Own Latent" (BYOL: the prediction head). NeurIPS 2020.
    3. Chen, He. "Exploring Simple Siamese Representation Learning" (SimSiam). CVPR 2021.

Examples:
    >>> import torch
    >>> head = ProjectionHead(256, 512, 128)
    >>> head(torch.zeros(4, 256)).shape
    torch.Size([4, 128])
"""

from __future__ import annotations

from torch import Tensor, nn


def mlp(
    in_dim: int,
    hidden_dim: int,
    out_dim: int,
    layers: int = 2,
    bn: bool = True,
    last_bn: bool = False,
) -> nn.Sequential:
    """Build an MLP: ``layers - 1`` blocks of Linear(-BN)-ReLU, then a final Linear (optionally BN).

    Args:
        in_dim: Input size.
        hidden_dim: Hidden size.
        out_dim: Output size.
        layers: Number of linear layers (>= 1).
        bn: BatchNorm after each hidden linear layer.
        last_bn: Affine-free BatchNorm after the last layer (SimSiam / MoCo v3 style).

    Returns:
        ``nn.Sequential`` mapping (B, in_dim) to (B, out_dim).

    Raises:
        ValueError: If ``layers`` < 1 or a size is not positive.
    """
    if layers < 1:
        raise ValueError(f"mlp: `layers` must be >= 1, got {layers}")
    if min(in_dim, hidden_dim, out_dim) < 1:
        raise ValueError(f"mlp: sizes must be positive, got {in_dim}, {hidden_dim}, {out_dim}")
    mods: list[nn.Module] = []
    d = in_dim
    for _ in range(layers - 1):
        mods.append(nn.Linear(d, hidden_dim, bias=not bn))
        if bn:
            mods.append(nn.BatchNorm1d(hidden_dim))
        mods.append(nn.ReLU(inplace=True))
        d = hidden_dim
    mods.append(nn.Linear(d, out_dim, bias=not last_bn))
    if last_bn:
        mods.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*mods)


class ProjectionHead(nn.Module):
    """SimCLR-style projection head [1]: the loss sees its output, evaluation uses the backbone.

    Args:
        in_dim: Backbone feature size.
        hidden_dim: Hidden size.
        out_dim: Projection size.
        layers: Number of linear layers (2 in SimCLR v1, 3 in v2 / MoCo v3).
        bn: BatchNorm in hidden layers.
        last_bn: Affine-free BatchNorm on the output.

    Attributes:
        out_dim: Projection size.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int = 2048,
        out_dim: int = 128,
        layers: int = 2,
        bn: bool = True,
        last_bn: bool = False,
    ) -> None:
        super().__init__()
        self.net = mlp(in_dim, hidden_dim, out_dim, layers, bn, last_bn)
        self.out_dim = out_dim

    def forward(self, x: Tensor) -> Tensor:
        """Project features. Shape: (B, in_dim) -> (B, out_dim)."""
        return self.net(x)


class PredictionHead(nn.Module):
    """BYOL / SimSiam prediction head [2, 3]: a 2-layer bottleneck MLP on the projection.

    Args:
        in_dim: Projection size.
        hidden_dim: Bottleneck size (4096 in BYOL, 512 in SimSiam).
        out_dim: Output size, normally ``in_dim``.

    Attributes:
        out_dim: Output size.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 512, out_dim: int | None = None) -> None:
        super().__init__()
        out = in_dim if out_dim is None else out_dim
        self.net = mlp(in_dim, hidden_dim, out, layers=2, bn=True)
        self.out_dim = out

    def forward(self, x: Tensor) -> Tensor:
        """Predict the other view's projection. Shape: (B, in_dim) -> (B, out_dim)."""
        return self.net(x)
