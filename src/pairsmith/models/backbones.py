"""Backbones: a small CNN for 28x28 images, a CIFAR-style ResNet-18, and timm models.

Every backbone maps (B, C, H, W) images to (B, out_dim) features and exposes ``out_dim``.

References:
    1. He et al. "Deep Residual Learning for Image Recognition." CVPR 2016.
    2. Chen et al. "A Simple Framework for Contrastive Learning of Visual Representations" (SimCLR,
       Appendix B.9: CIFAR ResNet with a 3x3 stem and no max-pool). ICML 2020.

Examples:
    >>> import torch
    >>> net = SmallCNN(in_channels=1)
    >>> net(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 256])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn


def conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    """3x3 convolution (no bias), BatchNorm, ReLU. Shape: (B, c_in, H, W) -> (B, c_out, H', W')."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """A plain CNN for small images: conv-BN-ReLU blocks, 2x2 max-pools, global average pool.

    With the default widths (32, 64, 128, 256) and one conv per block this is the 388k-parameter
    4-block network of the "Measured here" Fashion-MNIST set-up; the last block is not pooled
    spatially before the global average (28 -> 14 -> 7 -> 3).

    Args:
        in_channels: Input channels C.
        channels: Width of each block; one block per entry.
        convs_per_block: Convolutions per block.

    Attributes:
        out_dim: Feature size, ``channels[-1]``.

    Raises:
        ValueError: If ``channels`` is empty or a width is not positive.
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: Sequence[int] = (32, 64, 128, 256),
        convs_per_block: int = 1,
    ) -> None:
        super().__init__()
        if len(channels) == 0 or any(c < 1 for c in channels):
            raise ValueError(
                f"SmallCNN: `channels` must be non-empty positive widths, got {channels}"
            )
        if convs_per_block < 1:
            raise ValueError(f"SmallCNN: `convs_per_block` must be >= 1, got {convs_per_block}")
        layers: list[nn.Module] = []
        c_prev = in_channels
        for i, c in enumerate(channels):
            for j in range(convs_per_block):
                layers.append(conv_bn_relu(c_prev if j == 0 else c, c))
            c_prev = c
            # Pool between blocks only: the last block feeds the global average directly.
            if i < len(channels) - 1:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = int(channels[-1])

    def forward(self, x: Tensor) -> Tensor:
        """Features of a batch. Shape: (B, C, H, W) -> (B, out_dim)."""
        return self.pool(self.features(x)).flatten(1)


class BasicBlock(nn.Module):
    """ResNet basic block [1]: two 3x3 conv-BN with an identity or 1x1 projection shortcut.

    Args:
        c_in: Input channels.
        c_out: Output channels.
        stride: Stride of the first convolution and of the shortcut.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: Tensor) -> Tensor:
        """Shape: (B, c_in, H, W) -> (B, c_out, H/stride, W/stride)."""
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNetCIFAR(nn.Module):
    """ResNet with a 3x3 stride-1 stem and no max-pool, for 32x32-ish images [1, 2].

    Args:
        in_channels: Input channels C (any).
        blocks: Basic blocks per stage.
        widths: Channels per stage.

    Attributes:
        out_dim: Feature size, ``widths[-1]``.

    Raises:
        ValueError: If ``blocks`` and ``widths`` differ in length.
    """

    def __init__(
        self,
        in_channels: int = 3,
        blocks: Sequence[int] = (2, 2, 2, 2),
        widths: Sequence[int] = (64, 128, 256, 512),
    ) -> None:
        super().__init__()
        if len(blocks) != len(widths) or len(blocks) == 0:
            raise ValueError(
                f"ResNetCIFAR: `blocks` and `widths` must be non-empty and of equal length, "
                f"got {blocks} and {widths}"
            )
        self.stem = conv_bn_relu(in_channels, widths[0])
        stages: list[nn.Module] = []
        c_prev = widths[0]
        for i, (n, w) in enumerate(zip(blocks, widths, strict=True)):
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                stages.append(BasicBlock(c_prev, w, stride))
                c_prev = w
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = int(widths[-1])

    def forward(self, x: Tensor) -> Tensor:
        """Features of a batch. Shape: (B, C, H, W) -> (B, out_dim)."""
        return self.pool(self.stages(self.stem(x))).flatten(1)


def resnet18_cifar(in_channels: int = 3, width: int = 64) -> ResNetCIFAR:
    """ResNet-18 with the CIFAR stem (3x3 conv, no max-pool); ``out_dim`` is ``8 * width``.

    Args:
        in_channels: Input channels C.
        width: Channels of the first stage; stages double it.

    Returns:
        A :class:`ResNetCIFAR`.
    """
    return ResNetCIFAR(in_channels, (2, 2, 2, 2), tuple(width * m for m in (1, 2, 4, 8)))


class TimmBackbone(nn.Module):
    """A timm model with its classifier removed (``num_classes=0``): pooled features.

    Args:
        name: timm model name, e.g. ``"resnet18"``.
        in_channels: Input channels C.
        pretrained: Load timm's pretrained weights (needs them cached or a network).
        **kwargs: Forwarded to ``timm.create_model``.

    Attributes:
        out_dim: timm's ``num_features``.

    Raises:
        ImportError: If timm is not installed (``pip install 'pairsmith[vision]'``).
    """

    def __init__(
        self, name: str, in_channels: int = 3, pretrained: bool = False, **kwargs: Any
    ) -> None:
        super().__init__()
        try:
            import timm
        except ImportError as e:
            raise ImportError(
                f"timm_backbone({name!r}) needs timm: pip install 'pairsmith[vision]' (or timm)"
            ) from e
        self.model = timm.create_model(
            name, pretrained=pretrained, num_classes=0, in_chans=in_channels, **kwargs
        )
        self.out_dim = int(self.model.num_features)

    def forward(self, x: Tensor) -> Tensor:
        """Features of a batch. Shape: (B, C, H, W) -> (B, out_dim)."""
        return self.model(x)


def timm_backbone(name: str, in_channels: int = 3, **kwargs: Any) -> TimmBackbone:
    """Create a :class:`TimmBackbone` (timm is imported lazily). See its arguments."""
    return TimmBackbone(name, in_channels, **kwargs)


_BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "small_cnn": SmallCNN,
    "resnet18_cifar": resnet18_cifar,
}


def create_backbone(name: str, in_channels: int = 3, **kwargs: Any) -> nn.Module:
    """Create a backbone by name; names starting with ``timm:`` go to timm.

    Args:
        name: ``"small_cnn"``, ``"resnet18_cifar"`` or ``"timm:<model name>"``.
        in_channels: Input channels C.
        **kwargs: Forwarded to the constructor; ``None`` values are dropped so that config
            defaults do not override the backbone's own.

    Returns:
        An ``nn.Module`` with an ``out_dim`` attribute, mapping (B, C, H, W) to (B, out_dim).

    Raises:
        ValueError: If ``name`` is unknown.
    """
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if name.startswith("timm:"):
        return timm_backbone(name[len("timm:") :], in_channels, **kwargs)
    if name not in _BACKBONES:
        raise ValueError(
            f"create_backbone: unknown `name` {name!r}; expected one of "
            f"{sorted(_BACKBONES)} or 'timm:<model>'"
        )
    return _BACKBONES[name](in_channels=in_channels, **kwargs)


def list_backbones() -> list[str]:
    """Names accepted by :func:`create_backbone` (besides ``timm:<model>``)."""
    return sorted(_BACKBONES)
