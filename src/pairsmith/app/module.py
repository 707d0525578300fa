"""The LightningModule around a :class:`~pairsmith.methods.base.Method`, and the builders.

One training step: seed the global RNG from ``(seed, global_step, rank)``, make the views of
the ``uint8`` batch on the device (kornia, batched), call ``method.training_step``, log the loss,
the method's ``logs`` and the pair diagnostics, return the loss. After each optimiser step
``method.after_optimizer_step`` runs (momentum encoders, queue pushes). The learning rate follows
a per-step linear warm-up and cosine schedule.

Why the per-step seed: a running generator would have to be saved and restored to resume a run
exactly; a seed derived from the step makes the augmentations (and any randomness inside the
method) a function of the step alone, so a resumed run repeats the uninterrupted one. Method
state (queues, momentum encoders) lives in buffers and parameters and is therefore checkpointed
with the model.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from pairsmith.app.config import Config, ConfigError, ModelConfig, ViewsConfig
from pairsmith.methods.base import Method, StepOutput

Diagnostics = Callable[[StepOutput, Mapping[str, Tensor]], Mapping[str, float]]


# --------------------------------------------------------------------------- builders
def import_plugins(modules: Sequence[str]) -> None:
    """Import the config's ``imports`` (modules that register components).

    Raises:
        ConfigError: if a module cannot be imported.
    """
    for m in modules:
        try:
            importlib.import_module(m)
        except ImportError as e:
            raise ConfigError(f"imports: cannot import {m!r} ({e})") from e


def _tuples(d: Mapping[str, Any]) -> dict[str, Any]:
    """YAML lists to tuples (``scale: [0.2, 1.0]`` -> ``(0.2, 1.0)``)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def _accepted(fn: Callable[..., Any]) -> list[str] | None:
    """Keyword names ``fn`` accepts, or ``None`` if it takes ``**kwargs``."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind is not inspect.Parameter.VAR_POSITIONAL]


def _check_options(
    section: str,
    component: str,
    fn: Callable[..., Any],
    options: Mapping[str, Any],
    skip: Sequence[str],
) -> None:
    valid = _accepted(fn)
    if valid is None:
        return
    valid = [v for v in valid if v not in skip]
    for k in options:
        if k not in valid:
            raise ConfigError(
                f"unknown option '{section}.options.{k}' for {component}; valid options: "
                f"{', '.join(valid) or '(none)'}"
            )


def build_backbone(cfg: ModelConfig) -> nn.Module:
    """The backbone named by ``model.backbone`` with ``model.options``.

    Raises:
        ConfigError: on an unknown backbone or an invalid option.
    """
    from pairsmith.models.backbones import _BACKBONES, create_backbone, list_backbones

    in_ch = cfg.in_channels if cfg.in_channels is not None else 3
    name, opts = cfg.backbone, dict(cfg.options)
    if ":" in name and not name.startswith("timm:"):
        mod, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"model.backbone {name!r}: cannot import it ({e})") from e
        _check_options("model", name, factory, opts, ["in_channels"])
        backbone: nn.Module = factory(in_channels=in_ch, **opts)
        return backbone
    if name in _BACKBONES:
        _check_options("model", name, _BACKBONES[name], opts, ["in_channels"])
    elif not name.startswith("timm:"):
        raise ConfigError(
            f"unknown model.backbone {name!r}; valid: {', '.join(list_backbones())}, "
            "'timm:<model>' or 'module.path:factory'"
        )
    try:
        return create_backbone(name, in_ch, **opts)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model.options for backbone {name!r}: {e}") from e


def resolve_method_name(name: str) -> str:
    """The registered name for ``name`` (``simclr`` -> ``methods.simclr``).

    Raises:
        ConfigError: if no such method is registered (the message lists them).
    """
    from pairsmith.core.registry import list_methods

    names = list_methods()
    for candidate in (name, f"methods.{name}"):
        if candidate in names:
            return candidate
    short = [n.removeprefix("methods.") for n in names]
    raise ConfigError(f"unknown method.name {name!r}; registered methods: {', '.join(short)}")


def build_method(cfg: Config) -> Method:
    """Backbone then method, in this order (the random-init baseline relies on it).

    Raises:
        ConfigError: on an unknown method or backbone, or an invalid option.
    """
    from pairsmith.core.registry import create_method, list_entries

    backbone = build_backbone(cfg.model)
    name = resolve_method_name(cfg.method.name)
    entry = next(e for e in list_entries("method") if e.name == name)
    opts = dict(cfg.method.options)
    _check_options("method", f"method {name!r}", entry.obj, opts, ["backbone", "self"])
    try:
        method = create_method(name, backbone=backbone, **opts)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"method.options for {name!r}: {e}") from e
    if not isinstance(method, Method):
        raise ConfigError(f"method {name!r} does not build a pairsmith Method ({type(method)})")
    return method


def build_views(cfg: ViewsConfig, channels: int, num_views: int) -> nn.Module:
    """The batched augmentation of ``views.preset`` producing ``num_views`` views.

    Raises:
        ConfigError: on an invalid option, or if the preset's view count differs from the
            method's ``num_views``.
    """
    from pairsmith.data import views as V

    if cfg.size is None:
        raise ConfigError("views.size is not set (it is resolved from the data before building)")
    opts = _tuples(cfg.options)
    spec_fields = [f.name for f in dataclasses.fields(V.ViewSpec) if f.name != "size"]
    try:
        if cfg.preset in ("simclr", "mocov2"):
            bad = sorted(set(opts) - set(spec_fields))
            if bad:
                raise ConfigError(
                    f"unknown option 'views.options.{bad[0]}' for preset {cfg.preset!r}; valid "
                    f"options: {', '.join(spec_fields)}"
                )
            factory = V.SimCLRViews if cfg.preset == "simclr" else V.MoCoV2Views
            views = factory(cfg.size, channels, cfg.mean, cfg.std, n_views=num_views, **opts)
        elif cfg.preset == "multicrop":
            extra = ["local_size", "n_local", "global_scale", "local_scale"]
            bad = sorted(set(opts) - set(spec_fields) - set(extra) - {"scale"})
            if bad:
                raise ConfigError(
                    f"unknown option 'views.options.{bad[0]}' for preset 'multicrop'; valid "
                    f"options: {', '.join(extra + spec_fields)}"
                )
            local = int(opts.pop("local_size", max(8, cfg.size * 3 // 7)))
            n_local = int(opts.pop("n_local", max(0, num_views - 2)))
            views = V.MultiCropViews(cfg.size, local, n_local, channels, cfg.mean, cfg.std, **opts)
        else:  # "none": normalisation only; every view is the image itself
            spec = V.ViewSpec(
                size=cfg.size, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0,
                gray_p=0.0,
            )  # fmt: skip
            views = V.Views([spec] * num_views, channels, cfg.mean, cfg.std)
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"views.options for preset {cfg.preset!r}: {e}") from e
    if views.num_views != num_views:
        raise ConfigError(
            f"views preset {cfg.preset!r} makes {views.num_views} views but the method needs "
            f"{num_views}; adjust views.options.n_local or the method's num_views"
        )
    return views


def load_diagnostics() -> Diagnostics | None:
    """``pairsmith.eval.diagnostics.pair_diagnostics`` if that module exists."""
    try:
        mod = importlib.import_module("pairsmith.eval.diagnostics")
    except ModuleNotFoundError as e:
        if e.name != "pairsmith.eval.diagnostics":
            raise
        return None
    fn = getattr(mod, "pair_diagnostics", None)
    return fn if callable(fn) else None


# --------------------------------------------------------------------------- schedule
def lr_factor(step: int, warmup: int, total: int, schedule: str, min_ratio: float) -> float:
    """Learning-rate multiplier at optimiser step ``step`` (0-based).

    Linear warm-up over ``warmup`` steps (``(step + 1) / warmup``), then ``cosine`` from 1 to
    ``min_ratio`` at ``total`` or ``constant`` 1.
    """
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def step_seed(seed: int, step: int, rank: int) -> int:
    """The RNG seed of one training step on one rank (fits in 63 bits)."""
    return (seed * 1_000_003 + step) * 1_009 + rank & ((1 << 63) - 1)


def param_groups(
    model: nn.Module, weight_decay: float, exclude_norm_bias: bool
) -> list[dict[str, Any]]:
    """Trainable parameters, optionally without weight decay on biases and norm layers."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not exclude_norm_bias:
        return [{"params": [p for _, p in params], "weight_decay": weight_decay}]
    no_wd = [p for n, p in params if p.ndim <= 1]
    wd = [p for n, p in params if p.ndim > 1]
    return [
        {"params": wd, "weight_decay": weight_decay},
        {"params": no_wd, "weight_decay": 0.0},
    ]


# --------------------------------------------------------------------------- module
class ContrastiveModule(pl.LightningModule):
    """Trains a registered method; everything it needs is in the (resolved) config.

    Args:
        config: the resolved config as a nested dict (``Config.to_dict()``): ``model.in_channels``
            and ``views.size``/``mean``/``std`` filled in from the data. Saved as the
            checkpoint's hyper-parameters, so ``load_from_checkpoint(path)`` rebuilds the module.
        steps_per_epoch: optimiser steps per epoch (for warm-up given in epochs).

    Attributes:
        method: the :class:`Method` (its ``encoder()`` is what evaluation uses).
        views: the batched augmentation module.
    """

    def __init__(self, config: dict[str, Any], steps_per_epoch: int | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.cfg = Config.from_dict(config)
        import_plugins(self.cfg.imports)
        # The method first: the random-init baseline rebuilds it right after the same seed.
        self.method: Method = build_method(self.cfg)
        channels = self.cfg.model.in_channels or 3
        self.views = build_views(self.cfg.views, channels, self.method.num_views)
        self.steps_per_epoch = steps_per_epoch
        self.diagnostics = load_diagnostics()
        self.total_steps = 0
        self._step = 0

    # ---------------------------------------------------------------- training
    def on_fit_start(self) -> None:
        """Channels-last memory format when asked."""
        if self.cfg.trainer.channels_last:
            self.method.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def training_step(self, batch: tuple[Tensor, dict[str, Tensor]], batch_idx: int) -> Tensor:
        """Views, the method's step, logging; returns the loss."""
        images, keys = batch
        step = self._step = self.global_step
        torch.manual_seed(step_seed(self.cfg.trainer.seed, step, self.global_rank))
        views = self.views(images)
        if self.cfg.trainer.channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        epoch = self.current_epoch
        out: StepOutput = self.method.training_step(views, keys, step=step, epoch=epoch)
        loss = out.loss
        if not bool(torch.isfinite(loss.detach())):
            raise FloatingPointError(
                f"the loss is {float(loss)} at step {step} (epoch {self.current_epoch}); lower "
                "optim.lr, raise the temperature or check method.options"
            )
        self._log_step(out, keys, step, images.shape[0])
        return loss

    @torch.no_grad()
    def _log_step(
        self, out: StepOutput, keys: Mapping[str, Tensor], step: int, batch_size: int
    ) -> None:
        tr = self.cfg.trainer
        if step % tr.log_every != 0:
            return
        metrics: dict[str, Tensor | float] = {"loss": out.loss.detach()}
        metrics.update({f"train/{k}": v for k, v in out.logs.items()})
        every = tr.diagnostics_every
        if self.diagnostics is not None and every > 0 and step % every == 0:
            diag = self.diagnostics(out, keys)
            metrics.update({f"diag/{k}": v for k, v in diag.items()})
        opt = self.optimizers(use_pl_optimizer=False)
        if isinstance(opt, torch.optim.Optimizer):
            metrics["lr"] = opt.param_groups[0]["lr"]
        names = sorted(metrics)
        values = torch.tensor(
            [float(metrics[n]) for n in names], dtype=torch.float64, device=out.loss.device
        )
        if self.trainer.world_size > 1:
            # One all-reduce for every metric: the logged loss is the global-batch loss.
            values = self.trainer.strategy.reduce(values, reduce_op="mean")
        logged = {n: float(v) for n, v in zip(names, values.tolist(), strict=True)}
        self.log("loss", logged.pop("loss"), prog_bar=True, on_step=True, batch_size=batch_size)
        self.log_dict(logged, on_step=True, on_epoch=False, batch_size=batch_size)

    def optimizer_step(
        self,
        epoch: int,
        batch_idx: int,
        optimizer: Any,
        optimizer_closure: Callable[[], Any] | None = None,
    ) -> None:
        """The optimiser step, then ``method.after_optimizer_step`` (EMA, queue pushes).

        Here rather than in ``on_train_batch_end``: callbacks (the step checkpoint) run their
        ``on_train_batch_end`` before the module's, and must see the updated momentum encoder
        and queue.
        """
        optimizer.step(closure=optimizer_closure)
        self.method.after_optimizer_step(step=self._step, total_steps=self.total_steps)

    # ---------------------------------------------------------------- optimisation
    def configure_optimizers(self) -> Any:
        """SGD / AdamW with a per-step warm-up + cosine ``LambdaLR``."""
        o = self.cfg.optim
        lr = o.lr
        if o.lr_scaling != "none":
            ratio = self.cfg.data.batch_size / 256
            lr *= ratio if o.lr_scaling == "linear" else math.sqrt(ratio)
        groups = param_groups(self.method, o.weight_decay, o.exclude_norm_bias_from_wd)
        opt: torch.optim.Optimizer
        if o.name == "sgd":
            opt = torch.optim.SGD(groups, lr=lr, momentum=o.momentum, nesterov=o.nesterov)
        elif o.name == "adamw":
            opt = torch.optim.AdamW(groups, lr=lr, betas=(o.betas[0], o.betas[1]))
        else:
            opt = torch.optim.Adam(groups, lr=lr, betas=(o.betas[0], o.betas[1]))
        spe = self.steps_per_epoch
        if spe is None:
            total = int(self.trainer.estimated_stepping_batches)
            spe = max(1, total // max(1, self.trainer.max_epochs or 1))
        else:
            # Not estimated_stepping_batches: it sets up the train loader before the loop state
            # is restored, and the loader's mid-epoch position would then never be loaded.
            total = spe * self.cfg.trainer.epochs
            if self.cfg.trainer.max_steps > 0:
                total = min(total, self.cfg.trainer.max_steps)
        warmup = int(round(o.warmup_epochs * spe))
        self.total_steps = total
        fn = functools.partial(
            lr_factor, warmup=warmup, total=total, schedule=o.schedule, min_ratio=o.min_lr_ratio
        )
        sched = torch.optim.lr_scheduler.LambdaLR(opt, fn)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
