"""pairsmith: curate the positive and negative pairs of contrastive learning.

The core imports torch and numpy only. See README.md for the map of the package.
"""

from pairsmith.core.pairs import Pairs, Segment
from pairsmith.core.weights import (
    Complement,
    Dense,
    InSegment,
    Mask,
    SameKey,
    TopK,
    Union,
    Weight,
    Without,
)
from pairsmith.functional.infonce import InfoNCEOutput, info_nce, nt_xent
from pairsmith.losses.infonce import InfoNCELoss, MoCoLoss, NTXentLoss, SupConLoss
from pairsmith.sources.queue import Queue

__version__ = "0.1.0"

__all__ = [
    "Complement",
    "Dense",
    "InSegment",
    "InfoNCELoss",
    "InfoNCEOutput",
    "Mask",
    "MoCoLoss",
    "NTXentLoss",
    "Pairs",
    "Queue",
    "SameKey",
    "Segment",
    "SupConLoss",
    "TopK",
    "Union",
    "Weight",
    "Without",
    "info_nce",
    "nt_xent",
]
