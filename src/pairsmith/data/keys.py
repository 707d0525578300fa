"""Key names emitted by data-stage datasets, the keyed-dataset protocol and its collate.

Every data-stage sample carries **keys**: small integers that batch-stage curators compare to decide
who is a positive of whom (Survey §3: the data stage emits keys, it never decides weights).

Examples:
    >>> import torch
    >>> image = torch.zeros(1, 4, 4, dtype=torch.uint8)
    >>> batch = [(image, {INSTANCE: i, LABEL: i % 2}) for i in range(3)]
    >>> images, keys = collate(batch)
    >>> images.shape, keys[LABEL].tolist()
    (torch.Size([3, 1, 4, 4]), [0, 1, 0])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

INSTANCE = "instance"
"""Key name: the index of the sample in its dataset (single-instance positives)."""

LABEL = "label"
"""Key name: the class label, or ``-1`` when unknown."""

UNKNOWN = -1
"""Key value meaning "unknown"; never equal to anything, including itself, in curators."""

Keys = dict[str, int]
Sample = tuple[Tensor, Keys]


@runtime_checkable
class KeyedDataset(Protocol):
    """A map-style dataset whose items are ``(image, keys)``.

    ``image`` is a ``uint8`` or float tensor of shape ``(C, H, W)``; ``keys`` maps key names
    (``instance``, ``label``, attributes) to integers.
    """

    def __len__(self) -> int:
        """Number of samples."""
        ...

    def __getitem__(self, index: int) -> Sample:
        """Return ``(image, keys)`` for ``index``."""
        ...


def collate(batch: Sequence[Sample]) -> tuple[Tensor, dict[str, Tensor]]:
    """Stack keyed samples into a batch.

    Args:
        batch: Sequence of ``(image, keys)``; images all of shape (C, H, W) and the same dtype,
            every sample carrying the same key names.

    Returns:
        ``(images, keys)``: images of shape (B, C, H, W); ``keys[name]`` a ``LongTensor`` of
        shape (B,).

    Raises:
        ValueError: If ``batch`` is empty or the samples do not carry the same key names.
    """
    if len(batch) == 0:
        raise ValueError("collate: `batch` must contain at least one sample, got an empty sequence")
    names = set(batch[0][1])
    for i, (_, k) in enumerate(batch):
        if set(k) != names:
            raise ValueError(
                f"collate: every sample must carry the same keys; sample 0 has {sorted(names)}, "
                f"sample {i} has {sorted(k)}"
            )
    images = torch.stack([img for img, _ in batch])
    keys = {n: torch.tensor([int(k[n]) for _, k in batch], dtype=torch.long) for n in sorted(names)}
    return images, keys


def batch_keys(**keys: Tensor | Sequence[int]) -> dict[str, Tensor]:
    """Build a batch key dictionary of ``LongTensor`` values from tensors or sequences.

    Args:
        **keys: Key name to values, each of shape (B,).

    Returns:
        Dictionary of ``LongTensor`` of shape (B,).

    Raises:
        ValueError: If the key tensors do not all have the same length or are not 1-D.
    """
    out = {n: torch.as_tensor(v, dtype=torch.long) for n, v in keys.items()}
    lengths = {n: tuple(v.shape) for n, v in out.items()}
    if len({s for s in lengths.values()}) > 1 or any(len(s) != 1 for s in lengths.values()):
        raise ValueError(f"batch_keys: every key must be 1-D with the same length, got {lengths}")
    return out
