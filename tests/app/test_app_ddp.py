"""Two gloo processes on CPU train like one process on the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ps_app_helpers import HERE

from pairsmith.app.config import load_config
from pairsmith.app.report import read_metrics
from pairsmith.app.train import train

# BatchNorm-free backbone and head (CPU has no SyncBatchNorm), identity views (per-rank
# augmentation seeds differ from the single process's): the only differences left between the
# runs would be the data split, the gather and the gradient averaging, which are under test.
OVERRIDES = [
    "data.batch_size=16",
    "trainer.epochs=2",
    "trainer.num_threads=1",
    "trainer.progress_bar=false",
    "model.backbone=ps_app_helpers:TinyNet",
    "views.preset=none",
    "method.name=simclr",
    "method.options={proj_hidden_dim: 16, proj_dim: 8, proj_layers: 1, temperature: 0.2}",
    "optim.lr=0.5",
    "eval.final=false",
    "eval.online=false",
]


def _losses(run: Path) -> list[float]:
    series, _ = read_metrics(run)
    return [v for _, v in series["loss"]]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    return ckpt["state_dict"]


@pytest.mark.slow
@pytest.mark.ddp
def test_two_process_ddp_matches_one_process(fmnist_root: Path, tmp_path: Path) -> None:
    single = tmp_path / "single"
    train(load_config(None, [f"data.root={fmnist_root}", *OVERRIDES]), single)

    ddp = tmp_path / "ddp"
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
    )
    cmd = [sys.executable, "-m", "pairsmith.app.cli", "train", "--out", str(ddp), "--devices", "2"]
    cmd += ["--data-root", str(fmnist_root), *OVERRIDES]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Starting with 2 processes" in proc.stdout + proc.stderr

    a, b = _losses(single), _losses(ddp)
    assert len(a) == len(b) == 8
    assert a[0] != pytest.approx(a[-1], abs=1e-4)  # training moved the loss
    assert b == pytest.approx(a, rel=1e-5, abs=1e-6)
    wa, wb = _weights(single), _weights(ddp)
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-5, msg=k)
