"""MoCo v2 + MoCHi: synthetic hard negatives mixed from the queue (Kalantidis et al. 2020).

Hard negative selection (survey 4.1) on top of :class:`~pairsmith.methods.mocov2.MoCoV2`:
after a warm-up, the :class:`~pairsmith.negatives.hard_negative_selection.mochi.MoCHi`
curator ranks each query's ``N`` hardest queue negatives and appends, to that query's
logits only, ``s`` mixes of two hard negatives and ``s'`` mixes of the query with a hard
negative (per-anchor candidates, constants, never enqueued). ``s = s' = 0`` is MoCo v2.

References:
    1. Kalantidis, Sariyildiz, Pion, Weinzaepfel, Larlus. "Hard Negative Mixing for
       Contrastive Learning" (MoCHi). NeurIPS 2020.
    2. Survey §4.1; shared/reference/methods.md §8.1.

Examples:
    >>> import torch
    >>> from pairsmith.models import SmallCNN
    >>> method = MoCoV2MoCHi(
    ...     SmallCNN(1, (8, 16)), queue_size=32, proj_hidden_dim=32, proj_dim=16,
    ...     num_hard=8, num_mix=4, num_query_mix=2, warmup_epochs=0,
    ... )
    >>> views = [torch.randn(8, 1, 28, 28), torch.randn(8, 1, 28, 28)]
    >>> out = method.training_step(views, {"instance": torch.arange(8)}, step=0, epoch=0)
    >>> tuple(out.pairs.per_anchor.shape)  # 4 + 2 mixes per query
    (8, 6, 16)
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from pairsmith.core.pairs import Pairs
from pairsmith.core.registry import register_method
from pairsmith.methods.mocov2 import MoCoV2
from pairsmith.methods.simclr import ChunkSize, check_int, check_number
from pairsmith.negatives.hard_negative_selection.mochi import MoCHi


@register_method("methods.mocov2_mochi", taxonomy=("negatives", "hard_negative_selection"))
class MoCoV2MoCHi(MoCoV2):
    """MoCo v2 + MoCHi(N, s, s') (Kalantidis et al. 2020; survey 4.1).

    MoCo v2's options and small-data defaults are those of
    :class:`~pairsmith.methods.mocov2.MoCoV2` (K = 4096, m = 0.99, tau = 0.2). MoCHi's,
    scaled from the paper's ImageNet-100 MoCHi(1024, 1024, 128) with K = 16384
    (shared/reference/methods.md §8.1, low confidence):

    * ``num_hard = 256``: N/K = 1/16 as in the paper (1024 of 16384).
    * ``num_mix = 256`` (s = N as in the paper) and ``num_query_mix = 32`` (s' = s/8 as in
      the paper): 288 extra logits per query, 7 % of the 4352 real columns.
    * ``query_beta_max = 0.5``: the query's share of a type-2 mix stays below one half.
    * ``warmup_epochs = 1``: mixing starts after the first epoch (SynCo's port waits 10
      of 200 epochs, 5 %; 1 of 15 epochs here). Early on, the "hardest" negatives of a
      random network carry no information.

    Args:
        backbone: encoder with ``out_dim``; (B, C, H, W) -> (B, out_dim).
        num_hard: N > 0, hard negatives ranked per query.
        num_mix: s >= 0, mixes of two hard negatives per query.
        num_query_mix: s' >= 0, mixes of the query and a hard negative per query.
        query_beta_max: the query's largest share in a type-2 mix, in (0, 0.5].
        warmup_epochs: epochs of plain MoCo v2 before mixing (>= 0).
        seed: seed of MoCHi's own generator (``None``: torch's global RNG).
        temperature: tau > 0.
        momentum: EMA coefficient in [0, 1].
        queue_size: K, a multiple of the keys pushed per step.
        proj_hidden_dim: hidden size of the MLP head.
        proj_dim: embedding size.
        symmetric: add the loss with the views swapped.
        bn_splits: BatchNorm groups of the shuffle-BN emulation.
        queue_keys: keys stored in the queue.
        chunk_size: row chunking of the loss.

    Raises:
        ValueError: for a bad option (the message names it).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_hard: int = 256,
        num_mix: int = 256,
        num_query_mix: int = 32,
        query_beta_max: float = 0.5,
        warmup_epochs: float = 1,
        seed: int | None = None,
        temperature: float = 0.2,
        momentum: float = 0.99,
        queue_size: int = 4096,
        proj_hidden_dim: int = 512,
        proj_dim: int = 128,
        symmetric: bool = False,
        bn_splits: int = 4,
        queue_keys: Sequence[str] = ("instance", "label"),
        chunk_size: ChunkSize = "auto",
    ) -> None:
        super().__init__(
            backbone,
            temperature=temperature,
            momentum=momentum,
            queue_size=queue_size,
            proj_hidden_dim=proj_hidden_dim,
            proj_dim=proj_dim,
            symmetric=symmetric,
            bn_splits=bn_splits,
            queue_keys=queue_keys,
            chunk_size=chunk_size,
        )
        check_int("num_hard", num_hard)
        check_int("num_mix", num_mix, low=0)
        check_int("num_query_mix", num_query_mix, low=0)
        self.warmup_epochs = check_number("warmup_epochs", warmup_epochs, 0.0)
        # The warm-up is counted in epochs here, so the curator's own (in steps) is off.
        self.mochi = MoCHi(
            num_hard=num_hard,
            num_mix=num_mix,
            num_query_mix=num_query_mix,
            query_beta_max=query_beta_max,
            warmup_steps=0,
            segment="queue",
            seed=seed,
        )
        self.set_curators([self.mochi])

    def curate(self, pairs: Pairs, step: int, epoch: int) -> Pairs:
        """Plain MoCo v2 pairs during the warm-up, then the MoCHi mixes."""
        if epoch < self.warmup_epochs:
            return pairs
        return self.mochi(pairs, step=step)
