"""SupCon: every view with the anchor's label is a positive (Khosla et al., NeurIPS 2020).

Supervised multi-instance positives (survey 3.2.3): SimCLR's pipeline with the
:class:`~pairsmith.positives.supervised.supcon.SupConPositives` curator, which sets
``positives = SameKey("label")`` (united with ``SameKey("instance")`` so that rows whose
label is unknown, -1, fall back to their own views: SimCLR for unlabeled rows), and the
InfoNCE loss with every positive in the denominator (L_out, ``aggregate="mean_log"``, as in
``HobbitLong/SupContrast/losses.py``) or L_in (``"log_mean"``).

References:
    1. Khosla et al. "Supervised Contrastive Learning". NeurIPS 2020.
    2. Survey §3.2.3; shared/reference/methods.md §5.1.

Examples:
    >>> import torch
    >>> from pairsmith.models import SmallCNN
    >>> method = SupCon(SmallCNN(1, (8, 16)), proj_hidden_dim=32, proj_dim=16)
    >>> keys = {"instance": torch.arange(4), "label": torch.tensor([0, 0, 1, -1])}
    >>> views = [torch.randn(4, 1, 28, 28), torch.randn(4, 1, 28, 28)]
    >>> out = method.training_step(views, keys, step=0, epoch=0)
    >>> int(out.pairs.dense_positives()[0].sum())  # its other view and sample 1's two views
    3
"""

from __future__ import annotations

from typing import Literal

from torch import nn

from pairsmith.core.registry import register_method
from pairsmith.methods.simclr import ChunkSize, ContrastiveMethod, check_choice
from pairsmith.positives.supervised.supcon import SupConPositives


@register_method("methods.supcon", taxonomy=("positives", "supervised"))
class SupCon(ContrastiveMethod):
    """SupCon (Khosla et al. 2020; survey 3.2.3): same-label views are positives.

    Needs the ``label`` key (-1 = unknown: such rows keep only their own views as
    positives). Defaults from shared/reference/methods.md §5.1, scaled for small data:

    * ``temperature = 0.1``: the README's SupCon command (the class default is 0.07).
    * ``variant = "out"``: L_out, the loss the reference code implements.
    * ``proj_hidden_dim = 512``, ``proj_dim = 128``: as :class:`~pairsmith.methods.simclr.SimCLR`
      (the reference's 2048 hidden units are a ResNet-50's width).
    * The reference scales the loss by ``tau / base_tau``; with ``base_tau = tau`` (the
      README) that factor is 1, and it is left out.

    Args:
        backbone: encoder with ``out_dim``; (B, C, H, W) -> (B, out_dim).
        temperature: tau > 0.
        variant: ``"out"`` (mean of log terms, L_out) or ``"in"`` (log of the mean, L_in).
        label_key: the key holding the class label.
        proj_hidden_dim: hidden size of the projection head.
        proj_dim: projection size.
        num_views: views per image, >= 2.
        chunk_size: row chunking of the loss.

    Raises:
        ValueError: for a bad option (the message names it).
    """

    def __init__(
        self,
        backbone: nn.Module,
        temperature: float = 0.1,
        variant: Literal["out", "in"] = "out",
        label_key: str = "label",
        proj_hidden_dim: int = 512,
        proj_dim: int = 128,
        num_views: int = 2,
        chunk_size: ChunkSize = "auto",
    ) -> None:
        check_choice("variant", variant, ("out", "in"))
        super().__init__(
            backbone,
            temperature=temperature,
            proj_hidden_dim=proj_hidden_dim,
            proj_dim=proj_dim,
            num_views=num_views,
            aggregate="mean_log" if variant == "out" else "log_mean",
            chunk_size=chunk_size,
        )
        if not isinstance(label_key, str) or not label_key:
            raise ValueError(f"label_key must be a non-empty string, got {label_key!r}")
        self.variant = variant
        self.set_curators([SupConPositives(key=label_key, keep_instance=True)])
