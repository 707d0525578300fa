"""Callbacks: online kNN at epoch ends, step timing.

Both log through the LightningModule, so their values land in the same CSV as the loss.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl

from pairsmith.app.config import EvalConfig
from pairsmith.app.datamodule import ImageSet
from pairsmith.app.evaluate import encoder_knn


class OnlineKNN(pl.Callback):
    """Weighted kNN top-1 of the encoder every ``every`` epochs, logged as ``knn_top1``.

    Computed on rank 0 only (the bank and the held-out images are small); the other ranks
    carry on to the next step's collective.

    Args:
        bank: labelled training images (the memory bank), unaugmented.
        test: held-out images evaluated.
        cfg: the ``eval`` section (k, T, batch and chunk sizes).
        mean: normalisation mean (as the views use).
        std: normalisation std.
        every: evaluate every this many epochs; the last epoch is always evaluated.
    """

    def __init__(
        self,
        bank: ImageSet,
        test: ImageSet,
        cfg: EvalConfig,
        mean: Sequence[float],
        std: Sequence[float],
        every: int = 1,
    ) -> None:
        self.bank, self.test, self.cfg = bank, test, cfg
        self.mean, self.std = list(mean), list(std)
        self.every = every
        self.history: list[tuple[int, float]] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Evaluate and log ``knn_top1`` (and the time it took)."""
        epoch = trainer.current_epoch
        last = trainer.max_epochs is not None and epoch + 1 >= trainer.max_epochs
        last = last or (trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps)
        if (epoch + 1) % self.every and not last:
            return
        if not trainer.is_global_zero:
            return
        t0 = time.perf_counter()
        encoder = pl_module.method.encoder()  # type: ignore[operator, union-attr]
        acc = encoder_knn(encoder, self.bank, self.test, self.cfg, self.mean, self.std)
        self.history.append((epoch, acc))
        pl_module.log("knn_top1", acc, on_epoch=True, rank_zero_only=True, prog_bar=True)
        pl_module.log("time/knn_s", time.perf_counter() - t0, on_epoch=True, rank_zero_only=True)


class StepTimer(pl.Callback):
    """Mean wall time of a training step (views, forward, backward, optimiser) per epoch.

    Logged as ``time/step_s`` and ``time/epoch_s`` at each epoch end; the first step of the
    run is left out of the mean (warm-up allocations).

    Attributes:
        step_times: every measured step duration, in seconds.
    """

    def __init__(self) -> None:
        self.step_times: list[float] = []
        self._t0 = 0.0
        self._epoch: list[float] = []
        self._epoch_start = 0.0
        self._first = True

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start the epoch clock."""
        self._epoch = []
        self._epoch_start = time.perf_counter()

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Start the step clock."""
        self._t0 = time.perf_counter()

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Stop the step clock."""
        dt = time.perf_counter() - self._t0
        if self._first:
            self._first = False
            return
        self._epoch.append(dt)
        self.step_times.append(dt)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Log the epoch's mean step time and the epoch's training time."""
        if not trainer.is_global_zero:
            return
        if self._epoch:
            mean = sum(self._epoch) / len(self._epoch)
            pl_module.log("time/step_s", mean, on_epoch=True, rank_zero_only=True)
        elapsed = time.perf_counter() - self._epoch_start
        pl_module.log("time/epoch_s", elapsed, on_epoch=True, rank_zero_only=True)

    @property
    def mean_step_s(self) -> float:
        """Mean step time over the run (NaN before any step)."""
        return sum(self.step_times) / len(self.step_times) if self.step_times else float("nan")
