"""Thin module around :func:`pairsmith.functional.info_nce`.

NT-Xent, SupCon (L_out and L_in) and MoCo's queue loss are configurations of the same
:class:`InfoNCELoss`, not separate code; see the factory functions below.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

from torch import Tensor, nn

from pairsmith.core.pairs import Pairs
from pairsmith.core.registry import register_loss
from pairsmith.functional.infonce import (
    Aggregate,
    InfoNCEOutput,
    PositivesInDenominator,
    info_nce,
)

Curator = Callable[[Pairs], Pairs]


@register_loss("contrastive.info_nce", taxonomy=("positives", "single_instance"))
class InfoNCELoss(nn.Module):
    """InfoNCE over :class:`Pairs`, with optional curators applied first.

    Args:
        temperature: tau > 0.
        positives_in_denominator: ``"all"``, ``"self"`` or ``"none"``.
        aggregate: ``"mean_log"`` (SupCon L_out) or ``"log_mean"`` (SupCon L_in).
        chunk_size: rows per block (``"auto"``, an int, or ``None`` for one block).
        curators: ``Pairs -> Pairs`` callables applied in order before the loss.

    Example:
        >>> loss_fn = InfoNCELoss(temperature=0.2)
        >>> loss = loss_fn(Pairs.from_views([z1, z2], {"instance": idx}))  # doctest: +SKIP
    """

    def __init__(
        self,
        temperature: float = 0.1,
        positives_in_denominator: PositivesInDenominator = "all",
        aggregate: Aggregate = "mean_log",
        chunk_size: int | Literal["auto"] | None = "auto",
        curators: Sequence[Curator] = (),
    ) -> None:
        super().__init__()
        if not (isinstance(temperature, (int, float)) and temperature > 0):
            raise ValueError(f"temperature must be a positive number, got {temperature!r}")
        self.temperature = float(temperature)
        self.positives_in_denominator = positives_in_denominator
        self.aggregate = aggregate
        self.chunk_size = chunk_size
        self.curators = list(curators)
        # Curators that are modules (with state or parameters) are registered as children.
        self.curator_modules = nn.ModuleList([c for c in curators if isinstance(c, nn.Module)])
        self.last_output: InfoNCEOutput | None = None

    def curate(self, pairs: Pairs) -> Pairs:
        """Apply the curators in order."""
        for c in self.curators:
            pairs = c(pairs)
        return pairs

    def forward(self, pairs: Pairs) -> Tensor:
        """Curate then return the mean loss over valid anchors (a scalar)."""
        out = info_nce(
            self.curate(pairs),
            self.temperature,
            self.positives_in_denominator,
            self.aggregate,
            self.chunk_size,
        )
        self.last_output = out
        return out.loss

    def extra_repr(self) -> str:
        """The loss configuration, shown in ``print(module)``."""
        return (
            f"temperature={self.temperature}, positives_in_denominator="
            f"{self.positives_in_denominator!r}, aggregate={self.aggregate!r}"
        )


def NTXentLoss(temperature: float = 0.5, **kw: object) -> InfoNCELoss:  # noqa: N802
    """NT-Xent (SimCLR): instance positives, every other view a negative.

    Use with ``Pairs.from_views([z1, z2], {"instance": idx})``.
    """
    return InfoNCELoss(temperature, "all", "mean_log", **kw)  # type: ignore[arg-type]


def SupConLoss(  # noqa: N802
    temperature: float = 0.1, variant: Literal["out", "in"] = "out", **kw: object
) -> InfoNCELoss:
    """SupCon (Khosla et al. 2020): L_out (default) or L_in aggregation.

    Use with positives ``SameKey("label")`` (see ``positives.supervised``).
    """
    if variant not in ("out", "in"):
        raise ValueError(f"variant must be 'out' or 'in', got {variant!r}")
    agg: Aggregate = "mean_log" if variant == "out" else "log_mean"
    return InfoNCELoss(temperature, "all", agg, **kw)  # type: ignore[arg-type]


def MoCoLoss(temperature: float = 0.2, **kw: object) -> InfoNCELoss:  # noqa: N802
    """MoCo's queue loss: query vs its key (positive) and the queue (negatives).

    Anchors are the queries; segments are ``batch`` (the keys, same instance) and
    ``queue``; no ``self_index``.
    """
    return InfoNCELoss(temperature, "all", "mean_log", **kw)  # type: ignore[arg-type]
