"""MoCo v2: queries against a momentum key and a queue of past keys (Chen et al. 2020).

Single-instance positives (survey 3.1) with a memory of negatives. Following
``facebookresearch/moco`` (``moco/builder.py``) with the v2 flags (``--mlp --moco-t 0.2``):

1. ``q = normalize(f_q(x_q))`` (backbone + MLP head);
2. without gradient: **first** the EMA update ``theta_k <- m theta_k + (1 - m) theta_q``,
   **then** ``k = normalize(f_k(x_k))`` with shuffled BatchNorm;
3. the query's positive is its own key, its negatives the queue only
   (``negatives = InSegment("queue")``): logits ``[B, 1 + K]``, loss = cross-entropy;
4. the keys, gathered over ranks without gradient, are enqueued (FIFO, ``K % B == 0``).

In :class:`~pairsmith.core.pairs.Pairs` terms: anchors are the queries; the segments are
``batch`` (this step's keys, carrying the batch keys) and ``queue``
(:class:`~pairsmith.sources.queue.Queue`, which stores ``instance`` and ``label`` with every
key so label-aware curators and diagnostics work on it); ``positives`` is
``SameKey("instance")`` restricted to the batch segment, so an old copy of the same image
in the queue stays a negative exactly as in the reference.

Shuffle BN on one device: the reference shuffles the key batch across GPUs so that a query
and its key never share BatchNorm statistics. In a single process the same effect is
obtained as in the official CIFAR demo (SplitBatchNorm): queries are encoded in
``bn_splits`` contiguous groups and keys in ``bn_splits`` groups of a random permutation,
each group with its own statistics. Under DDP the splitting happens on every rank (no
cross-rank shuffle).

References:
    1. He, Fan, Wu, Xie, Girshick. "Momentum Contrast for Unsupervised Visual
       Representation Learning" (MoCo). CVPR 2020.
    2. Chen, Fan, Girshick, He. "Improved Baselines with Momentum Contrastive Learning"
       (MoCo v2). arXiv:2003.04297, 2020.
    3. Survey §3.1; shared/reference/methods.md §2.2.

Examples:
    >>> import torch
    >>> from pairsmith.models import SmallCNN
    >>> method = MoCoV2(SmallCNN(1, (8, 16)), queue_size=32, proj_hidden_dim=32, proj_dim=16)
    >>> views = [torch.randn(8, 1, 28, 28), torch.randn(8, 1, 28, 28)]
    >>> out = method.training_step(views, {"instance": torch.arange(8)}, step=0, epoch=0)
    >>> out.pairs.num_candidates  # 8 keys + 32 queue slots
    40
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pairsmith.core.distributed import gather_segment, scale_loss_for_ddp, world_size
from pairsmith.core.pairs import Pairs, Segment
from pairsmith.core.registry import register_method
from pairsmith.core.weights import InSegment, SameKey, Without
from pairsmith.functional.infonce import InfoNCEOutput
from pairsmith.losses.infonce import InfoNCELoss, MoCoLoss
from pairsmith.methods.base import Method, StepOutput
from pairsmith.methods.simclr import (
    ChunkSize,
    Curator,
    backbone_dim,
    check_chunk_size,
    check_int,
    check_number,
    check_views,
    info_logs,
    step_keys,
)
from pairsmith.models.heads import ProjectionHead
from pairsmith.sources.queue import Queue


def split_encode(net: nn.Module, x: Tensor, splits: int) -> Tensor:
    """Encode ``x`` in ``splits`` groups, each with its own BatchNorm statistics.

    Args:
        net: the encoder (backbone + head).
        x: Shape: (B, C, H, W), ``B`` divisible by ``splits``.
        splits: number of groups (1: one pass).

    Returns:
        L2-normalised embeddings. Shape: (B, D).
    """
    if splits == 1:
        return F.normalize(net(x), dim=1)
    return F.normalize(torch.cat([net(c) for c in x.chunk(splits)], dim=0), dim=1)


@register_method("methods.mocov2", taxonomy=("positives", "single_instance"))
class MoCoV2(Method):
    """MoCo v2 (He et al. 2020, Chen et al. 2020; survey 3.1): momentum keys and a queue.

    Defaults, and how they are scaled for small data (28x28 images, a 10k-image training
    set, batch 256, ~600 steps) from the reference (shared/reference/methods.md §2.2):

    * ``temperature = 0.2``: the v2 recipe (the builder's default 0.07 is v1's).
    * ``momentum = 0.99`` (reference 0.999): with ~600 steps instead of ~1M, 0.999 would
      leave the key encoder near its random initialisation for most of training (its
      time constant is 1000 steps); 0.99 (100 steps) is the value of MoCo's official
      CIFAR demo.
    * ``queue_size = 4096`` (reference 65536 for 1.28M images): 16 batches of 256, 41 % of
      the 10k training set, so the queue never holds a second copy of a key from the same
      epoch and the oldest keys are at most 16 steps stale; a multiple of the batch size.
    * ``proj_hidden_dim = 512`` (reference 2048, the ResNet-50 width): 2x the 256-d
      features of the small CNN; ``proj_dim = 128`` unchanged. The head is v2's
      Linear-ReLU-Linear without BatchNorm.
    * ``bn_splits = 4``: shuffle BN emulated with 4 groups of 64 at batch 256 (the
      reference has 8 GPUs of 32; the CIFAR demo uses 8 splits of a batch of 512).
    * ``symmetric = False`` as in v2; ``True`` adds the loss of the swapped views (MoCo v3,
      CIFAR demo), averages the two and enqueues both key sets (``K % 2B == 0``).

    Args:
        backbone: encoder with ``out_dim``; (B, C, H, W) -> (B, out_dim). Copied for the
            momentum encoder.
        temperature: tau > 0.
        momentum: EMA coefficient m in [0, 1] (1: frozen key encoder; 0: a copy).
        queue_size: K > 0, a multiple of the batch size (checked at each step).
        proj_hidden_dim: hidden size of the MLP head.
        proj_dim: embedding size (queue width).
        symmetric: add the loss with the views swapped.
        bn_splits: BatchNorm groups of the shuffle-BN emulation (1: off); must divide B.
        queue_keys: keys stored in the queue with each embedding.
        chunk_size: row chunking of the loss.

    Raises:
        ValueError: for a bad option (the message names it).
    """

    def __init__(
        self,
        backbone: nn.Module,
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
        super().__init__(backbone)
        in_dim = backbone_dim(backbone)
        self.temperature = check_number("temperature", temperature, 0.0, low_inclusive=False)
        self.momentum = check_number("momentum", momentum, 0.0, 1.0)
        self.queue_size = check_int("queue_size", queue_size)
        check_int("proj_hidden_dim", proj_hidden_dim)
        check_int("proj_dim", proj_dim)
        if not isinstance(symmetric, bool):
            raise ValueError(f"symmetric must be a bool, got {symmetric!r}")
        self.symmetric = symmetric
        self.bn_splits = check_int("bn_splits", bn_splits)
        keys = tuple(queue_keys)
        if "instance" not in keys or not all(isinstance(k, str) and k for k in keys):
            raise ValueError(f"queue_keys must be key names including 'instance', got {keys!r}")
        self.chunk_size = check_chunk_size(chunk_size)
        # MoCo v2's head: Linear(2048)-ReLU-Linear(128), no BatchNorm.
        self.projector = ProjectionHead(in_dim, proj_hidden_dim, proj_dim, layers=2, bn=False)
        self.momentum_backbone = copy.deepcopy(backbone)
        self.momentum_projector = copy.deepcopy(self.projector)
        for p in self.momentum_parameters():
            p.requires_grad_(False)
        # MoCo's code starts from random unit vectors (keys -1: unknown).
        self.queue = Queue(self.queue_size, proj_dim, keys=keys, init="random")
        self.curators: list[Curator] = []
        self.curator_modules = nn.ModuleList()
        self.last_output: InfoNCEOutput | None = None
        self.criterion: InfoNCELoss = MoCoLoss(self.temperature, chunk_size=self.chunk_size)

    # ------------------------------------------------------------------ encoders
    def momentum_parameters(self) -> list[Tensor]:
        """Parameters of the key encoder (backbone then head)."""
        return [*self.momentum_backbone.parameters(), *self.momentum_projector.parameters()]

    def online_parameters(self) -> list[Tensor]:
        """Parameters of the query encoder, in the order of :meth:`momentum_parameters`."""
        return [*self.backbone.parameters(), *self.projector.parameters()]

    @torch.no_grad()
    def momentum_update(self) -> None:
        """``theta_k <- m theta_k + (1 - m) theta_q`` (parameters only, as in MoCo)."""
        k = self.momentum_parameters()
        q = self.online_parameters()
        torch._foreach_mul_(k, self.momentum)
        torch._foreach_add_(k, [p.detach() for p in q], alpha=1.0 - self.momentum)

    def _query(self, x: Tensor) -> Tensor:
        return split_encode(nn.Sequential(self.backbone, self.projector), x, self.bn_splits)

    @torch.no_grad()
    def _key(self, x: Tensor) -> Tensor:
        net = nn.Sequential(self.momentum_backbone, self.momentum_projector)
        if self.bn_splits == 1:
            return split_encode(net, x, 1)
        perm = torch.randperm(x.shape[0], device=x.device)
        k = split_encode(net, x[perm], self.bn_splits)
        return k[torch.argsort(perm)]

    # ------------------------------------------------------------------ pairs
    def set_curators(self, curators: Sequence[Curator]) -> None:
        """Install curators applied to the query/key/queue pairs (modules become children)."""
        self.curators = list(curators)
        self.curator_modules = nn.ModuleList([c for c in curators if isinstance(c, nn.Module)])

    def curators_for(self, step: int, epoch: int) -> Sequence[Curator]:
        """The curators to apply at this step (override for warm-ups)."""
        return self.curators

    def queue_keys(
        self, keys: Mapping[str, Tensor], n: int, device: torch.device
    ) -> dict[str, Tensor]:
        """The batch keys restricted to the queue's key names (-1 where missing)."""
        return {
            k: keys[k] if k in keys else torch.full((n,), -1, dtype=torch.long, device=device)
            for k in self.queue.key_names
        }

    def make_pairs(self, q: Tensor, k: Tensor, keys: Mapping[str, Tensor], queue: Segment) -> Pairs:
        """Queries against their keys (positives) and the queue (negatives).

        Args:
            q: queries. Shape: (B, D).
            k: keys of the other view. Shape: (B, D).
            keys: batch keys restricted to the queue's names. Shape: (B,) each.
            queue: the queue segment (a snapshot: the queue is updated after the loss).

        Returns:
            Pairs with ``B`` anchors and ``B + K`` candidates, no ``self_index``.
        """
        return Pairs(
            anchors=q,
            anchor_keys=keys,
            segments=(Segment("batch", k, keys), queue),
            positives=Without(SameKey("instance"), InSegment("queue")),
            negatives=InSegment("queue"),
        )

    def curate(self, pairs: Pairs, step: int, epoch: int) -> Pairs:
        """Apply :meth:`curators_for` in order."""
        for c in self.curators_for(step, epoch):
            pairs = c(pairs)
        return pairs

    def _loss(self, pairs: Pairs) -> tuple[Tensor, InfoNCEOutput]:
        self.criterion(pairs)
        out = self.criterion.last_output
        assert out is not None
        return scale_loss_for_ddp(out), out

    # ------------------------------------------------------------------ step
    def training_step(
        self, views: Sequence[Tensor], keys: Mapping[str, Tensor], step: int, epoch: int
    ) -> StepOutput:
        """One MoCo step: queries, EMA then keys, loss against key + queue, enqueue.

        The EMA update and the enqueue happen only in training mode (``self.training``).

        Args:
            views: two tensors (query view, key view). Shape: (B, C, H, W) each.
            keys: key name to long tensor. Shape: (B,). ``instance`` (default ``arange``),
                ``label`` (-1 unknown) are stored in the queue.
            step: global step (0-based).
            epoch: epoch (0-based).

        Returns:
            :class:`StepOutput`; ``pairs`` are the (first direction's) curated pairs with
            a snapshot of the queue taken before the enqueue; ``embeddings`` the queries
            of both views (symmetric) or the query and the key (otherwise).

        Raises:
            ValueError: if the batch size does not divide by ``bn_splits`` or the pushed
                keys per step do not divide ``queue_size``.
        """
        check_views(views, 2)
        x1, x2 = views[0], views[1]
        n = x1.shape[0]
        if n % self.bn_splits:
            raise ValueError(f"bn_splits ({self.bn_splits}) must divide the batch size ({n})")
        pushed = n * world_size() * (2 if self.symmetric else 1)
        if self.training and self.queue_size % pushed:
            raise ValueError(
                f"queue_size ({self.queue_size}) must be a multiple of the keys pushed per "
                f"step ({pushed}: the global batch size"
                f"{' x 2 (symmetric)' if self.symmetric else ''})"
            )
        device = x1.device
        k_all = step_keys(keys, n, device)
        qkeys = self.queue_keys(k_all, n, device)

        q1 = self._query(x1)
        q2 = self._query(x2) if self.symmetric else None
        with torch.no_grad():
            if self.training:
                self.momentum_update()  # reference order: EMA first, then the keys
            k2 = self._key(x2)
            k1 = self._key(x1) if self.symmetric else None
        # A snapshot: the enqueue below writes the queue in place.
        seg = self.queue.segment(dtype=q1.dtype)
        snapshot = {k: v.clone() for k, v in seg.keys.items()}
        queue = Segment("queue", seg.embeddings.clone(), snapshot)

        pairs = self.curate(self.make_pairs(q1, k2, qkeys, queue), step, epoch)
        loss, out = self._loss(pairs)
        logs = {"loss_12": float(loss.detach())}
        if self.symmetric:
            assert q2 is not None and k1 is not None
            pairs21 = self.curate(self.make_pairs(q2, k1, qkeys, queue), step, epoch)
            loss21, _ = self._loss(pairs21)
            logs["loss_21"] = float(loss21.detach())
            loss = 0.5 * (loss + loss21)
        self.last_output = out

        if self.training:
            new = k2 if k1 is None else torch.cat([k1, k2], dim=0)
            new_keys = qkeys if k1 is None else {k: v.repeat(2) for k, v in qkeys.items()}
            g = gather_segment("batch", new, new_keys)
            self.queue.push(g.embeddings, g.keys)

        logs.update({"loss": float(loss.detach()), **info_logs(pairs.info)})
        second = q2 if q2 is not None else k2
        return StepOutput(
            loss=loss,
            pairs=pairs.detach(),
            embeddings=(q1.detach(), second.detach()),
            logs=logs,
        )
