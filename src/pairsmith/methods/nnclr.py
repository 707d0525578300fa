"""NNCLR: the nearest neighbour in a support queue is the positive (Dwibedi et al. 2021).

Embedding-based multi-instance positives (survey 3.2.1). Following solo-learn
(``solo/methods/nnclr.py``, ``solo/losses/nnclr.py``): projections ``z = g(f(x))``,
predictions ``p = h(z)``, a FIFO support queue ``Q`` of view-1 projections, and::

    L = 1/2 [CE(NN(z1) @ p2.T / tau, arange(B)) + CE(NN(z2) @ p1.T / tau, arange(B))]

with ``NN(z) = normalize(Q[argmax_q cos(z, q)])`` a constant. As pairs
(:func:`~pairsmith.positives.embedding_based.nnclr.nnclr_pairs`): anchors are the
neighbours, candidates the other view's normalised predictions, positives
``SameKey("instance")``. The queue stores ``instance`` and ``label`` with each projection,
so the curated pairs carry the neighbours' keys (``info["nn_keys"]``) and the
NN-positive precision can be measured when labels are known.

References:
    1. Dwibedi, Aytar, Tompson, Sermanet, Zisserman. "With a Little Help from My Friends:
       Nearest-Neighbor Contrastive Learning of Visual Representations". ICCV 2021.
    2. Survey §3.2.1; shared/reference/methods.md §3.1.

Examples:
    >>> import torch
    >>> from pairsmith.models import SmallCNN
    >>> method = NNCLR(
    ...     SmallCNN(1, (8, 16)), queue_size=32, proj_hidden_dim=32, proj_dim=16,
    ...     pred_hidden_dim=32,
    ... )
    >>> views = [torch.randn(8, 1, 28, 28), torch.randn(8, 1, 28, 28)]
    >>> out = method.training_step(views, {"instance": torch.arange(8)}, step=0, epoch=0)
    >>> tuple(out.pairs.info["nn_index"].shape)
    (8, 1)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pairsmith.core.distributed import gather_segment, scale_loss_for_ddp
from pairsmith.core.pairs import Pairs, Segment
from pairsmith.core.registry import register_method
from pairsmith.functional.infonce import InfoNCEOutput
from pairsmith.losses.infonce import InfoNCELoss
from pairsmith.methods.base import Method, StepOutput
from pairsmith.methods.simclr import (
    ChunkSize,
    backbone_dim,
    check_chunk_size,
    check_int,
    check_number,
    check_views,
    info_logs,
    step_keys,
)
from pairsmith.models.heads import PredictionHead, ProjectionHead
from pairsmith.positives.embedding_based.nnclr import NearestNeighbourPositives, nnclr_pairs
from pairsmith.sources.queue import Queue


@register_method("methods.nnclr", taxonomy=("positives", "embedding_based"))
class NNCLR(Method):
    """NNCLR (Dwibedi et al. 2021; survey 3.2.1): nearest-neighbour positives from a queue.

    Defaults from shared/reference/methods.md §3.1 (VISSL / solo-learn), scaled for small
    data (28x28 images, a 10k-image training set, batch 256, a 256-d CNN):

    * ``temperature = 0.1``: unchanged.
    * ``queue_size = 4096`` (reference 98,304 for 1.28M images): 16 batches, 41 % of the
      10k training set, so the support set covers every class many times while its
      entries are at most 16 steps stale (as MoCo v2's queue here).
    * ``proj_dim = 256``: NNCLR's embedding size. ``proj_hidden_dim = 512`` (reference 2048,
      the ResNet-50 width) and ``pred_hidden_dim = 1024`` (reference 4096): the same 1/4
      scaling. The projector has solo-learn's 3 layers with BatchNorm on its output; the
      predictor is 2 layers.
    * The queue starts with random unit vectors (solo-learn), so the first steps' positives
      are random until the queue has been filled once.

    Limitation: under DDP the predictions are not gathered across ranks (each rank
    contrasts against its local batch; solo-learn gathers them).

    Args:
        backbone: encoder with ``out_dim``; (B, C, H, W) -> (B, out_dim).
        temperature: tau > 0.
        queue_size: K > 0 support entries.
        proj_hidden_dim: hidden size of the projector.
        proj_dim: embedding size (queue width).
        pred_hidden_dim: hidden size of the predictor.
        queue_keys: keys stored in the queue with each projection.
        chunk_size: row chunking of the loss.

    Raises:
        ValueError: for a bad option (the message names it).
    """

    def __init__(
        self,
        backbone: nn.Module,
        temperature: float = 0.1,
        queue_size: int = 4096,
        proj_hidden_dim: int = 512,
        proj_dim: int = 256,
        pred_hidden_dim: int = 1024,
        queue_keys: Sequence[str] = ("instance", "label"),
        chunk_size: ChunkSize = "auto",
    ) -> None:
        super().__init__(backbone)
        in_dim = backbone_dim(backbone)
        self.temperature = check_number("temperature", temperature, 0.0, low_inclusive=False)
        self.queue_size = check_int("queue_size", queue_size)
        check_int("proj_hidden_dim", proj_hidden_dim)
        check_int("proj_dim", proj_dim)
        check_int("pred_hidden_dim", pred_hidden_dim)
        keys = tuple(queue_keys)
        if "instance" not in keys or not all(isinstance(k, str) and k for k in keys):
            raise ValueError(f"queue_keys must be key names including 'instance', got {keys!r}")
        self.chunk_size = check_chunk_size(chunk_size)
        self.projector = ProjectionHead(
            in_dim, proj_hidden_dim, proj_dim, layers=3, bn=True, last_bn=True
        )
        self.predictor = PredictionHead(proj_dim, pred_hidden_dim, proj_dim)
        self.queue = Queue(self.queue_size, proj_dim, keys=keys, init="random")
        self.nn_curator = NearestNeighbourPositives(k=1, segment="queue", replace="anchors")
        self.last_output: InfoNCEOutput | None = None
        self.criterion: InfoNCELoss = InfoNCELoss(
            self.temperature, "all", "mean_log", self.chunk_size
        )

    def _loss(self, pairs: Pairs) -> tuple[Tensor, InfoNCEOutput]:
        self.criterion(pairs)
        out = self.criterion.last_output
        assert out is not None
        return scale_loss_for_ddp(out), out

    def training_step(
        self, views: Sequence[Tensor], keys: Mapping[str, Tensor], step: int, epoch: int
    ) -> StepOutput:
        """One NNCLR step: project, predict, look up neighbours, loss, enqueue view 1.

        The enqueue happens only in training mode (``self.training``).

        Args:
            views: two tensors. Shape: (B, C, H, W) each.
            keys: key name to long tensor. Shape: (B,). ``instance`` (default ``arange``),
                ``label`` (-1 unknown) are stored in the queue.
            step: global step (0-based).
            epoch: epoch (0-based).

        Returns:
            :class:`StepOutput`; ``pairs`` are the first direction's curated pairs
            (``NN(z1)`` against ``p2``, with ``info["nn_index"]`` and ``info["nn_keys"]``);
            ``embeddings`` the normalised projections of both views.
        """
        check_views(views, 2)
        n = views[0].shape[0]
        z = self.projector(self.backbone(torch.cat([views[0], views[1]], dim=0)))
        p = self.predictor(z)
        z1, z2 = z.chunk(2)
        p1, p2 = p.chunk(2)
        device = z.device
        k_all = step_keys(keys, n, device)
        qkeys = {
            k: k_all[k] if k in k_all else torch.full((n,), -1, dtype=torch.long, device=device)
            for k in self.queue.key_names
        }
        # A snapshot: the enqueue below writes the queue in place.
        seg = self.queue.segment(dtype=z.dtype)
        snapshot = {k: v.clone() for k, v in seg.keys.items()}
        support = Segment("queue", seg.embeddings.clone(), snapshot)
        a, b = nnclr_pairs(z1, z2, p1, p2, qkeys, support, self.nn_curator)
        loss_a, out = self._loss(a)
        loss_b, _ = self._loss(b)
        loss = 0.5 * (loss_a + loss_b)
        self.last_output = out
        z1n, z2n = F.normalize(z1.detach(), dim=1), F.normalize(z2.detach(), dim=1)
        if self.training:
            g = gather_segment("batch", z1n, qkeys)
            self.queue.push(g.embeddings, g.keys)
        logs = {
            "loss": float(loss.detach()),
            "nn_similarity": float(a.info["nn_similarity"].mean()),
            **info_logs(a.info),
        }
        return StepOutput(loss=loss, pairs=a.detach(), embeddings=(z1n, z2n), logs=logs)
