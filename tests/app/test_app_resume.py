"""Checkpoint, interrupt, resume: the same loss curve and final weights as one uninterrupted run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from ps_app_helpers import tiny_overrides

from pairsmith.app.cli import main
from pairsmith.app.config import load_config
from pairsmith.app.report import read_metrics
from pairsmith.app.train import train


class Crash(pl.Callback):
    """Simulate a crash (preemption) before the step ``at`` runs."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.at:
            raise RuntimeError("simulated crash")


def _losses(run: Path) -> dict[int, float]:
    series, _ = read_metrics(run)
    return {int(s): v for s, v in series["loss"]}


def _weights(run: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    return ckpt["state_dict"]


def _check_same(a: Path, b: Path, steps: int) -> None:
    la, lb = _losses(a), _losses(b)
    assert sorted(la) == sorted(lb) == list(range(steps))
    for s in range(steps):
        assert lb[s] == pytest.approx(la[s], rel=1e-6, abs=1e-7), f"step {s}"
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-6, atol=1e-7, msg=k)


MOCO = (
    "method.name=mocov2",
    "method.options={proj_hidden_dim: 16, proj_dim: 8, queue_size: 32, bn_splits: 2}",
)


def _overrides(root: Path, *extra: str) -> list[str]:
    # Two epochs of 4 steps; no final evaluation (not what is compared).
    return [*tiny_overrides(root), "eval.final=false", *extra]


@pytest.fixture(scope="module")
def uninterrupted(fmnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("resume") / "full"
    train(load_config(None, _overrides(fmnist_root)), run)
    return run


def test_resume_from_epoch_checkpoint_repeats_the_uninterrupted_run(
    fmnist_root: Path, uninterrupted: Path, tmp_path: Path
) -> None:
    run = tmp_path / "interrupted"
    cfg = load_config(None, _overrides(fmnist_root))
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, run, callbacks=[Crash(at=6)])  # dies in epoch 1; last.ckpt is epoch 0's
    assert max(_losses(run)) == 5
    assert main(["train", "--out", str(run), "--resume"]) == 0  # the run's config.yaml
    assert len(list((run / "logs").glob("version_*"))) == 2
    _check_same(uninterrupted, run, 8)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["simclr", "mocov2"])
def test_resume_mid_epoch_from_step_checkpoint(
    fmnist_root: Path, tmp_path: Path, method: str
) -> None:
    # MoCo v2: the queue and the momentum encoder must be in the checkpoint, updated by the
    # step that was checkpointed.
    extra = MOCO if method == "mocov2" else ()
    full = tmp_path / "full"
    train(load_config(None, _overrides(fmnist_root, *extra)), full)
    run = tmp_path / "interrupted"
    cfg = load_config(None, _overrides(fmnist_root, *extra, "trainer.checkpoint_every_steps=3"))
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, run, callbacks=[Crash(at=7)])  # last.ckpt at step 6, mid-epoch 1
    train(load_config(run / "config.yaml"), run, resume=True)
    _check_same(full, run, 8)
