"""Texture classification from GIMP ``.pat`` patterns: one class per texture, random crops.

A small, offline, colour data set: Debian's ``gimp-data-extras`` installs ~100 patterns in
``/usr/share/gimp/2.0/patterns``. Textures smaller than ``min_size`` on either side are skipped;
gray, gray+alpha and RGBA patterns are converted to RGB (alpha dropped). Sample ``i`` is a crop of
texture ``i // crops_per_texture`` at a position drawn from a generator seeded by ``(seed, i)``, so
the data set is deterministic per index and two seeds give two disjoint-ish splits.

``.pat`` layout (all integers big-endian uint32): ``header_size``, ``version`` (= 1), ``width``,
``height``, ``bytes_per_pixel`` (1-4), magic ``b"GPAT"``, a NUL-terminated UTF-8 name filling the
header up to ``header_size``, then ``width * height * bytes_per_pixel`` raw pixel bytes.

Examples:
    >>> ds = Textures(crop_size=32, crops_per_texture=10)  # doctest: +SKIP
    >>> image, keys = ds[0]  # doctest: +SKIP
    >>> image.shape, keys  # doctest: +SKIP
    (torch.Size([3, 32, 32]), {'instance': 0, 'label': 0})
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pairsmith.data.keys import INSTANCE, LABEL, Sample

SYSTEM_DIR = Path("/usr/share/gimp/2.0/patterns")
GPAT_MAGIC = b"GPAT"
_HEADER = struct.Struct(">5I4s")


@dataclass(frozen=True)
class Pattern:
    """One decoded GIMP pattern.

    Attributes:
        name: The pattern's name from its header.
        pixels: ``uint8`` array of shape (H, W, bytes_per_pixel).
    """

    name: str
    pixels: np.ndarray

    @property
    def channels(self) -> int:
        """Bytes per pixel: 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA."""
        return int(self.pixels.shape[2])

    def rgb(self) -> np.ndarray:
        """The pattern as RGB, alpha dropped. Shape: (H, W, 3), ``uint8``."""
        p = self.pixels
        if self.channels in (1, 2):
            return np.repeat(p[:, :, :1], 3, axis=2)
        return np.ascontiguousarray(p[:, :, :3])


def read_pat(path: str | os.PathLike[str]) -> Pattern:
    """Decode a GIMP ``.pat`` file.

    Args:
        path: File path.

    Returns:
        The decoded :class:`Pattern`.

    Raises:
        ValueError: If the magic is not ``GPAT``, the version is not 1, ``bytes_per_pixel`` is not
            in 1-4, or the file is shorter than its header declares.
    """
    path = Path(path)
    raw = path.read_bytes()
    if len(raw) < _HEADER.size:
        raise ValueError(f"read_pat: {path} is too short ({len(raw)} bytes) for a GIMP pattern")
    header_size, version, width, height, bpp, magic = _HEADER.unpack_from(raw)
    if magic != GPAT_MAGIC:
        raise ValueError(f"read_pat: {path} has magic {magic!r}, expected {GPAT_MAGIC!r}")
    if version != 1:
        raise ValueError(f"read_pat: {path} has version {version}, expected 1")
    if not 1 <= bpp <= 4:
        raise ValueError(f"read_pat: {path} has bytes_per_pixel={bpp}, expected 1-4")
    if header_size < _HEADER.size or width == 0 or height == 0:
        raise ValueError(
            f"read_pat: {path} has header_size={header_size}, width={width}, height={height}; "
            f"expected header_size >= {_HEADER.size} and a non-empty image"
        )
    n = width * height * bpp
    if len(raw) < header_size + n:
        raise ValueError(
            f"read_pat: {path} declares {width}x{height}x{bpp} pixels ({n} bytes) after a "
            f"{header_size}-byte header but holds {len(raw)} bytes; it is truncated"
        )
    name = raw[_HEADER.size : header_size].split(b"\x00", 1)[0].decode("utf-8", errors="replace")
    pixels = np.frombuffer(raw, np.uint8, count=n, offset=header_size)
    pixels = pixels.reshape(height, width, bpp).copy()
    return Pattern(name=name, pixels=pixels)


def load_patterns(
    root: str | os.PathLike[str] | None = None, min_size: int = 64, colour_only: bool = False
) -> list[tuple[str, np.ndarray]]:
    """Load every usable ``.pat`` of a folder as RGB, sorted by file name.

    Args:
        root: Folder of ``.pat`` files; ``None`` uses ``/usr/share/gimp/2.0/patterns``.
        min_size: Skip patterns narrower or shorter than this.
        colour_only: Skip patterns stored as gray or gray+alpha.

    Returns:
        List of ``(file stem, pixels)``, pixels of shape (H, W, 3) ``uint8``.

    Raises:
        FileNotFoundError: If the folder does not exist or holds no usable pattern.
    """
    folder = Path(root) if root is not None else SYSTEM_DIR
    if not folder.is_dir():
        raise FileNotFoundError(
            f"Textures: pattern folder {folder} not found; install GIMP's patterns with "
            f"`apt-get install gimp-data-extras` or pass `root`"
        )
    out = []
    for f in sorted(folder.glob("*.pat")):
        pat = read_pat(f)
        h, w, _ = pat.pixels.shape
        if h < min_size or w < min_size or (colour_only and pat.channels < 3):
            continue
        out.append((f.stem, pat.rgb()))
    if not out:
        raise FileNotFoundError(
            f"Textures: no .pat file of at least {min_size}x{min_size} in {folder}; install "
            f"`apt-get install gimp-data-extras` or pass another `root`"
        )
    return out


class Textures:
    """Random crops of GIMP textures; the label is the texture.

    All crops are cut once at construction and kept as a ``uint8`` tensor.

    Args:
        root: Folder of ``.pat`` files; ``None`` uses ``/usr/share/gimp/2.0/patterns``.
        crop_size: Side of the square crops (<= ``min_size``).
        crops_per_texture: Samples per texture.
        seed: Seed of the crop positions; sample ``i`` uses ``seed * 1_000_003 + i``.
        min_size: Skip textures smaller than this on either side.
        colour_only: Skip textures stored as gray.

    Attributes:
        images: ``uint8`` crops. Shape: (N, 3, crop_size, crop_size).
        labels: Texture index of each crop. Shape: (N,).
        classes: Texture file stems, index = label.

    Raises:
        ValueError: If ``crop_size`` exceeds ``min_size`` or a count is not positive.
        FileNotFoundError: If the pattern folder is missing.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        crop_size: int = 32,
        crops_per_texture: int = 100,
        seed: int = 0,
        min_size: int = 64,
        colour_only: bool = False,
    ) -> None:
        if crop_size < 1 or crops_per_texture < 1:
            raise ValueError(
                f"Textures: `crop_size` and `crops_per_texture` must be >= 1, got {crop_size} "
                f"and {crops_per_texture}"
            )
        if crop_size > min_size:
            raise ValueError(
                f"Textures: `crop_size` ({crop_size}) must be <= `min_size` ({min_size})"
            )
        patterns = load_patterns(root, min_size, colour_only)
        self.classes = [name for name, _ in patterns]
        n = len(patterns) * crops_per_texture
        images = torch.empty(n, 3, crop_size, crop_size, dtype=torch.uint8)
        for i in range(n):
            pix = patterns[i // crops_per_texture][1]
            h, w, _ = pix.shape
            # One generator per index: sample i is the same whatever else is loaded.
            g = torch.Generator().manual_seed(seed * 1_000_003 + i)
            y = int(torch.randint(0, h - crop_size + 1, (1,), generator=g))
            x = int(torch.randint(0, w - crop_size + 1, (1,), generator=g))
            images[i] = torch.from_numpy(pix[y : y + crop_size, x : x + crop_size]).permute(2, 0, 1)
        self.images: Tensor = images
        self.labels: Tensor = torch.arange(len(patterns)).repeat_interleave(crops_per_texture)
        self.crops_per_texture = crops_per_texture

    def __len__(self) -> int:
        """Number of crops."""
        return len(self.labels)

    def __getitem__(self, index: int) -> Sample:
        """Return ``(image, keys)``: a ``uint8`` (3, s, s) crop, keys ``instance`` and ``label``."""
        return self.images[index], {INSTANCE: int(index), LABEL: int(self.labels[index])}
