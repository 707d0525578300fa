"""A FIFO memory of embeddings *and* their keys (MoCo's queue, NNCLR's support set).

MoCo (He et al. 2020) keeps only embeddings; storing keys too (instance, label, any
attribute) lets every positive or negative rule that works on the batch also work on
the queue: SupCon with a queue, false-negative removal against memory, NNCLR precision.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from pairsmith.core.pairs import Segment
from pairsmith.core.registry import register_source


@register_source("sources.queue", taxonomy=("positives", "single_instance"))
class Queue(nn.Module):
    """Fixed-size FIFO of ``[size, dim]`` embeddings and ``[size]`` long keys.

    Slots not yet written hold key -1 and are left out of :meth:`segment` until the
    queue has wrapped once. State (embeddings, keys, pointer, fill) lives in buffers, so
    ``state_dict`` saves and restores it exactly.

    Args:
        size: number of slots (> 0).
        dim: embedding dimension (> 0).
        keys: names of the keys stored with each embedding.
        batch_multiple: if set, ``size`` must be a multiple of it (MoCo asserts K % B == 0).
        init: ``"empty"`` (default) or ``"random"`` (unit vectors, as MoCo's code starts).
    """

    def __init__(
        self,
        size: int,
        dim: int,
        keys: Sequence[str] = ("instance",),
        batch_multiple: int | None = None,
        init: str = "empty",
    ) -> None:
        super().__init__()
        if not isinstance(size, int) or size <= 0:
            raise ValueError(f"size must be a positive int, got {size!r}")
        if not isinstance(dim, int) or dim <= 0:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if batch_multiple is not None and size % batch_multiple:
            raise ValueError(
                f"size ({size}) must be a multiple of the batch size ({batch_multiple})"
            )
        if init not in ("empty", "random"):
            raise ValueError(f"init must be 'empty' or 'random', got {init!r}")
        self.size, self.dim, self.key_names = size, dim, tuple(keys)
        # Buffers, declared for type checkers (register_buffer sets them).
        self.embeddings: Tensor
        self.ptr: Tensor
        self.filled: Tensor
        emb = torch.zeros(size, dim)
        if init == "random":
            emb = nn.functional.normalize(torch.randn(size, dim), dim=1)
        self.register_buffer("embeddings", emb)
        for k in self.key_names:
            self.register_buffer(f"key_{k}", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.tensor(size if init == "random" else 0))

    def keys(self) -> dict[str, Tensor]:
        """Key name to ``[size]`` long tensor."""
        return {k: self.key(k) for k in self.key_names}

    def key(self, name: str) -> Tensor:
        """The ``[size]`` long buffer of one key."""
        buf = getattr(self, f"key_{name}")
        assert isinstance(buf, Tensor)
        return buf

    def __len__(self) -> int:
        return int(self.filled)

    @torch.no_grad()
    def push(self, embeddings: Tensor, keys: Mapping[str, Tensor]) -> None:
        """Write a batch at the pointer (wrapping around) and advance it.

        Args:
            embeddings: ``[n, dim]``; stored detached.
            keys: every stored key name to a long tensor ``[n]``.
        """
        if embeddings.dim() != 2 or embeddings.shape[1] != self.dim:
            raise ValueError(f"embeddings must be [n, {self.dim}], got {tuple(embeddings.shape)}")
        n = embeddings.shape[0]
        if n > self.size:
            raise ValueError(f"cannot push {n} rows into a queue of size {self.size}")
        missing = set(self.key_names) - set(keys)
        if missing:
            raise ValueError(f"keys lacks {sorted(missing)}; the queue stores {self.key_names}")
        for k in self.key_names:
            if keys[k].shape != (n,):
                raise ValueError(f"keys[{k!r}] must have shape [{n}], got {tuple(keys[k].shape)}")
        idx = (int(self.ptr) + torch.arange(n, device=self.embeddings.device)) % self.size
        self.embeddings[idx] = embeddings.detach().to(self.embeddings)
        for k in self.key_names:
            self.key(k)[idx] = keys[k].to(self.embeddings.device).long()
        self.ptr.fill_((int(self.ptr) + n) % self.size)
        self.filled.fill_(min(self.size, int(self.filled) + n))

    def segment(self, dtype: torch.dtype | None = None) -> Segment:
        """A copy of the filled slots as a ``queue`` segment (no gradient).

        Args:
            dtype: cast the embeddings (e.g. to the anchors' dtype).
        """
        n = int(self.filled)
        # A copy, not a view: a push before backward (MoCo enqueues in the same step)
        # would otherwise modify a tensor the autograd graph saved.
        emb = self.embeddings[:n].detach().clone()
        if dtype is not None:
            emb = emb.to(dtype)
        keys = {k: v[:n].clone() for k, v in self.keys().items()}
        return Segment("queue", emb, keys)
