"""Keyed wrappers of torchvision's CIFAR-10, CIFAR-100 and STL-10 (torchvision imported lazily).

Items are ``(image, keys)`` with a ``uint8`` (3, H, W) image and keys ``instance`` and ``label``
(STL-10's unlabelled split gives ``label = -1``). The whole split is held as ``.images`` /
``.labels`` tensors for fast in-memory batching, like :class:`~pairsmith.data.FashionMNIST`.

Examples:
    >>> ds = CIFAR10("data", train=True, download=True)  # doctest: +SKIP
    >>> ds.images.shape  # doctest: +SKIP
    torch.Size([50000, 3, 32, 32])
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pairsmith.data.keys import INSTANCE, LABEL, UNKNOWN, Sample


def _torchvision_datasets() -> Any:
    try:
        import torchvision.datasets as tvd
    except ImportError as e:
        raise ImportError(
            "CIFAR-10/100 and STL-10 need torchvision: pip install 'pairsmith[vision]'"
        ) from e
    return tvd


class _InMemory:
    """Shared item access for the wrappers: ``.images`` (N, 3, H, W) uint8, ``.labels`` (N,)."""

    images: Tensor
    labels: Tensor

    def __len__(self) -> int:
        """Number of images."""
        return len(self.labels)

    def __getitem__(self, index: int) -> Sample:
        """Return ``(image, keys)`` with keys ``instance`` and ``label``."""
        return self.images[index], {INSTANCE: int(index), LABEL: int(self.labels[index])}


class CIFAR10(_InMemory):
    """CIFAR-10 through torchvision, in memory.

    Args:
        root: Folder for torchvision's files.
        train: Training (50,000) or test (10,000) split.
        download: Let torchvision download the archive when absent.

    Raises:
        ImportError: If torchvision is not installed.
    """

    _name = "CIFAR10"

    def __init__(
        self, root: str | os.PathLike[str], train: bool = True, download: bool = False
    ) -> None:
        tvd = _torchvision_datasets()
        ds = getattr(tvd, self._name)(str(root), train=train, download=download)
        self.images = (
            torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        )
        self.labels = torch.as_tensor(ds.targets, dtype=torch.long)
        self.classes = list(ds.classes)


class CIFAR100(CIFAR10):
    """CIFAR-100 through torchvision, in memory (fine labels); arguments as :class:`CIFAR10`."""

    _name = "CIFAR100"


class STL10(_InMemory):
    """STL-10 through torchvision, in memory (96x96).

    Args:
        root: Folder for torchvision's files.
        split: ``"train"``, ``"test"``, ``"unlabeled"`` or ``"train+unlabeled"``; unlabelled images
            get ``label = -1``.
        download: Let torchvision download the archive when absent.

    Raises:
        ImportError: If torchvision is not installed.
        ValueError: If ``split`` is unknown.
    """

    def __init__(
        self, root: str | os.PathLike[str], split: str = "train", download: bool = False
    ) -> None:
        if split not in ("train", "test", "unlabeled", "train+unlabeled"):
            raise ValueError(
                f"STL10: `split` must be train, test, unlabeled or train+unlabeled, got {split!r}"
            )
        tvd = _torchvision_datasets()
        ds = tvd.STL10(str(root), split=split, download=download)
        self.images = torch.from_numpy(np.ascontiguousarray(ds.data))  # already (N, 3, 96, 96)
        labels = torch.as_tensor(ds.labels, dtype=torch.long)
        self.labels = torch.where(labels < 0, torch.full_like(labels, UNKNOWN), labels)
        self.classes = list(ds.classes)
