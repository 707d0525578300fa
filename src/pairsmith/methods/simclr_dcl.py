"""SimCLR + DCL: NT-Xent with the debiased negative mass (Chuang et al., NeurIPS 2020).

False-negative removal by debiasing (survey 4.2): without labels, the "negatives" of an
anchor contain same-class samples with prior ``tau_plus``; the
:class:`~pairsmith.negatives.false_negative_removal.dcl.DebiasedNegatives` curator replaces
the negative mass of the denominator by the debiased estimator (clamped at
``N exp(-1/tau)``). ``tau_plus = 0`` is SimCLR exactly.

References:
    1. Chuang, Robinson, Lin, Torralba, Jegelka. "Debiased Contrastive Learning".
       NeurIPS 2020. Code: chingyaoc/DCL (commit c2a3b96).
    2. Survey §4.2; shared/reference/methods.md §9.3.

Examples:
    >>> import torch
    >>> from pairsmith.models import SmallCNN
    >>> method = SimCLRDCL(SmallCNN(1, (8, 16)), proj_hidden_dim=32, proj_dim=16)
    >>> views = [torch.randn(4, 1, 28, 28), torch.randn(4, 1, 28, 28)]
    >>> out = method.training_step(views, {"instance": torch.arange(4)}, step=0, epoch=0)
    >>> out.pairs.estimator is not None
    True
"""

from __future__ import annotations

from torch import nn

from pairsmith.core.registry import register_method
from pairsmith.methods.simclr import ChunkSize, ContrastiveMethod
from pairsmith.negatives.false_negative_removal.dcl import DebiasedNegatives


@register_method("methods.simclr_dcl", taxonomy=("negatives", "false_negative_removal"))
class SimCLRDCL(ContrastiveMethod):
    """SimCLR + DCL (Chuang et al. 2020; survey 4.2): debiased negative mass.

    Defaults from shared/reference/methods.md §9.3 (the paper's code):

    * ``temperature = 0.5`` and ``tau_plus = 0.1``: the paper's (a class prior of 0.1 is
      also the true one for the 10 balanced Fashion-MNIST classes).
    * ``positives_in_denominator = "self"``: the reference's ``pos / (pos + Ng)``.
    * ``proj_hidden_dim = 512``, ``proj_dim = 128``: as SimCLR (the reference's feature
      dimension is 128).

    Args:
        backbone: encoder with ``out_dim``; (B, C, H, W) -> (B, out_dim).
        temperature: tau > 0.
        tau_plus: class prior in [0, 1).
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
        tau_plus: float = 0.1,
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
        self.dcl = DebiasedNegatives(tau_plus=tau_plus)
        self.set_curators([self.dcl])
