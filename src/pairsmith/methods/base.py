"""The recipe interface: what a training loop needs from a method.

A method owns its networks (backbone, heads, momentum copies), builds :class:`Pairs`
from the views of a batch, applies its curators and returns the loss. It never imports
the training app: a plain PyTorch loop can drive it::

    for images, keys in loader:
        views = augment(images)                  # list of [B, C, H, W]
        out = method.training_step(views, keys, step=i, epoch=e)
        out.loss.backward(); opt.step(); opt.zero_grad()
        method.after_optimizer_step(step=i, total_steps=n)   # EMA, queue push, ...
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from pairsmith.core.pairs import Pairs


@dataclass
class StepOutput:
    """What one training step returns.

    Attributes:
        loss: scalar with gradient.
        pairs: the curated pairs the loss was computed on (for diagnostics), or ``None``
            for methods without pairs.
        embeddings: the projections of the first two views ``[B, D]`` each (for the
            alignment and uniformity diagnostics), or empty.
        logs: extra scalars to log (floats).
    """

    loss: Tensor
    pairs: Pairs | None = None
    embeddings: tuple[Tensor, ...] = ()
    logs: dict[str, float] = field(default_factory=dict)


class Method(nn.Module):
    """Base class of the recipes under ``pairsmith.methods``.

    Subclasses set ``self.backbone`` (the encoder evaluated by kNN / linear probe) and
    implement :meth:`training_step`.

    Attributes:
        num_views: how many augmented views of each image the method needs.
    """

    num_views: int = 2

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def training_step(
        self, views: Sequence[Tensor], keys: Mapping[str, Tensor], step: int, epoch: int
    ) -> StepOutput:
        """Compute the loss of one batch.

        Args:
            views: ``num_views`` tensors ``[B, C, H, W]`` (augmented, normalised).
            keys: key name to long tensor ``[B]`` (``instance``, ``label`` (-1 if unknown), ...).
            step: global optimisation step (0-based).
            epoch: current epoch (0-based).
        """
        raise NotImplementedError

    @torch.no_grad()
    def after_optimizer_step(self, step: int, total_steps: int) -> None:  # noqa: B027
        """Hook after each optimiser step (momentum encoders, schedules)."""

    def encoder(self) -> nn.Module:
        """The network whose features are evaluated (the backbone)."""
        return self.backbone
