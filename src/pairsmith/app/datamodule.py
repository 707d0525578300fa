"""Data for the training app: whole splits in memory, a deterministic sharded batch sampler.

Every supported data set is loaded once as a ``uint8`` tensor ``[N, C, H, W]`` with its labels
(:class:`ImageSet`). Training batches are drawn by :class:`ShardedBatchSampler`: the order of an
epoch is a function of ``(seed, epoch)`` only, each global batch is split evenly over the ranks
(the rows a ``DistributedSampler`` would give), and the position inside the epoch is part of the
loader's state, so a run resumed from any checkpoint sees exactly the batches an uninterrupted
run would. Batches are one tensor index (``dataset.__getitems__``), not ``batch_size`` item
calls and a collate: on a few CPU cores that is the difference between data loading being free
and being a third of the step (anchors.md, "Measured here").

Examples:
    >>> import torch
    >>> s = ShardedBatchSampler(10, batch_size=4, seed=0, rank=1, world_size=2)
    >>> [len(b) for b in s]
    [2, 2]
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from pairsmith.app.config import ConfigError, DataConfig
from pairsmith.data.keys import INSTANCE, LABEL, UNKNOWN, collate


@dataclass
class ImageSet:
    """One split in memory.

    Attributes:
        images: ``uint8`` (or float in [0, 1]) images. Shape: (N, C, H, W).
        labels: class of each image, -1 when unknown. Shape: (N,).
        classes: class names when the data set provides them.
    """

    images: Tensor
    labels: Tensor
    classes: list[str] | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        """``max(label) + 1`` (0 when no label is known)."""
        known = self.labels[self.labels >= 0]
        return int(known.max()) + 1 if known.numel() else 0

    def subset(self, index: Tensor) -> ImageSet:
        """The rows ``index`` (a view when possible)."""
        return ImageSet(self.images[index], self.labels[index], self.classes)

    def labelled(self) -> ImageSet:
        """Only the rows with a known label (for kNN banks and probes)."""
        keep = self.labels >= 0
        return self if bool(keep.all()) else self.subset(torch.nonzero(keep).flatten())


# --------------------------------------------------------------------------- loading
def _materialize(ds: Any, what: str) -> ImageSet:
    """An :class:`ImageSet` from a keyed data set (``.images``/``.labels`` or items)."""
    classes = list(getattr(ds, "classes", []) or []) or None
    if isinstance(getattr(ds, "images", None), Tensor) and isinstance(
        getattr(ds, "labels", None), Tensor
    ):
        return ImageSet(ds.images, ds.labels.long(), classes)
    if len(ds) == 0:
        raise ConfigError(f"{what} is empty")
    try:
        images, keys = collate([ds[i] for i in range(len(ds))])
    except RuntimeError as e:  # torch.stack of differently sized images
        raise ConfigError(
            f"{what}: images differ in size; set data.options.size to resize them ({e})"
        ) from e
    labels = keys.get(LABEL, torch.full((len(ds),), UNKNOWN, dtype=torch.long))
    return ImageSet(images, labels, classes)


def _balanced_or_random(s: ImageSet, size: int | None, seed: int, key: str) -> ImageSet:
    if size is None or size >= len(s):
        return s
    from pairsmith.data.fashion_mnist import balanced_subset

    g = torch.Generator().manual_seed(seed)
    if bool((s.labels < 0).any()):
        idx = torch.sort(torch.randperm(len(s), generator=g)[:size]).values
    else:
        try:
            idx = balanced_subset(s.labels, size, seed)
        except ValueError as e:
            raise ConfigError(f"{key}: {e}") from e
    return s.subset(idx)


def _options(cfg: DataConfig, allowed: Sequence[str]) -> dict[str, Any]:
    unknown = sorted(set(cfg.options) - set(allowed))
    if unknown:
        raise ConfigError(
            f"unknown key(s) data.options.{', data.options.'.join(unknown)} for data set "
            f"{cfg.name!r}; valid: {', '.join(allowed) or '(none)'}"
        )
    return dict(cfg.options)


def load_splits(cfg: DataConfig) -> tuple[ImageSet, ImageSet]:
    """Load the training and test splits named by ``cfg``.

    Args:
        cfg: the ``data`` section.

    Returns:
        ``(train, test)``, subsets applied.

    Raises:
        FileNotFoundError: if the files are missing (the message says where it looked and how
            to point ``--data-root`` / ``data.root`` at them).
        ConfigError: on an invalid option.
    """
    name = cfg.name
    try:
        if name == "fashion_mnist":
            from pairsmith.data.fashion_mnist import FashionMNIST

            _options(cfg, [])
            tr = FashionMNIST(cfg.root, True, cfg.subset, cfg.subset_seed, cfg.download)
            te = FashionMNIST(cfg.root, False, cfg.test_subset, cfg.subset_seed, cfg.download)
            train, test = _materialize(tr, "train"), _materialize(te, "test")
            return train, test
        if name == "textures":
            from pairsmith.data.textures import Textures

            opts = _options(cfg, ["crop_size", "crops_per_texture", "min_size", "colour_only"])
            # Two seeds give two crop sets of the same textures: the train and test splits.
            train = _materialize(Textures(cfg.root, seed=cfg.subset_seed, **opts), "textures")
            test = _materialize(Textures(cfg.root, seed=cfg.subset_seed + 1, **opts), "textures")
        elif name == "image_folder":
            from pairsmith.data.folders import ImageFolder

            if cfg.root is None:
                raise ConfigError("data.root must name the image folder for data.name=image_folder")
            opts = _options(cfg, ["size", "mode", "extensions"])
            full = _materialize(ImageFolder(cfg.root, **opts), f"image folder {cfg.root}")
            if cfg.test_root is not None:
                train = full
                test = _materialize(ImageFolder(cfg.test_root, **opts), f"{cfg.test_root}")
            else:
                g = torch.Generator().manual_seed(cfg.subset_seed)
                perm = torch.randperm(len(full), generator=g)
                n_test = max(1, int(round(cfg.test_fraction * len(full))))
                test = full.subset(torch.sort(perm[:n_test]).values)
                train = full.subset(torch.sort(perm[n_test:]).values)
        elif name in ("cifar10", "cifar100", "stl10"):
            from pairsmith.data import torchvision_sets as tv

            root = cfg.root if cfg.root is not None else "data"
            if name == "stl10":
                opts = _options(cfg, ["split"])
                split = opts.get("split", "train+unlabeled")
                train = _materialize(tv.STL10(root, split, cfg.download), "stl10")
                test = _materialize(tv.STL10(root, "test", cfg.download), "stl10")
            else:
                _options(cfg, [])
                cls = tv.CIFAR10 if name == "cifar10" else tv.CIFAR100
                train = _materialize(cls(root, True, cfg.download), name)
                test = _materialize(cls(root, False, cfg.download), name)
        else:  # pragma: no cover - validated by the config
            raise ConfigError(f"unknown data.name {name!r}")
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:  # a bad option or subset size reaching a loader
        raise ConfigError(f"data ({name}; check data.subset, data.options): {e}") from e
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"{name} data not found ({e}); set --data-root or data.root to the folder holding it"
        ) from e
    train = _balanced_or_random(train, cfg.subset, cfg.subset_seed, "data.subset")
    test = _balanced_or_random(test, cfg.test_subset, cfg.subset_seed, "data.test_subset")
    return train, test


def channel_stats(images: Tensor, max_images: int = 10000) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] units of (the first ``max_images``) images."""
    x = images[:max_images]
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return [round(float(v), 4) for v in mean], [round(float(v), 4) for v in std]


# --------------------------------------------------------------------------- sampling
def epoch_permutation(n: int, seed: int, epoch: int) -> Tensor:
    """The sample order of one epoch: a function of ``(seed, epoch)`` only."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


class ShardedBatchSampler:
    """Global batches of a seeded per-epoch permutation, each split evenly over the ranks.

    Rank ``r`` of ``W`` gets rows ``[r * b, (r + 1) * b)`` of every global batch of
    ``batch_size = W * b`` indices, so the union over ranks of step ``i`` is exactly the batch a
    single process would train on at step ``i``.

    Args:
        num_samples: data set size N.
        batch_size: global batch size (divisible by ``world_size``).
        seed: seed of the per-epoch permutation.
        rank: this process's rank.
        world_size: number of ranks.
        drop_last: drop the last incomplete global batch (always with ``world_size > 1``).
        shuffle: permute each epoch (else the identity order).

    Raises:
        ValueError: on a batch size that is not positive or not divisible by ``world_size``.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
        shuffle: bool = True,
    ) -> None:
        if batch_size < 1 or batch_size % world_size:
            raise ValueError(
                f"batch_size must be a positive multiple of world_size ({world_size}), got "
                f"{batch_size}"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last or world_size > 1
        self.shuffle = shuffle
        self.epoch = 0
        self.consumed = 0  # batches handed out in the current epoch
        self._skip = 0  # batches to skip at the next iteration (mid-epoch resume)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration follows."""
        self.epoch = epoch

    @property
    def sampler(self) -> ShardedBatchSampler:
        """Itself: Lightning calls ``loader.batch_sampler.sampler.set_epoch(epoch)`` each epoch."""
        return self

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        # A generator: the order is computed at the first batch, after set_epoch.
        perm = (
            epoch_permutation(self.num_samples, self.seed, self.epoch)
            if self.shuffle
            else torch.arange(self.num_samples)
        )
        local = self.batch_size // self.world_size
        start, self._skip = self._skip, 0
        self.consumed = start
        for b in range(start, len(self)):
            batch = perm[b * self.batch_size : (b + 1) * self.batch_size]
            if self.world_size > 1:
                batch = batch[self.rank * local : (self.rank + 1) * local]
            self.consumed = b + 1
            yield batch.tolist()

    def state_dict(self) -> dict[str, int]:
        """Epoch and batches consumed (exact with ``num_workers=0``: nothing is prefetched)."""
        return {"epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Resume inside an epoch: the next iteration of that epoch skips consumed batches."""
        self.epoch = int(state["epoch"])
        consumed = int(state["consumed"])
        self._skip = consumed if consumed < len(self) else 0


class InMemoryKeyed(torch.utils.data.Dataset[tuple[Tensor, dict[str, Tensor]]]):
    """A keyed data set over in-memory tensors, fetched one batch per tensor index.

    Args:
        images: Shape: (N, C, H, W).
        keys: key name to long tensor. Shape: (N,).
    """

    def __init__(self, images: Tensor, keys: Mapping[str, Tensor]) -> None:
        self.images = images
        self.keys = dict(keys)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        return self.images[index], {k: v[index] for k, v in self.keys.items()}

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, dict[str, Tensor]]:
        """A whole batch ``(images [b, C, H, W], keys [b])`` with one index per tensor."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.images[idx], {k: v[idx] for k, v in self.keys.items()}


def passthrough(batch: Any) -> Any:
    """Collate function for :meth:`InMemoryKeyed.__getitems__` batches (already stacked)."""
    return batch


class ResumableLoader(DataLoader):
    """A ``DataLoader`` whose position is saved in Lightning checkpoints (mid-epoch resume)."""

    def state_dict(self) -> dict[str, int]:
        """The batch sampler's state."""
        assert isinstance(self.batch_sampler, ShardedBatchSampler)
        return self.batch_sampler.state_dict()

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Restore the batch sampler's state."""
        assert isinstance(self.batch_sampler, ShardedBatchSampler)
        self.batch_sampler.load_state_dict(state)


class PairsmithDataModule(pl.LightningDataModule):
    """Lightning data module over in-memory splits.

    Args:
        cfg: the ``data`` section.
        seed: seed of the per-epoch order.
        splits: already loaded ``(train, test)`` (else loaded in :meth:`setup`).
    """

    def __init__(
        self, cfg: DataConfig, seed: int = 0, splits: tuple[ImageSet, ImageSet] | None = None
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.seed = seed
        self.train_set: ImageSet | None = None
        self.test_set: ImageSet | None = None
        if splits is not None:
            self.train_set, self.test_set = splits

    def setup(self, stage: str | None = None) -> None:
        """Load the splits once."""
        if self.train_set is None:
            self.train_set, self.test_set = load_splits(self.cfg)

    def num_batches(self) -> int:
        """Optimiser steps per epoch."""
        self.setup()
        assert self.train_set is not None
        n, b = len(self.train_set), self.cfg.batch_size
        return n // b if self.cfg.drop_last else math.ceil(n / b)

    def train_dataloader(self) -> ResumableLoader:
        """Batches of ``(uint8 images, {"instance", "label"})`` for this rank."""
        self.setup()
        assert self.train_set is not None
        rank, world = 0, 1
        if self.trainer is not None:
            rank, world = self.trainer.global_rank, self.trainer.world_size
        n = len(self.train_set)
        if n < self.cfg.batch_size and self.cfg.drop_last:
            raise ConfigError(
                f"data.batch_size ({self.cfg.batch_size}) exceeds the {n} training images "
                "with data.drop_last=true: no batch to train on"
            )
        keys = {INSTANCE: torch.arange(n), LABEL: self.train_set.labels}
        sampler = ShardedBatchSampler(
            n, self.cfg.batch_size, self.seed, rank, world, self.cfg.drop_last
        )
        return ResumableLoader(
            InMemoryKeyed(self.train_set.images, keys),
            batch_sampler=sampler,
            collate_fn=passthrough,
            num_workers=self.cfg.num_workers,
            persistent_workers=self.cfg.num_workers > 0,
        )
