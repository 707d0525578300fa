"""SimCLR + HCL: hardness-weighted, debiased negatives (Robinson et al., ICLR 2021).

Hard negative selection (survey 4.1): the
:class:`~pairsmith.negatives.hard_negative_selection.hcl.HardNegatives` curator replaces
the negative mass by an importance-weighted, debiased estimate (weights
``exp(beta * s)``), so negatives closer to the anchor count more. ``beta = 0`` is DCL,
``beta = 0`` and ``tau_plus = 0`` is SimCLR exactly.

References:
    1. Robinson, Chuang, Sra, Jegelka. "Contrastive Learning with Hard Negative Samples".
       ICLR 2021. Code: joshr17/HCL (``image/main.py``).
    2. Survey §4.1; shared/reference/methods.md §8.3.

Examples:
    >>> import torch
    >>> from pairsmith.models import SmallCNN
    >>> method = SimCLRHCL(SmallCNN(1, (8, 16)), proj_hidden_dim=32, proj_dim=16)
    >>> views = [torch.randn(4, 1, 28, 28), torch.randn(4, 1, 28, 28)]
    >>> out = method.training_step(views, {"instance": torch.arange(4)}, step=0, epoch=0)
    >>> bool(out.loss.isfinite())
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from torch import nn

from pairsmith.core.registry import register_method
from pairsmith.methods.simclr import ChunkSize, ContrastiveMethod, Curator, check_int
from pairsmith.negatives.hard_negative_selection.hcl import HardNegatives


@register_method("methods.simclr_hcl", taxonomy=("negatives", "hard_negative_selection"))
class SimCLRHCL(ContrastiveMethod):
    """SimCLR + HCL (Robinson et al. 2021; survey 4.1): hard, debiased negatives.

    Defaults from shared/reference/methods.md §8.3 (the paper's code):

    * ``temperature = 0.5``, ``beta = 1.0``, ``tau_plus = 0.1``: the reference's best
      STL-10 run (0.1 is also the true class prior of balanced 10-class data).
    * ``positives_in_denominator = "self"``: the reference's ``pos / (pos + Ng)``.
    * ``anneal = None``; ``"down"`` lowers beta to 0 over ``epochs`` epochs (the
      reference's ``--anneal down``), which then must be given.
    * ``proj_hidden_dim = 512``, ``proj_dim = 128``: as SimCLR.

    Args:
        backbone: encoder with ``out_dim``; (B, C, H, W) -> (B, out_dim).
        temperature: tau > 0.
        beta: hardness concentration >= 0.
        tau_plus: class prior in [0, 1).
        anneal: ``None`` or ``"down"``.
        epochs: total epochs, needed by ``anneal="down"``.
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
        temperature: float = 0.5,
        beta: float = 1.0,
        tau_plus: float = 0.1,
        anneal: Literal["down"] | None = None,
        epochs: int | None = None,
        proj_hidden_dim: int = 512,
        proj_dim: int = 128,
        num_views: int = 2,
        chunk_size: ChunkSize = "auto",
    ) -> None:
        super().__init__(
            backbone,
            temperature=temperature,
            proj_hidden_dim=proj_hidden_dim,
            proj_dim=proj_dim,
            num_views=num_views,
            positives_in_denominator="self",
            chunk_size=chunk_size,
        )
        self.hcl = HardNegatives(beta=beta, tau_plus=tau_plus, anneal=anneal)
        if anneal is not None:
            if epochs is None:
                raise ValueError("epochs must be given (an int >= 1) when anneal is set")
            check_int("epochs", epochs)
        self.epochs = epochs
        self.set_curators([self.hcl])

    def curators_for(self, step: int, epoch: int) -> Sequence[Curator]:
        """The HCL curator with this epoch's beta (constant unless annealed)."""
        if self.epochs is None:
            return self.curators
        return [self.hcl.for_epoch(epoch, self.epochs)]
