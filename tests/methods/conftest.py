"""Shared fixtures of the recipe tests: tiny CNNs on random 28x28 images."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from pairsmith.core.registry import create_method
from pairsmith.models import SmallCNN

BATCH = 8

#: Every recipe, with options that make it tiny (queues a multiple of 2 * BATCH).
TINY: dict[str, dict[str, Any]] = {
    "methods.simclr": {},
    "methods.supcon": {},
    "methods.simclr_fnc": {},
    "methods.simclr_dcl": {},
    "methods.simclr_hcl": {},
    "methods.mocov2": {"queue_size": 32, "bn_splits": 2},
    "methods.mocov2_mochi": {
        "queue_size": 32,
        "bn_splits": 2,
        "num_hard": 8,
        "num_mix": 4,
        "num_query_mix": 2,
        "warmup_epochs": 0,
    },
    "methods.nnclr": {"queue_size": 32, "pred_hidden_dim": 16},
}

TAXONOMY = {
    "methods.simclr": ("positives", "single_instance"),
    "methods.mocov2": ("positives", "single_instance"),
    "methods.supcon": ("positives", "supervised"),
    "methods.simclr_fnc": ("negatives", "false_negative_removal"),
    "methods.simclr_dcl": ("negatives", "false_negative_removal"),
    "methods.simclr_hcl": ("negatives", "hard_negative_selection"),
    "methods.mocov2_mochi": ("negatives", "hard_negative_selection"),
    "methods.nnclr": ("positives", "embedding_based"),
}


def tiny_backbone() -> nn.Module:
    return SmallCNN(1, (4, 8))


def make_method(name: str, seed: int = 0, **kw: Any) -> Any:
    torch.manual_seed(seed)
    opts = {"proj_hidden_dim": 16, "proj_dim": 8, **TINY[name], **kw}
    return create_method(name, backbone=tiny_backbone(), **opts)


def make_batch(
    n: int = BATCH, views: int = 2, seed: int = 1
) -> tuple[list[Tensor], dict[str, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    v = [torch.randn(n, 1, 28, 28, generator=g) for _ in range(views)]
    keys = {"instance": torch.arange(100, 100 + n), "label": torch.arange(n) % 3}
    return v, keys


@pytest.fixture(autouse=True)
def one_thread() -> Any:
    """Tiny tensors: one intra-op thread is faster, and far faster on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def make() -> Callable[..., Any]:
    return make_method


@pytest.fixture
def batch() -> Callable[..., tuple[list[Tensor], dict[str, Tensor]]]:
    return make_batch
