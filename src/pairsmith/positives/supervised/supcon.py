"""SupCon positives: every sample with the anchor's label is a positive.

Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020; survey section 3.2.3
(multi-instance positives, supervised). Reference code: ``HobbitLong/SupContrast``,
``losses.py::SupConLoss``.

The curator only sets the positive rule; the loss is the InfoNCE family of
:mod:`pairsmith.functional.infonce` with every positive in the denominator:
``SupConLoss(variant="out")`` (``aggregate="mean_log"``, the paper's L_out, the one the
reference code implements) or ``SupConLoss(variant="in")`` (``"log_mean"``, L_in).

Because keys travel with every segment (batch, gathered rows, queue), the same rule
makes same-label queue entries positives too (SupCon with a memory, as in the
reference repo's "MoCo trick" ImageNet results).
"""

from __future__ import annotations

from pairsmith.core.pairs import Pairs
from pairsmith.core.registry import register_curator
from pairsmith.core.weights import SameKey, Union, Weight


@register_curator("positives.supervised.supcon", taxonomy=("positives", "supervised"))
class SupConPositives:
    """SupCon positives (Khosla et al. 2020; survey 3.2.3): same label => positive.

    Sets ``positives = SameKey(key)``, or ``Union(SameKey(key), SameKey("instance"))``
    when ``keep_instance`` is True. The negatives are left as they are (by default
    ``Complement()``, i.e. every other column, which follows the new positives).

    Decision point (code vs paper): in the reference code an anchor's other views are
    positives only because they share its label; an unlabeled row (label -1, which
    :class:`~pairsmith.core.weights.SameKey` never matches) would have no positive and
    its loss would divide by zero (the code does not guard against it). With
    ``keep_instance=True`` (the default) such a row keeps its augmented views as
    positives (SimCLR for unlabeled rows, SupCon for labeled ones); for fully labeled
    batches the union changes nothing, because views of one instance share its label.
    With ``keep_instance=False`` unlabeled rows have no positive and the loss marks them
    invalid (loss 0, ``valid`` False) instead of producing NaN.

    The anchor's own column is removed by the loss (``Pairs.self_index``), so the rule
    matches the reference mask ``[y_i == y_j]`` with its diagonal removed.

    Args:
        key: name of the label key carried by the anchors and every segment
            (``[B]`` and ``[m]`` long tensors, -1 = unlabeled).
        keep_instance: also keep ``SameKey("instance")`` positives.

    Raises:
        ValueError: if ``key`` is not a non-empty string or ``keep_instance`` not a bool.

    Example:
        >>> from pairsmith.losses.infonce import SupConLoss
        >>> loss_fn = SupConLoss(0.1, curators=[SupConPositives("label")])  # doctest: +SKIP
        >>> loss = loss_fn(Pairs.from_views([z1, z2], {"instance": idx, "label": y}))
        ... # doctest: +SKIP
    """

    def __init__(self, key: str = "label", keep_instance: bool = True) -> None:
        """Store the rule (see the class docstring)."""
        if not isinstance(key, str) or not key:
            raise ValueError(f"key must be a non-empty string, got {key!r}")
        if not isinstance(keep_instance, bool):
            raise ValueError(f"keep_instance must be a bool, got {keep_instance!r}")
        self.key = key
        self.keep_instance = keep_instance

    def weight(self) -> Weight:
        """The positive rule this curator installs."""
        label = SameKey(self.key)
        if self.keep_instance and self.key != "instance":
            return Union(label, SameKey("instance"))
        return label

    def __call__(self, pairs: Pairs) -> Pairs:
        """Return a copy of ``pairs`` whose positives are the same-label columns.

        Args:
            pairs: anchors ``[B, D]`` and candidates ``[M, D]`` carrying ``key`` (and
                ``"instance"`` when ``keep_instance``) in their keys.

        Returns:
            A new :class:`Pairs`; the input is untouched.

        Raises:
            ValueError: if the anchors do not carry the needed keys.
        """
        needed = [self.key] + (["instance"] if self.keep_instance else [])
        for k in needed:
            if k not in pairs.anchor_keys:
                raise ValueError(
                    f"SupConPositives needs key {k!r} on the anchors and every segment; "
                    f"the anchors carry {sorted(pairs.anchor_keys)}"
                    + (" (or pass keep_instance=False)" if k == "instance" else "")
                )
        return pairs.replace(positives=self.weight())

    def __repr__(self) -> str:
        return f"SupConPositives(key={self.key!r}, keep_instance={self.keep_instance})"
