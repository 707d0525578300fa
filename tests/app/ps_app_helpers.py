"""Helpers of the app tests: a tiny IDX data set, tiny configs, a BatchNorm-free backbone.

Importable by name in the DDP subprocesses (the tests put this folder on ``PYTHONPATH``).
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

HERE = Path(__file__).resolve().parent


def write_idx(path: Path, arr: np.ndarray) -> None:
    arr = np.asarray(arr, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.tobytes())


def write_fake_fmnist(root: Path, n_train: int = 64, n_test: int = 40, seed: int = 0) -> Path:
    """Fashion-MNIST-shaped IDX files: noise plus a class-dependent bright stripe."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 80, size=(n, 28, 28))
        for i, c in enumerate(labels):
            images[i, 2 * c : 2 * c + 6, 4:24] += 150
        write_idx(root / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels)
    return root


def tiny_overrides(root: Path | str, **extra: object) -> list[str]:
    """Overrides for a few-second run on the fake data (SimCLR, 4-8 channel CNN)."""
    o = {
        "data.root": str(root),
        "data.batch_size": 16,
        "trainer.epochs": 2,
        "trainer.num_threads": 1,
        "trainer.progress_bar": False,
        "model.backbone": "small_cnn",
        "model.options": {"channels": [4, 8]},
        "method.name": "simclr",
        "method.options": {"proj_hidden_dim": 16, "proj_dim": 8},
        "eval.knn_k": 10,
        "eval.online_test_size": 20,
        "eval.batch_size": 64,
    }
    o.update(extra)
    import json

    return [f"{k}={json.dumps(v)}" for k, v in o.items()]


class TinyNet(nn.Module):
    """Conv-ReLU-pool-linear without BatchNorm (so DDP matches one process exactly on CPU)."""

    def __init__(self, in_channels: int = 1, width: int = 4, out_dim: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, 3, stride=2, padding=1)
        self.fc = nn.Linear(width, out_dim)
        self.out_dim = out_dim

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.conv(x)).mean(dim=(2, 3))
        return self.fc(h)
