"""Batched augmented views on the training device (Survey §3.1: single-instance positives).

The views of one image are its positives; each view is produced by a random augmentation pipeline
applied to the *whole batch at once* with kornia, on whatever device the batch lives on. This avoids
per-sample ``DataLoader`` workers, which on small machines compete with training for the same cores.

The pipelines are grayscale-aware: on 1-channel input, saturation, hue and random grayscale are
skipped (they are identities or undefined there); brightness and contrast jitter are kept unless
``intensity_on_gray=False``. Randomness comes from the global torch RNG, so a
``torch.manual_seed`` before a call makes the views reproducible.

kornia is imported lazily, when a pipeline is first built, so that ``import pairsmith`` needs only
torch and numpy.

References:
    1. Chen et al. "A Simple Framework for Contrastive Learning of Visual Representations"
       (SimCLR). ICML 2020.
    2. Chen et al. "Improved Baselines with Momentum Contrastive Learning" (MoCo v2).
       arXiv:2003.04297, 2020.
    3. Caron et al. "Unsupervised Learning of Visual Features by Contrasting Cluster Assignments"
       (SwAV, multi-crop). NeurIPS 2020.

Examples:
    >>> import torch
    >>> views = SimCLRViews(size=28, channels=1)  # doctest: +SKIP
    >>> v1, v2 = views(torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8))  # doctest: +SKIP
    >>> v1.shape, v1.dtype  # doctest: +SKIP
    (torch.Size([8, 1, 28, 28]), torch.float32)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

# Per-channel statistics of common data sets, in [0, 1] pixel units.
DATASET_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "stl10": ((0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def _stats(
    channels: int, mean: Sequence[float] | None, std: Sequence[float] | None
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    m = tuple(mean) if mean is not None else (0.5,) * channels
    s = tuple(std) if std is not None else (0.5,) * channels
    if len(m) != channels or len(s) != channels:
        raise ValueError(
            f"`mean` and `std` must have one entry per channel ({channels}), got {m} and {s}"
        )
    if any(v <= 0 for v in s):
        raise ValueError(f"`std` entries must be positive, got {s}")
    return m, s


def to_float(images: Tensor) -> Tensor:
    """Convert a batch to float in [0, 1]: ``uint8`` is divided by 255, floats are kept.

    Args:
        images: Shape: (B, C, H, W), ``uint8`` or floating point.

    Returns:
        ``float32`` (or the input float dtype) tensor of the same shape.

    Raises:
        ValueError: If ``images`` is not 4-D or has an integer dtype other than ``uint8``.
    """
    if images.dim() != 4:
        raise ValueError(f"`images` must have shape (B, C, H, W), got {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    if not images.is_floating_point():
        raise ValueError(f"`images` must be uint8 or floating point, got {images.dtype}")
    return images


def normalize(
    images: Tensor, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> Tensor:
    """Convert to float in [0, 1] and standardise per channel, as the views do (no augmentation).

    Args:
        images: Shape: (B, C, H, W), ``uint8`` or float in [0, 1].
        mean: Per-channel mean, length C; ``None`` means 0.5 for every channel.
        std: Per-channel standard deviation, length C; ``None`` means 0.5 for every channel.

    Returns:
        Float tensor of shape (B, C, H, W).

    Raises:
        ValueError: If the statistics do not have one entry per channel.
    """
    x = to_float(images)
    m, s = _stats(x.shape[1], mean, std)
    mt = torch.tensor(m, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    st = torch.tensor(s, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mt) / st


@dataclass(frozen=True)
class ViewSpec:
    """Parameters of one augmentation pipeline; every probability 0 turns its op off.

    Attributes:
        size: Output side length (square crops).
        scale: Area range of ``RandomResizedCrop`` relative to the input.
        ratio: Aspect-ratio range of the crop.
        flip_p: Horizontal flip probability.
        jitter: Colour-jitter strengths (brightness, contrast, saturation, hue). On 1-channel
            input saturation and hue are always dropped, and brightness/contrast are kept only when
            ``intensity_on_gray`` is true.
        jitter_p: Probability of applying colour jitter.
        intensity_on_gray: On 1-channel input, still apply the brightness/contrast part of
            ``jitter`` (an intensity jitter, not a colour one; torchvision's ColorJitter does the
            same on "L" images). On by default: on Fashion-MNIST it is the single largest kNN
            gain we measured (+5.5 points at 4 epochs, docs/recipe_notes.md).
        gray_p: Random grayscale probability; ignored on 1-channel input.
        blur_p: Gaussian blur probability.
        blur_sigma: Sigma range of the blur; the kernel is ~10% of ``size`` (odd, >= 3).
        solarize_p: Solarisation probability.
        affine_p: Probability of a random affine warp (rotation / translation) after the crop.
        degrees: Rotation range of the affine warp, in degrees.
        translate: Fractional translation of the affine warp.
        erase_p: Random-erasing probability (applied after normalisation, fills with 0).
        erase_scale: Area range of the erased rectangle.
    """

    size: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = 0.8
    intensity_on_gray: bool = True
    gray_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0
    affine_p: float = 0.0
    degrees: float = 0.0
    translate: float = 0.0
    erase_p: float = 0.0
    erase_scale: tuple[float, float] = (0.02, 0.2)

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"ViewSpec: `size` must be >= 1, got {self.size}")
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(
                f"ViewSpec: `scale` must satisfy 0 < low <= high <= 1, got {self.scale}"
            )
        for name in ("flip_p", "jitter_p", "gray_p", "blur_p", "solarize_p", "affine_p", "erase_p"):
            p = getattr(self, name)
            if not 0 <= p <= 1:
                raise ValueError(f"ViewSpec: `{name}` must be a probability in [0, 1], got {p}")


def build_pipeline(
    spec: ViewSpec, channels: int, mean: Sequence[float], std: Sequence[float]
) -> nn.Module:
    """Build the kornia pipeline of one view.

    Args:
        spec: The view's parameters.
        channels: Number of input channels; 1 drops colour jitter and grayscale.
        mean: Per-channel mean used to normalise the output, length ``channels``.
        std: Per-channel std used to normalise the output, length ``channels``.

    Returns:
        An ``nn.Module`` mapping float [0, 1] (B, C, H, W) to normalised (B, C, size, size).

    Raises:
        ImportError: If kornia is not installed (it is part of the ``train`` extra).
    """
    try:
        import kornia.augmentation as K
    except ImportError as e:  # pragma: no cover - exercised only without kornia
        raise ImportError(
            "pairsmith.data.views needs kornia: pip install 'pairsmith[train]'"
        ) from e

    # "resample" crops the whole batch with one batched warp; "slice" loops over samples.
    ops: list[nn.Module] = [
        K.RandomResizedCrop(
            (spec.size, spec.size), scale=spec.scale, ratio=spec.ratio, cropping_mode="resample"
        )
    ]
    if spec.affine_p > 0:
        t = (spec.translate, spec.translate) if spec.translate > 0 else None
        ops.append(K.RandomAffine(degrees=spec.degrees, translate=t, p=spec.affine_p))
    if spec.flip_p > 0:
        ops.append(K.RandomHorizontalFlip(p=spec.flip_p))
    # Colour ops are meaningless on one channel: we skip them rather than fake an RGB image.
    b, c, s, h = spec.jitter
    if channels == 3 and spec.jitter_p > 0 and any(v > 0 for v in spec.jitter):
        ops.append(K.ColorJitter(b, c, s, h, p=spec.jitter_p))
    elif channels == 1 and spec.intensity_on_gray and spec.jitter_p > 0 and (b > 0 or c > 0):
        ops.append(K.ColorJitter(b, c, 0.0, 0.0, p=spec.jitter_p))
    if channels == 3 and spec.gray_p > 0:
        ops.append(K.RandomGrayscale(p=spec.gray_p))
    if spec.blur_p > 0:
        k = max(3, int(0.1 * spec.size) // 2 * 2 + 1)
        ops.append(K.RandomGaussianBlur((k, k), spec.blur_sigma, p=spec.blur_p))
    if spec.solarize_p > 0:
        ops.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=spec.solarize_p))
    ops.append(K.Normalize(mean=torch.tensor(mean), std=torch.tensor(std)))
    if spec.erase_p > 0:
        ops.append(K.RandomErasing(scale=spec.erase_scale, p=spec.erase_p))
    return nn.Sequential(*ops)


class Views(nn.Module):
    """A list of view pipelines applied to one batch: ``views(images) -> [view_0, view_1, ...]``.

    Args:
        specs: One :class:`ViewSpec` per output view.
        channels: Number of input channels C.
        mean: Per-channel normalisation mean (length C); ``None`` means 0.5.
        std: Per-channel normalisation std (length C); ``None`` means 0.5.

    Raises:
        ValueError: If ``specs`` is empty, ``channels`` is not 1 or 3, or the statistics have the
            wrong length.
    """

    def __init__(
        self,
        specs: Sequence[ViewSpec],
        channels: int = 3,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if len(specs) == 0:
            raise ValueError("Views: `specs` must contain at least one ViewSpec")
        if channels not in (1, 3):
            raise ValueError(f"Views: `channels` must be 1 (grayscale) or 3 (RGB), got {channels}")
        self.channels = channels
        self.mean, self.std = _stats(channels, mean, std)
        self.specs = tuple(specs)
        self.pipelines = nn.ModuleList(
            build_pipeline(s, channels, self.mean, self.std) for s in specs
        )

    @property
    def num_views(self) -> int:
        """Number of views produced per image."""
        return len(self.specs)

    @torch.no_grad()
    def forward(self, images: Tensor) -> list[Tensor]:
        """Produce the views of a batch.

        Args:
            images: Shape: (B, C, H, W), ``uint8`` or float in [0, 1], on any device.

        Returns:
            List of ``num_views`` float tensors, view ``i`` of shape (B, C, size_i, size_i).

        Raises:
            ValueError: If ``images`` is not 4-D or its channel count differs from ``channels``.
        """
        x = to_float(images)
        if x.shape[1] != self.channels:
            raise ValueError(
                f"Views: `images` must have {self.channels} channels, got shape "
                f"{tuple(images.shape)}"
            )
        return [p(x) for p in self.pipelines]

    def normalize(self, images: Tensor) -> Tensor:
        """Normalise without augmentation (for evaluation). Shape: (B, C, H, W) -> same."""
        return normalize(images, self.mean, self.std)


def _preset(base: ViewSpec, n: int, overrides: dict[str, Any]) -> list[ViewSpec]:
    spec = replace(base, **overrides)
    return [spec] * n


def SimCLRViews(  # noqa: N802 - preset factories read like classes
    size: int,
    channels: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    n_views: int = 2,
    **overrides: Any,
) -> Views:
    """SimCLR's augmentation [1]: crop 0.08-1, flip, jitter 0.4/0.4/0.4/0.1 with p 0.8,
    grayscale 0.2; blur only for images of at least 64 px (SimCLR drops it on CIFAR).

    Args:
        size: Output side length.
        channels: Input channels; 1 drops colour ops.
        mean: Normalisation mean per channel.
        std: Normalisation std per channel.
        n_views: Number of views.
        **overrides: Any :class:`ViewSpec` field, e.g. ``scale=(0.3, 1.0)``.

    Returns:
        A :class:`Views` module.
    """  # noqa: D205
    base = ViewSpec(size=size, blur_p=0.5 if size >= 64 else 0.0)
    return Views(_preset(base, n_views, overrides), channels, mean, std)


def MoCoV2Views(  # noqa: N802
    size: int,
    channels: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    n_views: int = 2,
    **overrides: Any,
) -> Views:
    """MoCo v2's augmentation [2]: crop 0.2-1, jitter 0.4/0.4/0.4/0.1 (p 0.8), grayscale 0.2,
    blur 0.5 (for images of at least 64 px), flip.

    Args:
        size: Output side length.
        channels: Input channels; 1 drops colour ops.
        mean: Normalisation mean per channel.
        std: Normalisation std per channel.
        n_views: Number of views.
        **overrides: Any :class:`ViewSpec` field.

    Returns:
        A :class:`Views` module.
    """  # noqa: D205
    base = ViewSpec(size=size, scale=(0.2, 1.0), blur_p=0.5 if size >= 64 else 0.0)
    return Views(_preset(base, n_views, overrides), channels, mean, std)


def MultiCropViews(  # noqa: N802
    global_size: int,
    local_size: int,
    n_local: int = 6,
    channels: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    global_scale: tuple[float, float] = (0.4, 1.0),
    local_scale: tuple[float, float] = (0.05, 0.4),
    **overrides: Any,
) -> Views:
    """Multi-crop [3]: 2 global crops then ``n_local`` small local crops.

    The output list holds the two global views first (shape (B, C, global_size, global_size)), then
    the local ones (shape (B, C, local_size, local_size)).

    Args:
        global_size: Side of the global crops.
        local_size: Side of the local crops.
        n_local: Number of local crops (>= 0).
        channels: Input channels; 1 drops colour ops.
        mean: Normalisation mean per channel.
        std: Normalisation std per channel.
        global_scale: Area range of global crops.
        local_scale: Area range of local crops.
        **overrides: Any :class:`ViewSpec` field, applied to every crop.

    Returns:
        A :class:`Views` module.

    Raises:
        ValueError: If ``n_local`` is negative.
    """
    if n_local < 0:
        raise ValueError(f"MultiCropViews: `n_local` must be >= 0, got {n_local}")
    g = replace(ViewSpec(size=global_size, scale=global_scale), **overrides)
    loc = replace(ViewSpec(size=local_size, scale=local_scale), **overrides)
    return Views([g, g] + [loc] * n_local, channels, mean, std)
