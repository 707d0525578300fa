"""``pairsmith train``: build the data, the module and the Lightning trainer; fit; evaluate.

A run directory holds everything of one run::

    RUN_DIR/config.yaml            the resolved config (data-derived values filled in)
    RUN_DIR/checkpoints/           epochNNN.ckpt (kept: trainer.keep_checkpoints), last.ckpt
    RUN_DIR/logs/version_N/        metrics.csv (one version per invocation; resume adds one)
    RUN_DIR/results.json           final kNN: trained / random init / raw pixels
    RUN_DIR/plots/                 written by ``pairsmith report``
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, Logger

from pairsmith.app.callbacks import OnlineKNN, StepTimer
from pairsmith.app.config import Config, ConfigError, dump_config, load_config
from pairsmith.app.datamodule import ImageSet, PairsmithDataModule, channel_stats, load_splits
from pairsmith.app.evaluate import (
    CONFIG_NAME,
    final_evaluation,
    fixed_subset,
    format_results,
    write_results,
)
from pairsmith.app.module import ContrastiveModule, import_plugins

CHECKPOINT_DIR = "checkpoints"
LOG_NAME = "logs"


def resolve(cfg: Config, train: ImageSet) -> Config:
    """Fill in what the data decides: input channels, view size, normalisation statistics."""
    from pairsmith.data.views import DATASET_STATS

    d = cfg.to_dict()
    _, c, h, w = train.images.shape
    if d["model"]["in_channels"] is None:
        d["model"]["in_channels"] = int(c)
    elif d["model"]["in_channels"] != c:
        given = d["model"]["in_channels"]
        raise ConfigError(f"model.in_channels is {given} but the images have {c} channels")
    if d["views"]["size"] is None:
        d["views"]["size"] = int(min(h, w))
    if d["views"]["mean"] is None or d["views"]["std"] is None:
        stats = DATASET_STATS.get(cfg.data.name)
        mean, std = (list(stats[0]), list(stats[1])) if stats else channel_stats(train.images)
        d["views"]["mean"] = d["views"]["mean"] or mean
        d["views"]["std"] = d["views"]["std"] or std
    for k in ("mean", "std"):
        if len(d["views"][k]) != c:
            got = d["views"][k]
            raise ConfigError(f"views.{k} must have {c} values (one per channel), got {got}")
    return Config.from_dict(d)


def _has_last(ckpt_dir: Path) -> bool:
    return ckpt_dir.is_dir() and any(ckpt_dir.glob("last*.ckpt"))


def _loggers(run_dir: Path) -> list[Logger]:
    loggers: list[Logger] = [CSVLogger(save_dir=str(run_dir), name=LOG_NAME)]
    if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="tb"))
    return loggers


def _checkpoints(cfg: Config, run_dir: Path) -> list[pl.Callback]:
    tr = cfg.trainer
    dirpath = run_dir / CHECKPOINT_DIR
    keep = tr.keep_checkpoints
    by_epoch = ModelCheckpoint(
        dirpath=dirpath,
        filename="epoch{epoch:03d}",
        auto_insert_metric_name=False,
        every_n_epochs=tr.checkpoint_every_epochs,
        save_top_k=keep,
        # Without a monitor Lightning keeps 0, 1 or all; "the k latest" ranks by step.
        monitor="step" if keep > 1 else None,
        mode="max",
        save_last=tr.checkpoint_every_steps == 0,
    )
    if tr.checkpoint_every_steps == 0:
        return [by_epoch]
    # A second callback only refreshes last.ckpt every N steps (mid-epoch resume).
    by_step = ModelCheckpoint(
        dirpath=dirpath,
        filename="step{step:07d}",
        auto_insert_metric_name=False,
        every_n_train_steps=tr.checkpoint_every_steps,
        save_top_k=0,
        save_last=True,
        save_on_train_epoch_end=True,
    )
    return [by_epoch, by_step]


def build_trainer(
    cfg: Config, run_dir: Path, callbacks: Sequence[pl.Callback] = (), logger: bool = True
) -> pl.Trainer:
    """The Lightning trainer of a run (CPU DDP over gloo when ``trainer.devices > 1``)."""
    tr = cfg.trainer
    strategy: str = tr.strategy
    if strategy == "auto" and tr.devices > 1:
        strategy = "ddp"
    cbs: list[pl.Callback] = list(callbacks) + _checkpoints(cfg, run_dir)
    if tr.progress_bar:
        cbs.append(TQDMProgressBar(refresh_rate=max(1, tr.log_every)))
    return pl.Trainer(
        accelerator=tr.accelerator,
        devices=tr.devices,
        strategy=strategy,
        max_epochs=tr.epochs,
        max_steps=tr.max_steps,
        precision=tr.precision,  # type: ignore[arg-type]
        log_every_n_steps=tr.log_every,
        deterministic=tr.deterministic,
        gradient_clip_val=tr.gradient_clip_val,
        callbacks=cbs,
        logger=_loggers(run_dir) if logger else False,
        default_root_dir=str(run_dir),
        enable_progress_bar=tr.progress_bar,
        # The sampler shards and orders the data itself (a function of seed and epoch).
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        enable_model_summary=tr.progress_bar,
    )


def train(
    cfg: Config,
    run_dir: str | os.PathLike[str],
    resume: bool = False,
    callbacks: Sequence[pl.Callback] = (),
    splits: tuple[ImageSet, ImageSet] | None = None,
) -> dict[str, Any]:
    """Train a run and evaluate it; the Python form of ``pairsmith train``.

    Args:
        cfg: the config (data-derived values may be unset).
        run_dir: the run directory (created).
        resume: continue from ``RUN_DIR/checkpoints/last.ckpt``.
        callbacks: extra Lightning callbacks.
        splits: already loaded ``(train, test)`` (else loaded from ``cfg.data``).

    Returns:
        The results written to ``results.json`` (empty on ranks other than 0, or when neither
        training statistics nor the final evaluation apply).

    Raises:
        FileExistsError: if the run directory already has checkpoints and ``resume`` is false.
        FileNotFoundError: if ``resume`` is set and there is no checkpoint, or the data is
            missing.
        ConfigError: on an invalid config.
    """
    t_start = time.perf_counter()
    # Epoch-level timings and kNN are logged from rank 0 on purpose; Lightning's internal
    # pytree deprecation is not ours to fix.
    warnings.filterwarnings("ignore", message=".*when logging on epoch level in distributed")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    run = Path(run_dir)
    ckpt_dir = run / CHECKPOINT_DIR
    if resume and not _has_last(ckpt_dir):
        raise FileNotFoundError(f"--resume: no last checkpoint in {ckpt_dir}")
    if not resume and ckpt_dir.is_dir() and any(ckpt_dir.glob("*.ckpt")):
        raise FileExistsError(
            f"{run} already holds checkpoints; pass --resume to continue it or choose another --out"
        )
    import_plugins(cfg.imports)
    tr = cfg.trainer
    torch.set_num_threads(tr.num_threads or max(1, (os.cpu_count() or 1) // tr.devices))

    train_set, test_set = splits if splits is not None else load_splits(cfg.data)
    cfg = resolve(cfg, train_set)
    dm = PairsmithDataModule(cfg.data, seed=tr.seed, splits=(train_set, test_set))
    steps_per_epoch = dm.num_batches()
    if steps_per_epoch == 0:
        raise ConfigError(
            f"data.batch_size ({cfg.data.batch_size}) exceeds the {len(train_set)} training "
            "images: no batch to train on"
        )

    mean, std = cfg.views.mean, cfg.views.std
    assert mean is not None and std is not None
    timer = StepTimer()
    cbs: list[pl.Callback] = [timer]
    if cfg.eval.online and len(test_set.labelled()) > 0:
        bank = fixed_subset(train_set.labelled(), cfg.eval.online_bank_size, tr.seed)
        held = fixed_subset(test_set.labelled(), cfg.eval.online_test_size, tr.seed)
        cbs.append(OnlineKNN(bank, held, cfg.eval, mean, std, cfg.eval.online_every))
    cbs.extend(callbacks)

    trainer = build_trainer(cfg, run, cbs)
    if trainer.is_global_zero:
        run.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, run / CONFIG_NAME)

    pl.seed_everything(tr.seed, verbose=False)
    module = ContrastiveModule(cfg.to_dict(), steps_per_epoch=steps_per_epoch)
    t_fit = time.perf_counter()
    trainer.fit(module, datamodule=dm, ckpt_path="last" if resume else None)
    fit_s = time.perf_counter() - t_fit
    if not trainer.is_global_zero:
        return {}

    results: dict[str, Any] = {
        "train": {
            "steps": int(trainer.global_step),
            "epochs": int(trainer.current_epoch),
            "steps_per_epoch": steps_per_epoch,
            "fit_time_s": round(fit_s, 2),
            "mean_step_s": round(timer.mean_step_s, 4) if timer.step_times else None,
            "last_loss": _last(trainer, "loss"),
            "knn_top1_online": _last(trainer, "knn_top1"),
        }
    }
    if cfg.eval.final and len(test_set.labelled()) > 0:
        module.method.eval()
        final = final_evaluation(cfg, module.method.encoder(), train_set, test_set)
        results.update(final)
        print(format_results(final), flush=True)
    results["wall_time_s"] = round(time.perf_counter() - t_start, 2)
    write_results(run, results)
    print(f"results written to {run / 'results.json'}", flush=True)
    return results


def _last(trainer: pl.Trainer, name: str) -> float | None:
    v = trainer.callback_metrics.get(name)
    if v is None:
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def train_from_args(
    config: str | None,
    out: str,
    overrides: Sequence[str] = (),
    resume: bool = False,
    data_root: str | None = None,
    devices: int | None = None,
) -> dict[str, Any]:
    """``pairsmith train`` after argument parsing.

    With ``resume`` and no ``config``, the run's saved ``config.yaml`` is the base.
    """
    run = Path(out)
    extra = list(overrides)
    if data_root is not None:
        extra.append(f"data.root={json.dumps(data_root)}")
    if devices is not None:
        extra.append(f"trainer.devices={devices}")
    if resume and config is None:
        saved = run / CONFIG_NAME
        if not saved.is_file():
            raise FileNotFoundError(f"--resume: {saved} not found; pass --config")
        cfg = load_config(saved, extra)
    else:
        cfg = load_config(config, extra)  # no file: the built-in defaults
    return train(cfg, run, resume=resume)
