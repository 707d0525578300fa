"""Fashion-MNIST from the standard IDX files, kept whole in memory as ``uint8`` tensors.

The loader never touches the network unless ``download=True`` is passed. Files are searched in this
order: the explicit ``root`` argument, the ``PAIRSMITH_DATA`` environment variable (the folder
itself or its ``fashion-mnist`` sub-folder), then ``/usr/share/datasets/fashion-mnist`` where
Debian's ``dataset-fashion-mnist`` package installs them. Gzipped and plain files are both read.

Each item is ``(image, keys)`` with ``image`` a ``uint8`` tensor of shape (1, 28, 28) and keys
``instance`` (index in this dataset, after any subset) and ``label``. For training, ``.images`` and
``.labels`` expose the whole arrays so a batch sampler can index them directly, without
``DataLoader`` worker overhead (Survey §3.1: single-instance positives come from batched views).

References:
    1. Xiao, Rasul, Vollgraf. "Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine
       Learning Algorithms." arXiv:1708.07747, 2017.

Examples:
    >>> ds = FashionMNIST(train=True, subset=10000, seed=0)  # doctest: +SKIP
    >>> image, keys = ds[0]  # doctest: +SKIP
    >>> image.shape, image.dtype, sorted(keys)  # doctest: +SKIP
    (torch.Size([1, 28, 28]), torch.uint8, ['instance', 'label'])
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import urllib.request
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pairsmith.data.keys import INSTANCE, LABEL, Sample

ENV_VAR = "PAIRSMITH_DATA"
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
MIRRORS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
# MD5 of the official gzipped files (distributions may recompress; only downloads are checked).
RESOURCES = {
    "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
}
CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip

IDX_UBYTE = 0x08
_MISSING_HINT = (
    "install the Debian package (`apt-get install dataset-fashion-mnist`), or point "
    "`--data-root` / the PAIRSMITH_DATA environment variable at a folder holding the four IDX "
    "files, or pass download=True"
)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an unsigned-byte IDX file (optionally gzipped) into a numpy array.

    Args:
        path: File path; a ``.gz`` suffix (or gzip magic bytes) means gzip-compressed.

    Returns:
        ``uint8`` array whose shape is given by the file header, e.g. (N, 28, 28) or (N,).

    Raises:
        ValueError: If the magic number is not an unsigned-byte IDX header or the payload size does
            not match the dimensions in the header.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise ValueError(f"read_idx: {path} is a corrupt gzip file ({e})") from e
    if len(raw) < 4:
        raise ValueError(f"read_idx: {path} is too short ({len(raw)} bytes) to be an IDX file")
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != IDX_UBYTE or not 1 <= ndim <= 4:
        raise ValueError(
            f"read_idx: {path} has magic number 0x{raw[:4].hex()}, expected an unsigned-byte IDX "
            f"header 0x000008NN (0x00000801 for labels, 0x00000803 for images); is it corrupt?"
        )
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise ValueError(
            f"read_idx: {path} declares dimensions {dims} ({expected} bytes) but holds "
            f"{len(raw) - header} bytes of data; the file is truncated or corrupt"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find_file(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
        if (folder / name).is_file():
            return folder / name
    return None


def _candidate_dirs(root: str | os.PathLike[str] | None) -> list[Path]:
    if root is not None:
        return [Path(root), Path(root) / "fashion-mnist", Path(root) / "FashionMNIST" / "raw"]
    dirs: list[Path] = []
    env = os.environ.get(ENV_VAR)
    if env:
        dirs += [Path(env), Path(env) / "fashion-mnist", Path(env) / "FashionMNIST" / "raw"]
    dirs.append(SYSTEM_DIR)
    return dirs


def find_root(root: str | os.PathLike[str] | None = None, train: bool = True) -> Path:
    """Locate the folder holding the Fashion-MNIST IDX files for one split.

    Args:
        root: Explicit folder; when given, only it (and its ``fashion-mnist`` sub-folder) is
            searched.
        train: Look for the training files (else the ``t10k`` test files).

    Returns:
        The first folder in the search order that holds both files of the split.

    Raises:
        FileNotFoundError: If no searched folder holds the files; the message lists the folders and
            how to install the data.
    """
    prefix = "train" if train else "t10k"
    dirs = _candidate_dirs(root)
    for d in dirs:
        if all(
            _find_file(d, f"{prefix}-{k}-idx{n}-ubyte") for k, n in (("images", 3), ("labels", 1))
        ):
            return d
    raise FileNotFoundError(
        f"Fashion-MNIST {prefix} files not found in {[str(d) for d in dirs]}; {_MISSING_HINT}"
    )


def download_files(root: str | os.PathLike[str], mirrors: tuple[str, ...] = MIRRORS) -> Path:
    """Download the four official gzipped IDX files into ``root`` and check their MD5 sums.

    Never called unless ``FashionMNIST(download=True)`` is requested.

    Args:
        root: Destination folder (created if needed).
        mirrors: Base URLs tried in order.

    Returns:
        ``root`` as a ``Path``.

    Raises:
        RuntimeError: If a file cannot be fetched from any mirror or its checksum does not match.
    """
    dest = Path(root)
    dest.mkdir(parents=True, exist_ok=True)
    for stem, md5 in RESOURCES.items():
        target = dest / f"{stem}.gz"
        if target.is_file() and hashlib.md5(target.read_bytes()).hexdigest() == md5:
            continue
        errors = []
        for base in mirrors:
            try:
                with urllib.request.urlopen(base + target.name, timeout=60) as r:
                    data = r.read()
            except OSError as e:  # URLError is an OSError
                errors.append(f"{base}: {e}")
                continue
            if hashlib.md5(data).hexdigest() != md5:
                errors.append(f"{base}: MD5 mismatch")
                continue
            target.write_bytes(data)
            break
        else:
            raise RuntimeError(f"download: could not fetch {target.name}: {errors}")
    return dest


def balanced_subset(labels: Tensor, size: int, seed: int = 0) -> Tensor:
    """Pick a class-balanced random subset of indices.

    Args:
        labels: Class labels. Shape: (N,).
        size: Subset size; must be divisible by the number of classes and at most what the
            smallest class allows.
        seed: Seed of the permutation (independent of the global RNG).

    Returns:
        Sorted ``LongTensor`` of indices. Shape: (size,).

    Raises:
        ValueError: If ``size`` is not a positive multiple of the number of classes, or a class has
            fewer than ``size / num_classes`` samples.
    """
    classes = torch.unique(labels)
    if size <= 0 or size % len(classes) != 0:
        raise ValueError(
            f"balanced_subset: `size` must be a positive multiple of the {len(classes)} classes, "
            f"got {size}"
        )
    per_class = size // len(classes)
    g = torch.Generator().manual_seed(seed)
    picks = []
    for c in classes.tolist():
        idx = torch.nonzero(labels == c).flatten()
        if len(idx) < per_class:
            raise ValueError(
                f"balanced_subset: class {c} has {len(idx)} samples, `size`={size} needs "
                f"{per_class}"
            )
        picks.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
    return torch.sort(torch.cat(picks)).values


class FashionMNIST:
    """Fashion-MNIST held in memory as ``uint8`` tensors; items are ``(image, keys)``.

    Args:
        root: Folder holding the IDX files (searched first); ``None`` uses ``PAIRSMITH_DATA`` then
            ``/usr/share/datasets/fashion-mnist``.
        train: Training split (60,000 images) or test split (10,000).
        subset: If given, keep a class-balanced random subset of this size (e.g. 10000 keeps 1000
            per class: the benchmark set-up).
        seed: Seed of the subset selection.
        download: Download the official files into ``root`` (or ``PAIRSMITH_DATA``) when they are
            missing. Off by default: nothing is fetched unless asked.

    Attributes:
        images: ``uint8`` tensor. Shape: (N, 1, 28, 28).
        labels: ``int64`` tensor. Shape: (N,).
        indices: Indices of the kept samples in the full split. Shape: (N,).

    Raises:
        FileNotFoundError: If the files are absent and ``download`` is false.
        ValueError: If a file is corrupt, or image and label counts differ.
    """

    classes = CLASSES

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        train: bool = True,
        subset: int | None = None,
        seed: int = 0,
        download: bool = False,
    ) -> None:
        try:
            folder = find_root(root, train)
        except FileNotFoundError:
            if not download:
                raise
            target = root if root is not None else os.environ.get(ENV_VAR)
            if target is None:
                raise ValueError(
                    "FashionMNIST: download=True needs `root` or the PAIRSMITH_DATA variable"
                ) from None
            folder = download_files(target)
        prefix = "train" if train else "t10k"
        img_path = _find_file(folder, f"{prefix}-images-idx3-ubyte")
        lbl_path = _find_file(folder, f"{prefix}-labels-idx1-ubyte")
        assert img_path is not None and lbl_path is not None
        images = read_idx(img_path)
        labels = read_idx(lbl_path)
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"FashionMNIST: expected images (N, H, W) and labels (N,), got {images.shape} from "
                f"{img_path} and {labels.shape} from {lbl_path}"
            )
        self.images: Tensor = torch.from_numpy(images.copy()).unsqueeze(1)
        self.labels: Tensor = torch.from_numpy(labels.astype(np.int64))
        self.indices: Tensor = torch.arange(len(self.labels))
        if subset is not None:
            self.indices = balanced_subset(self.labels, subset, seed)
            self.images = self.images[self.indices].contiguous()
            self.labels = self.labels[self.indices].contiguous()
        self.root = folder
        self.train = train

    def __len__(self) -> int:
        """Number of samples."""
        return len(self.labels)

    def __getitem__(self, index: int) -> Sample:
        """Return ``(image, keys)``: ``uint8`` image (1, 28, 28), keys ``instance``, ``label``."""
        return self.images[index], {INSTANCE: int(index), LABEL: int(self.labels[index])}

    def __repr__(self) -> str:
        split = "train" if self.train else "test"
        return f"FashionMNIST(split={split}, n={len(self)}, root={str(self.root)!r})"
