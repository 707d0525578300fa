"""SimCLR: NT-Xent over two (or more) augmented views (Chen et al., ICML 2020).

Single-instance positives (survey 3.1): the views of one image are each other's positives,
every other view in the (global) batch is a negative. The recipe is the backbone, a 2-layer
MLP projection head with BatchNorm, L2-normalised projections, :meth:`Pairs.from_views`
(:func:`~pairsmith.core.distributed.distributed_pairs` under DDP: rows local, columns
global) and the InfoNCE loss with every positive in the denominator (NT-Xent).

This module also holds :class:`ContrastiveMethod`, the base of the SimCLR-family recipes
(SupCon, FNC, DCL, HCL): they differ from SimCLR only by the curators applied to the pairs
and by loss options, so each of them is a few lines on top of it.

References:
    1. Chen, Kornblith, Norouzi, Hinton. "A Simple Framework for Contrastive Learning of
       Visual Representations" (SimCLR). ICML 2020. Code: google-research/simclr.
    2. Survey §3.1 (single-instance positives), §2 (the InfoNCE loss).

Examples:
    >>> import torch
    >>> from pairsmith.models import SmallCNN
    >>> method = SimCLR(SmallCNN(1, (8, 16)), proj_hidden_dim=32, proj_dim=16)
    >>> views = [torch.randn(4, 1, 28, 28), torch.randn(4, 1, 28, 28)]
    >>> out = method.training_step(views, {"instance": torch.arange(4)}, step=0, epoch=0)
    >>> out.loss.shape, out.embeddings[0].shape
    (torch.Size([]), torch.Size([4, 16]))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pairsmith.core.distributed import distributed_pairs, scale_loss_for_ddp
from pairsmith.core.pairs import Pairs
from pairsmith.core.registry import register_method
from pairsmith.functional.infonce import Aggregate, InfoNCEOutput, PositivesInDenominator
from pairsmith.losses.infonce import InfoNCELoss
from pairsmith.methods.base import Method, StepOutput
from pairsmith.models.heads import ProjectionHead

Curator = Callable[[Pairs], Pairs]
ChunkSize = int | Literal["auto"] | None


# --------------------------------------------------------------------------- shared helpers
def check_number(
    name: str,
    value: object,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> float:
    """Validate a real-valued option and return it as a float.

    Args:
        name: the option's name (reported in the error).
        value: the value given.
        low: smallest allowed value (``None``: unbounded).
        high: largest allowed value (``None``: unbounded).
        low_inclusive: whether ``low`` itself is allowed.
        high_inclusive: whether ``high`` itself is allowed.

    Returns:
        ``float(value)``.

    Raises:
        ValueError: if ``value`` is not a finite real number within the bounds.
    """
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    v = float(value) if ok else math.nan  # type: ignore[arg-type]
    if ok and not math.isfinite(v):
        ok = False
    if ok and low is not None:
        ok = v >= low if low_inclusive else v > low
    if ok and high is not None:
        ok = v <= high if high_inclusive else v < high
    if not ok:
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        lb = "[" if low_inclusive and low is not None else "("
        hb = "]" if high_inclusive and high is not None else ")"
        raise ValueError(f"{name} must be a number in {lb}{lo}, {hi}{hb}, got {value!r}")
    return v


def check_int(name: str, value: object, low: int = 1) -> int:
    """Validate an integer option (``bool`` is rejected).

    Args:
        name: the option's name (reported in the error).
        value: the value given.
        low: smallest allowed value.

    Returns:
        ``value`` as an int.

    Raises:
        ValueError: unless ``value`` is an int ``>= low``.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def check_choice(name: str, value: object, choices: Sequence[object]) -> Any:
    """Validate that ``value`` is one of ``choices`` and return it.

    Raises:
        ValueError: naming the option and the allowed values.
    """
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def check_chunk_size(chunk_size: object) -> ChunkSize:
    """Validate the loss's row chunking: a positive int, ``"auto"`` or ``None``.

    Raises:
        ValueError: naming ``chunk_size``.
    """
    if chunk_size is None or chunk_size == "auto":
        return chunk_size
    if isinstance(chunk_size, int) and not isinstance(chunk_size, bool) and chunk_size > 0:
        return chunk_size
    raise ValueError(f"chunk_size must be a positive int, 'auto' or None, got {chunk_size!r}")


def backbone_dim(backbone: nn.Module) -> int:
    """The feature size ``backbone.out_dim``.

    Raises:
        ValueError: if the backbone has no positive integer ``out_dim``.
    """
    d = getattr(backbone, "out_dim", None)
    if isinstance(d, bool) or not isinstance(d, int) or d <= 0:
        raise ValueError(
            f"backbone must be an nn.Module with a positive int attribute out_dim, got {d!r}"
        )
    return d


def check_views(views: Sequence[Tensor], needed: int) -> None:
    """Check that enough views of one batch size were given.

    Raises:
        ValueError: if fewer than ``needed`` views are given or their batch sizes differ.
    """
    if len(views) < needed:
        raise ValueError(
            f"views must hold at least {needed} tensors [B, C, H, W], got {len(views)}"
        )
    n = views[0].shape[0]
    for i, v in enumerate(views[:needed]):
        if v.dim() < 2 or v.shape[0] != n:
            raise ValueError(f"views[{i}] has shape {tuple(v.shape)}, expected batch size {n}")


def step_keys(keys: Mapping[str, Tensor], n: int, device: torch.device) -> dict[str, Tensor]:
    """The batch keys as long tensors on ``device``; ``instance`` defaults to ``arange(n)``.

    The default ``instance`` is only correct in a single process (it is not a dataset
    index); under DDP pass the dataset indices.

    Args:
        keys: key name to integer tensor. Shape: (B,).
        n: the batch size B.
        device: where the embeddings live.

    Returns:
        Key name to long tensor. Shape: (B,).

    Raises:
        ValueError: if a key is not an integer tensor of shape (B,).
    """
    out: dict[str, Tensor] = {}
    for k, t in keys.items():
        if not isinstance(t, Tensor) or t.shape != (n,) or t.is_floating_point():
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"keys[{k!r}] must be an integer tensor of shape ({n},), got {got}")
        out[k] = t.to(device=device, dtype=torch.long)
    if "instance" not in out:
        out["instance"] = torch.arange(n, device=device)
    return out


def info_logs(info: Mapping[str, Any], prefix: str = "info.") -> dict[str, float]:
    """The scalar entries of a curator's ``Pairs.info`` as floats (for logging).

    Numbers and one-element tensors are kept; other entries (index tensors, ...) are not.
    """
    out: dict[str, float] = {}
    for k, v in info.items():
        if isinstance(v, bool):
            out[prefix + k] = float(v)
        elif isinstance(v, (int, float)):
            out[prefix + k] = float(v)
        elif isinstance(v, Tensor) and v.numel() == 1 and not v.is_complex():
            out[prefix + k] = float(v.detach().float().item())
    return out


def encode(backbone: nn.Module, head: nn.Module, x: Tensor) -> Tensor:
    """L2-normalised projection of a batch. Shape: (B, C, H, W) -> (B, D)."""
    return F.normalize(head(backbone(x)), dim=1)


# --------------------------------------------------------------------------- base recipe
class ContrastiveMethod(Method):
    """Base of the SimCLR-family recipes: one encoder, all views in the batch, curators.

    One training step:

    1. all views go through backbone and projection head in one pass (BatchNorm sees
       every view, as in SimCLR's global BN);
    2. :func:`~pairsmith.core.distributed.distributed_pairs` builds the pairs
       (:meth:`Pairs.from_views` in a single process): ``V * B`` anchors against the
       ``V * B`` views, positives ``SameKey("instance")``;
    3. the curators returned by :meth:`curators_for` are applied in order;
    4. :class:`~pairsmith.losses.infonce.InfoNCELoss` (``self.criterion``) computes the
       loss; under DDP it is scaled with
       :func:`~pairsmith.core.distributed.scale_loss_for_ddp`.

    Subclasses install curators with :meth:`set_curators` (and override
    :meth:`curators_for` for schedules) and may override :meth:`make_pairs` to keep some
    views out of the loss (FNC's detection-only support views).

    Args:
        backbone: encoder with an ``out_dim`` attribute; (B, C, H, W) -> (B, out_dim).
        temperature: tau of the InfoNCE loss.
        proj_hidden_dim: hidden size of the projection head.
        proj_dim: output size of the projection head (the contrastive space).
        proj_layers: linear layers in the projection head (2 in SimCLR v1).
        num_views: views per image (>= 2); all of them are anchors unless
            :meth:`make_pairs` says otherwise.
        positives_in_denominator: ``"all"`` (NT-Xent, SupCon L_out), ``"self"`` or ``"none"``.
        aggregate: ``"mean_log"`` or ``"log_mean"``.
        chunk_size: row chunking of the loss (``"auto"``, an int or ``None``).

    Raises:
        ValueError: for a bad option (the message names it).
    """

    def __init__(
        self,
        backbone: nn.Module,
        temperature: float = 0.1,
        proj_hidden_dim: int = 512,
        proj_dim: int = 128,
        proj_layers: int = 2,
        num_views: int = 2,
        positives_in_denominator: PositivesInDenominator = "all",
        aggregate: Aggregate = "mean_log",
        chunk_size: ChunkSize = "auto",
    ) -> None:
        super().__init__(backbone)
        in_dim = backbone_dim(backbone)
        self.temperature = check_number("temperature", temperature, 0.0, low_inclusive=False)
        check_int("proj_hidden_dim", proj_hidden_dim)
        check_int("proj_dim", proj_dim)
        check_int("proj_layers", proj_layers)
        self.num_views = check_int("num_views", num_views, low=2)
        self.positives_in_denominator: PositivesInDenominator = check_choice(
            "positives_in_denominator", positives_in_denominator, ("all", "self", "none")
        )
        self.aggregate: Aggregate = check_choice("aggregate", aggregate, ("mean_log", "log_mean"))
        self.chunk_size = check_chunk_size(chunk_size)
        self.projector = ProjectionHead(in_dim, proj_hidden_dim, proj_dim, layers=proj_layers)
        self.curators: list[Curator] = []
        self.curator_modules = nn.ModuleList()
        self.criterion = InfoNCELoss(
            self.temperature, self.positives_in_denominator, self.aggregate, self.chunk_size
        )

    @property
    def last_output(self) -> InfoNCEOutput | None:
        """Per-anchor losses and validity of the last step (``None`` before the first)."""
        return self.criterion.last_output

    # ------------------------------------------------------------------ hooks
    def set_curators(self, curators: Sequence[Curator]) -> None:
        """Install the curators; those that are modules become children (state dict)."""
        self.curators = list(curators)
        self.curator_modules = nn.ModuleList([c for c in curators if isinstance(c, nn.Module)])

    def curators_for(self, step: int, epoch: int) -> Sequence[Curator]:
        """The curators to apply at this step (override for schedules and warm-ups)."""
        return self.curators

    def make_pairs(self, z: Sequence[Tensor], keys: Mapping[str, Tensor]) -> Pairs:
        """Pairs of the views' projections: local rows against the (global) batch.

        Args:
            z: one L2-normalised projection per view. Shape: (B, D) each.
            keys: the batch keys. Shape: (B,) each.
        """
        return distributed_pairs(list(z), keys)

    def curate(self, pairs: Pairs, step: int, epoch: int) -> Pairs:
        """Apply :meth:`curators_for` in order."""
        for c in self.curators_for(step, epoch):
            pairs = c(pairs)
        return pairs

    def loss(self, pairs: Pairs) -> Tensor:
        """The InfoNCE loss of curated pairs (DDP-scaled; the plain mean in one process)."""
        self.criterion(pairs)
        out = self.criterion.last_output
        assert out is not None
        return scale_loss_for_ddp(out)

    # ------------------------------------------------------------------ step
    def training_step(
        self, views: Sequence[Tensor], keys: Mapping[str, Tensor], step: int, epoch: int
    ) -> StepOutput:
        """One step: project every view, build and curate the pairs, return the loss.

        Args:
            views: ``num_views`` tensors. Shape: (B, C, H, W) each.
            keys: key name to long tensor. Shape: (B,). ``instance`` (default
                ``arange(B)`` in a single process), ``label`` (-1 unknown), ...
            step: global step (0-based).
            epoch: epoch (0-based).

        Returns:
            :class:`StepOutput` with the loss, the curated pairs (detached) and the first
            two views' projections (detached). Shape of each projection: (B, proj_dim).
        """
        check_views(views, self.num_views)
        v = list(views[: self.num_views])
        n = v[0].shape[0]
        z = list(encode(self.backbone, self.projector, torch.cat(v, dim=0)).chunk(len(v)))
        k = step_keys(keys, n, z[0].device)
        pairs = self.curate(self.make_pairs(z, k), step, epoch)
        loss = self.loss(pairs)
        assert self.last_output is not None
        logs = {
            "loss": float(loss.detach()),
            "valid_fraction": float(self.last_output.valid.float().mean()) if n else 0.0,
            **info_logs(pairs.info),
        }
        return StepOutput(
            loss=loss,
            pairs=pairs.detach(),
            embeddings=(z[0].detach(), z[1].detach()),
            logs=logs,
        )


@register_method("methods.simclr", taxonomy=("positives", "single_instance"))
class SimCLR(ContrastiveMethod):
    """SimCLR (Chen et al. 2020; survey 3.1): NT-Xent between augmented views.

    Defaults, and how they are scaled for small data (28x28 images, ~10k samples, a
    256-d CNN, batch 256) from the reference (shared/reference/methods.md §2.1):

    * ``temperature = 0.1``: the ImageNet value (CIFAR uses 0.5). On the Fashion-MNIST
      set-up of shared/reference/anchors.md ("Measured here") 0.1 beat 0.2.
    * ``proj_hidden_dim = 512``: SimCLR's hidden layer is the backbone width (2048 for a
      ResNet-50); 2x the 256-d features of the small CNN, as in the measured set-up.
    * ``proj_dim = 128``: unchanged (the paper's output size).
    * ``proj_layers = 2``: SimCLR v1's MLP (Linear-BN-ReLU-Linear).
    * ``num_views = 2``; with more views every view is an anchor and all other views of
      its image are its positives (multi-positive NT-Xent, SupCon's L_out form).

    The loss is the 2N-anchor mean NT-Xent; google-research/simclr reports twice this
    value (methods.md §0.1).

    Args:
        backbone: encoder with ``out_dim``; (B, C, H, W) -> (B, out_dim).
        temperature: tau > 0.
        proj_hidden_dim: hidden size of the projection head.
        proj_dim: projection size.
        proj_layers: linear layers of the head.
        num_views: views per image, >= 2.
        chunk_size: row chunking of the loss.

    Raises:
        ValueError: for a bad option (the message names it).
    """

    def __init__(
        self,
        backbone: nn.Module,
        temperature: float = 0.1,
        proj_hidden_dim: int = 512,
        proj_dim: int = 128,
        proj_layers: int = 2,
        num_views: int = 2,
        chunk_size: ChunkSize = "auto",
    ) -> None:
        super().__init__(
            backbone,
            temperature=temperature,
            proj_hidden_dim=proj_hidden_dim,
            proj_dim=proj_dim,
            proj_layers=proj_layers,
            num_views=num_views,
            chunk_size=chunk_size,
        )
