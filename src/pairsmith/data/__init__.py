"""Data stage: keyed data sets and batched views (Survey §3).

Every module here imports with torch and numpy only; kornia (views), Pillow (folders) and
torchvision (CIFAR / STL) are imported when first used.
"""

from pairsmith.data.fashion_mnist import FashionMNIST, balanced_subset, read_idx
from pairsmith.data.folders import ImageFolder
from pairsmith.data.keys import INSTANCE, LABEL, UNKNOWN, KeyedDataset, batch_keys, collate
from pairsmith.data.textures import Textures, read_pat
from pairsmith.data.torchvision_sets import CIFAR10, CIFAR100, STL10
from pairsmith.data.views import (
    DATASET_STATS,
    MoCoV2Views,
    MultiCropViews,
    SimCLRViews,
    Views,
    ViewSpec,
    normalize,
    to_float,
)

__all__ = [
    "CIFAR10",
    "CIFAR100",
    "DATASET_STATS",
    "INSTANCE",
    "LABEL",
    "STL10",
    "UNKNOWN",
    "FashionMNIST",
    "ImageFolder",
    "KeyedDataset",
    "MoCoV2Views",
    "MultiCropViews",
    "SimCLRViews",
    "Textures",
    "ViewSpec",
    "Views",
    "balanced_subset",
    "batch_keys",
    "collate",
    "normalize",
    "read_idx",
    "read_pat",
    "to_float",
]
