"""Training recipes named after their papers, each registered as ``methods.<name>``.

Every recipe is a :class:`~pairsmith.methods.base.Method`: it owns its networks, builds
:class:`~pairsmith.core.pairs.Pairs` from the views of a batch, applies its curators and
returns a :class:`~pairsmith.methods.base.StepOutput`. Create one by name with
:func:`pairsmith.core.registry.create_method` (``create_method("methods.simclr",
backbone=net)``). Every module is imported here so registration cannot silently fail.
"""

from pairsmith.methods.base import Method, StepOutput
from pairsmith.methods.mocov2 import MoCoV2
from pairsmith.methods.mocov2_mochi import MoCoV2MoCHi
from pairsmith.methods.nnclr import NNCLR
from pairsmith.methods.simclr import ContrastiveMethod, SimCLR
from pairsmith.methods.simclr_dcl import SimCLRDCL
from pairsmith.methods.simclr_fnc import SimCLRFNC
from pairsmith.methods.simclr_hcl import SimCLRHCL
from pairsmith.methods.supcon import SupCon

__all__ = [
    "ContrastiveMethod",
    "Method",
    "MoCoV2",
    "MoCoV2MoCHi",
    "NNCLR",
    "SimCLR",
    "SimCLRDCL",
    "SimCLRFNC",
    "SimCLRHCL",
    "StepOutput",
    "SupCon",
]
