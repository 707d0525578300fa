"""Evaluation of a trained encoder: weighted kNN, linear probe, and the two baselines.

The main job's question is whether training helped at all, so the final evaluation reports the
kNN top-1 of the trained encoder next to the *same* encoder at random initialisation (rebuilt
from the same config and seed) and next to kNN on raw pixels, all on the whole test split with
the training split as the memory bank (anchors.md, "Measured here": at small CPU budgets the
standard recipes score below both baselines).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pairsmith.app.config import Config, ConfigError, EvalConfig, LinearConfig, load_config
from pairsmith.app.datamodule import ImageSet, load_splits
from pairsmith.eval.knn import extract_features, knn_accuracy, pixel_features

CONFIG_NAME = "config.yaml"
RESULTS_NAME = "results.json"


def fixed_subset(s: ImageSet, size: int | None, seed: int = 0) -> ImageSet:
    """The first ``size`` rows of a seeded permutation (``None``: everything)."""
    if size is None or size >= len(s):
        return s
    g = torch.Generator().manual_seed(seed)
    idx = torch.sort(torch.randperm(len(s), generator=g)[:size]).values
    return s.subset(idx)


def _features(
    encoder: nn.Module, images: Tensor, cfg: EvalConfig, mean: Sequence[float], std: Sequence[float]
) -> Tensor:
    return extract_features(encoder, images, cfg.batch_size, None, mean, std)


def knn_top1(
    bank_features: Tensor, bank: ImageSet, test_features: Tensor, test: ImageSet, cfg: EvalConfig
) -> float:
    """Weighted kNN top-1 (%) of ``test`` against the labelled ``bank`` features."""
    num_classes = max(bank.num_classes, test.num_classes)
    return knn_accuracy(
        test_features, test.labels, bank_features, bank.labels, cfg.knn_k, cfg.knn_t,
        num_classes, cfg.chunk_size,
    )  # fmt: skip


def encoder_knn(
    encoder: nn.Module,
    bank: ImageSet,
    test: ImageSet,
    cfg: EvalConfig,
    mean: Sequence[float],
    std: Sequence[float],
) -> float:
    """Weighted kNN top-1 (%) of a frozen encoder, ``bank`` (labelled rows) against ``test``."""
    bank, test = bank.labelled(), test.labelled()
    fb = _features(encoder, bank.images, cfg, mean, std)
    ft = _features(encoder, test.images, cfg, mean, std)
    return knn_top1(fb, bank, ft, test, cfg)


def pixel_knn(
    bank: ImageSet, test: ImageSet, cfg: EvalConfig, mean: Sequence[float], std: Sequence[float]
) -> float:
    """Weighted kNN top-1 (%) on normalised raw pixels (the no-learning baseline)."""
    bank, test = bank.labelled(), test.labelled()
    fb, ft = pixel_features(bank.images, mean, std), pixel_features(test.images, mean, std)
    return knn_top1(fb, bank, ft, test, cfg)


def linear_top1(
    encoder: nn.Module,
    bank: ImageSet,
    test: ImageSet,
    cfg: EvalConfig,
    mean: Sequence[float],
    std: Sequence[float],
    seed: int = 0,
) -> float:
    """Linear-probe top-1 (%) on frozen features (``pairsmith.eval.linear``)."""
    from pairsmith.eval.linear import linear_probe

    lin: LinearConfig = cfg.linear
    bank, test = bank.labelled(), test.labelled()
    fb = _features(encoder, bank.images, cfg, mean, std)
    ft = _features(encoder, test.images, cfg, mean, std)
    return float(
        linear_probe(
            fb, bank.labels, ft, test.labels, max(bank.num_classes, test.num_classes),
            epochs=lin.epochs, optimizer=lin.optimizer, lr=lin.lr,
            weight_decay=lin.weight_decay, seed=seed,
        )
    )  # fmt: skip


def random_init_encoder(cfg: Config) -> nn.Module:
    """The encoder as it was before training: the method rebuilt right after the same seed."""
    import lightning.pytorch as pl

    from pairsmith.app.module import build_method, import_plugins

    import_plugins(cfg.imports)
    pl.seed_everything(cfg.trainer.seed, verbose=False)
    return build_method(cfg).encoder()


def final_evaluation(
    cfg: Config,
    encoder: nn.Module,
    train: ImageSet,
    test: ImageSet,
    baselines: bool = True,
    linear: bool | None = None,
) -> dict[str, Any]:
    """The kNN (and optionally linear) top-1 of ``encoder``, the random-init encoder and pixels.

    Args:
        cfg: the resolved config (``views.mean``/``std`` set).
        encoder: the trained encoder.
        train: the memory bank / probe training split.
        test: the evaluation split (all of it).
        baselines: also evaluate the random-init encoder and raw pixels.
        linear: run the linear probe (``None``: ``eval.linear.enabled``).

    Returns:
        A JSON-able dict: ``knn_top1`` (and ``linear_top1``) mapping ``trained``,
        ``random_init``, ``raw_pixels`` to percentages, plus sizes and timings.
    """
    mean, std = cfg.views.mean, cfg.views.std
    assert mean is not None and std is not None
    e = cfg.eval
    t0 = time.perf_counter()
    out: dict[str, Any] = {
        "knn_top1": {"trained": encoder_knn(encoder, train, test, e, mean, std)},
        "test_images": len(test.labelled()),
        "bank_images": len(train.labelled()),
        "knn_k": e.knn_k,
        "knn_t": e.knn_t,
    }
    fresh: nn.Module | None = None
    if baselines:
        fresh = random_init_encoder(cfg)
        out["knn_top1"]["random_init"] = encoder_knn(fresh, train, test, e, mean, std)
        out["knn_top1"]["raw_pixels"] = pixel_knn(train, test, e, mean, std)
    if e.linear.enabled if linear is None else linear:
        seed = cfg.trainer.seed
        out["linear_top1"] = {"trained": linear_top1(encoder, train, test, e, mean, std, seed)}
        if fresh is not None:
            out["linear_top1"]["random_init"] = linear_top1(fresh, train, test, e, mean, std, seed)
    out["eval_time_s"] = round(time.perf_counter() - t0, 2)
    return out


def format_results(results: dict[str, Any]) -> str:
    """A small table of the accuracies in ``results``."""
    lines = []
    for metric in ("knn_top1", "linear_top1"):
        if metric in results:
            row = results[metric]
            cells = "  ".join(f"{k} {v:6.2f}%" for k, v in row.items())
            lines.append(f"{metric:12s} {cells}")
    n = results.get("test_images")
    if n is not None:
        lines.append(f"(on {n} test images, bank of {results.get('bank_images')} training images)")
    return "\n".join(lines)


def write_results(run_dir: str | Path, results: dict[str, Any]) -> Path:
    """Write ``results.json`` in the run directory (merging with an existing one)."""
    path = Path(run_dir) / RESULTS_NAME
    old: dict[str, Any] = {}
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            old = {}
    old.update(results)
    path.write_text(json.dumps(old, indent=2, sort_keys=True) + "\n")
    return path


# --------------------------------------------------------------------------- offline
def find_checkpoint(path: str | Path) -> tuple[Path, Path | None]:
    """``(checkpoint, run_dir)`` for a run directory (its ``last.ckpt``) or a checkpoint file.

    Raises:
        FileNotFoundError: if no checkpoint is found.
    """
    p = Path(path)
    if p.is_dir():
        ckpt = p / "checkpoints" / "last.ckpt"
        if not ckpt.is_file():
            raise FileNotFoundError(f"no checkpoint in {p} (expected {ckpt})")
        return ckpt, p
    if not p.is_file():
        raise FileNotFoundError(f"{p} is neither a run directory nor a checkpoint file")
    run_dir = p.parent.parent if p.parent.name == "checkpoints" else None
    return p, run_dir


def evaluate_checkpoint(
    path: str | Path,
    overrides: Sequence[str] = (),
    data_root: str | None = None,
    linear: bool | None = None,
    baselines: bool = False,
    write: bool = True,
) -> dict[str, Any]:
    """Offline evaluation of a checkpoint: kNN (whole test split) and optionally linear probe.

    The config is the one saved in the checkpoint, with ``overrides`` applied (e.g.
    ``eval.knn_k=20``); ``data_root`` replaces ``data.root``.

    Args:
        path: run directory or ``.ckpt`` file.
        overrides: ``section.key=value`` strings.
        data_root: data folder.
        linear: run the linear probe (``None``: ``eval.linear.enabled``).
        baselines: also evaluate the random-init encoder and raw pixels.
        write: write ``results.json`` (key ``offline``) in the run directory.

    Returns:
        The results dict (see :func:`final_evaluation`) with ``checkpoint`` and ``step``.

    Raises:
        FileNotFoundError: if the checkpoint or the data is missing.
        ConfigError: on an invalid override.
    """
    ckpt_path, run_dir = find_checkpoint(path)
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    hp = ckpt.get("hyper_parameters", {}).get("config")
    if hp is None:
        raise ConfigError(f"{ckpt_path} is not a pairsmith checkpoint (no saved config)")
    extra = list(overrides) + ([f"data.root={data_root}"] if data_root else [])
    cfg = load_config(None, extra, base=hp)

    from pairsmith.app.module import ContrastiveModule

    module = ContrastiveModule(cfg.to_dict())
    module.load_state_dict(ckpt["state_dict"])
    train, test = load_splits(cfg.data)
    results = final_evaluation(cfg, module.method.encoder(), train, test, baselines, linear)
    results["checkpoint"] = str(ckpt_path)
    results["step"] = int(ckpt.get("global_step", -1))
    results["epoch"] = int(ckpt.get("epoch", -1))
    if write and run_dir is not None:
        write_results(run_dir, {"offline": results})
    return results
