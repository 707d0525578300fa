"""Image folders (``root/<class>/<image>``) without torchvision; Pillow is imported lazily.

Classes are the sorted sub-folder names; images are decoded on access into ``uint8`` tensors of
shape (C, H, W), converted to ``mode`` ("RGB" or "L") and optionally resized to a fixed size so
that batches stack.

Examples:
    >>> ds = ImageFolder("data/my_images", size=64)  # doctest: +SKIP
    >>> image, keys = ds[0]  # doctest: +SKIP
    >>> image.shape, keys  # doctest: +SKIP
    (torch.Size([3, 64, 64]), {'instance': 0, 'label': 0})
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from pairsmith.data.keys import INSTANCE, LABEL, Sample

IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
)


class ImageFolder:
    """A ``root/<class>/<image>`` folder as a keyed data set.

    Args:
        root: Folder with one sub-folder per class.
        size: Resize every image to ``(size, size)`` (bilinear) when given.
        mode: Pillow mode to convert to: ``"RGB"`` (3 channels) or ``"L"`` (1 channel).
        extensions: Accepted file suffixes (case-insensitive).

    Attributes:
        classes: Sorted class names; index = label.
        samples: ``(path, label)`` per sample.

    Raises:
        FileNotFoundError: If ``root`` is missing or holds no image.
        ValueError: If ``mode`` is not "RGB" or "L".
        ImportError: If Pillow is not installed (``pip install 'pairsmith[vision]'``).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        size: int | None = None,
        mode: str = "RGB",
        extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
    ) -> None:
        if mode not in ("RGB", "L"):
            raise ValueError(f"ImageFolder: `mode` must be 'RGB' or 'L', got {mode!r}")
        try:
            from PIL import Image  # noqa: F401  (fail early, not on the first item)
        except ImportError as e:
            raise ImportError("ImageFolder needs Pillow: pip install 'pairsmith[vision]'") from e
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"ImageFolder: `root` {self.root} is not a directory")
        self.classes = sorted(d.name for d in self.root.iterdir() if d.is_dir())
        exts = tuple(e.lower() for e in extensions)
        self.samples: list[tuple[Path, int]] = [
            (f, label)
            for label, c in enumerate(self.classes)
            for f in sorted((self.root / c).rglob("*"))
            if f.is_file() and f.suffix.lower() in exts
        ]
        if not self.samples:
            raise FileNotFoundError(
                f"ImageFolder: no image with suffix in {exts} under {self.root}/<class>/"
            )
        self.size = size
        self.mode = mode

    @property
    def labels(self) -> torch.Tensor:
        """Label of every sample. Shape: (N,)."""
        return torch.tensor([label for _, label in self.samples], dtype=torch.long)

    def __len__(self) -> int:
        """Number of images."""
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        """Return ``(image, keys)``: ``uint8`` (C, H, W) image, keys ``instance`` and ``label``."""
        from PIL import Image

        path, label = self.samples[index]
        with Image.open(path) as f:
            im = f.convert(self.mode)
        if self.size is not None:
            im = im.resize((self.size, self.size), Image.Resampling.BILINEAR)
        arr = np.asarray(im, dtype=np.uint8)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        image = torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()
        return image, {INSTANCE: int(index), LABEL: int(label)}
