"""Run configuration: typed sections, YAML files, ``key.sub=value`` overrides.

A config is a :class:`Config` of seven sections (``data``, ``views``, ``model``, ``method``,
``optim``, ``trainer``, ``eval``) plus ``imports`` (modules to import before building, so that
components registered outside the library are found). YAML files under ``configs/`` give the
values; the command line overrides single keys with ``section.key=value`` where ``value`` is
parsed as YAML (``optim.lr=0.06``, ``views.options.scale=[0.5,1.0]``, ``data.subset=null``).

Every key is checked: an unknown key raises :class:`ConfigError` naming it and listing the valid
keys of its section; a value of the wrong type names the key and the expected type. The free-form
``options`` mappings (``views.options``, ``model.options``, ``method.options``, ``data.options``)
are passed to the component they configure, which checks them itself.

Examples:
    >>> cfg = load_config(None, ["optim.lr=0.06", "method.options.temperature=0.2"])
    >>> cfg.optim.lr, cfg.method.options["temperature"]
    (0.06, 0.2)
    >>> load_config(None, ["optim.lrr=1"])
    Traceback (most recent call last):
    ...
    pairsmith.app.config.ConfigError: unknown key 'optim.lrr' (did you mean 'optim.lr'?); ...
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

DATA_NAMES = ("fashion_mnist", "textures", "image_folder", "cifar10", "cifar100", "stl10")
VIEW_PRESETS = ("simclr", "mocov2", "multicrop", "none")
OPTIMIZERS = ("sgd", "adamw", "adam")
SCHEDULES = ("cosine", "constant")


class ConfigError(ValueError):
    """A config key is unknown, has a value of the wrong type, or an option is invalid."""


@dataclass
class DataConfig:
    """``data``: what is loaded (kept in memory as ``uint8`` tensors).

    Attributes:
        name: fashion_mnist | textures | image_folder | cifar10 | cifar100 | stl10.
        root: folder of the files (``None``: the loader's default search, e.g. the
            ``PAIRSMITH_DATA`` variable then ``/usr/share/datasets/fashion-mnist``).
        test_root: image_folder only: folder of the test split (``None``: hold out
            ``test_fraction`` of ``root``).
        test_fraction: image_folder only: fraction held out as the test split.
        subset: class-balanced training subset size (``None``: the whole split).
        test_subset: class-balanced test subset size (``None``: the whole split).
        subset_seed: seed of the subset selection (and of the textures crops).
        batch_size: **global** batch size (split evenly over ``trainer.devices``).
        num_workers: DataLoader worker processes (0: index the in-memory tensors in the
            training process, the fastest on few cores).
        drop_last: drop the last incomplete batch (required with several devices).
        download: let the loader download missing files (off: nothing is fetched).
        options: extra keyword arguments of the data-set class (e.g. textures
            ``crop_size``, ``crops_per_texture``; image_folder ``size``, ``mode``).
    """

    name: str = "fashion_mnist"
    root: str | None = None
    test_root: str | None = None
    test_fraction: float = 0.1
    subset: int | None = None
    test_subset: int | None = None
    subset_seed: int = 0
    batch_size: int = 256
    num_workers: int = 0
    drop_last: bool = True
    download: bool = False
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ViewsConfig:
    """``views``: the batched augmentations (``pairsmith.data.views``), run on the device.

    Attributes:
        preset: simclr | mocov2 | multicrop | none (``none``: normalisation only, every view
            identical; for tests and ablations).
        size: output side (``None``: the image side; multicrop: the global crop side).
        mean: per-channel normalisation mean in [0, 1] units (``None``: the data set's known
            statistics, else computed from the training images).
        std: per-channel normalisation std (``None``: as ``mean``).
        options: ``ViewSpec`` fields (``scale``, ``flip_p``, ``affine_p``, ``erase_p``, ...)
            or, for multicrop, ``local_size``, ``n_local``, ``global_scale``, ``local_scale``.
    """

    preset: str = "simclr"
    size: int | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelConfig:
    """``model``: the backbone (the encoder evaluated by kNN / linear probe).

    Attributes:
        backbone: ``small_cnn``, ``resnet18_cifar``, ``timm:<name>`` or ``module.path:factory``
            (any callable taking ``in_channels`` and the options, returning a module with
            ``out_dim``).
        in_channels: input channels (``None``: from the data).
        options: keyword arguments of the backbone (e.g. small_cnn ``channels``).
    """

    backbone: str = "small_cnn"
    in_channels: int | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class MethodConfig:
    """``method``: the recipe, created by ``pairsmith.core.registry.create_method``.

    Attributes:
        name: registered name (``methods.simclr``); the ``methods.`` prefix may be omitted.
        options: keyword arguments of the recipe (temperature, queue size, curator options);
            unset ones keep the recipe's defaults.
    """

    name: str = "simclr"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    """``optim``: optimiser and per-step learning-rate schedule.

    Attributes:
        name: sgd | adamw | adam (no LARS: the small-batch CPU set-ups do not need it).
        lr: peak learning rate (after ``lr_scaling``).
        lr_scaling: none | linear | sqrt: multiply ``lr`` by ``batch_size / 256`` or its
            square root.
        weight_decay: L2 / decoupled weight decay.
        momentum: SGD momentum.
        nesterov: SGD Nesterov momentum.
        betas: Adam(W) betas.
        warmup_epochs: linear warm-up length in epochs (fractions allowed), per step.
        schedule: cosine | constant after the warm-up.
        min_lr_ratio: final learning rate as a fraction of the peak (cosine).
        exclude_norm_bias_from_wd: no weight decay on biases and normalisation parameters.
    """

    name: str = "sgd"
    lr: float = 0.12
    lr_scaling: str = "none"
    weight_decay: float = 5e-4
    momentum: float = 0.9
    nesterov: bool = False
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_epochs: float = 0.0
    schedule: str = "cosine"
    min_lr_ratio: float = 0.0
    exclude_norm_bias_from_wd: bool = False


@dataclass
class TrainerConfig:
    """``trainer``: the Lightning trainer.

    Attributes:
        epochs: training epochs (the length of the learning-rate schedule).
        max_steps: stop after this many optimiser steps and use it as the schedule length
            (-1: ``epochs`` decides).
        devices: number of processes (CPU: DDP over gloo when > 1).
        accelerator: cpu | gpu | auto.
        strategy: auto | ddp | ddp_spawn (auto: ddp when devices > 1).
        seed: seeds weights, data order (per epoch) and augmentations (per step).
        precision: Lightning precision (``32-true``, ``bf16-mixed``, ``16-mixed`` on GPU).
        log_every: write logged metrics every this many steps.
        diagnostics_every: compute the pair diagnostics every this many steps (0: never).
        deterministic: ``torch.use_deterministic_algorithms`` through Lightning.
        num_threads: intra-op threads per process (``None``: cores / devices).
        gradient_clip_val: clip the gradient norm (``None``: off).
        channels_last: use the channels-last memory format (faster convolutions on CPU).
        progress_bar: show Lightning's TQDM progress bar.
        checkpoint_every_epochs: save a checkpoint every this many epochs (and ``last.ckpt``).
        checkpoint_every_steps: also save ``last.ckpt`` every this many steps (0: off); resuming
            from it continues mid-epoch.
        keep_checkpoints: how many epoch checkpoints to keep besides ``last.ckpt`` (-1: all).
    """

    epochs: int = 15
    max_steps: int = -1
    devices: int = 1
    accelerator: str = "cpu"
    strategy: str = "auto"
    seed: int = 0
    precision: str = "32-true"
    log_every: int = 1
    diagnostics_every: int = 1
    deterministic: bool = False
    num_threads: int | None = None
    gradient_clip_val: float | None = None
    channels_last: bool = False
    progress_bar: bool = True
    checkpoint_every_epochs: int = 1
    checkpoint_every_steps: int = 0
    keep_checkpoints: int = 1


@dataclass
class LinearConfig:
    """``eval.linear``: logistic-regression probe on frozen backbone features.

    Attributes:
        enabled: run the probe in the final / offline evaluation.
        epochs: optimiser iterations (L-BFGS) or epochs (SGD / Adam).
        optimizer: lbfgs | sgd | adam (see ``pairsmith.eval.linear``).
        lr: learning rate (``None``: the optimiser's default).
        weight_decay: L2 penalty.
    """

    enabled: bool = False
    epochs: int = 100
    optimizer: str = "lbfgs"
    lr: float | None = None
    weight_decay: float = 1e-4


@dataclass
class EvalConfig:
    """``eval``: weighted kNN online (every epoch) and at the end; optional linear probe.

    Attributes:
        knn_k: neighbours (InstDisc's 200).
        knn_t: vote temperature (0.1).
        online: evaluate kNN during training, logged as ``knn_top1``.
        online_every: epochs between online evaluations (the last epoch is always evaluated).
        online_test_size: held-out test images used online (``None``: all).
        online_bank_size: training images in the online kNN bank (``None``: all).
        final: at the end, kNN top-1 of the trained encoder, of the same encoder at random
            initialisation and of raw pixels, on the whole test split -> ``results.json``.
        batch_size: feature-extraction batch size.
        chunk_size: test rows per kNN similarity block.
        linear: linear probe options.
    """

    knn_k: int = 200
    knn_t: float = 0.1
    online: bool = True
    online_every: int = 1
    online_test_size: int | None = 2000
    online_bank_size: int | None = None
    final: bool = True
    batch_size: int = 512
    chunk_size: int = 1024
    linear: LinearConfig = field(default_factory=LinearConfig)


@dataclass
class Config:
    """A whole run: the seven sections plus ``imports``.

    Attributes:
        imports: modules imported before anything is built (to register outside components).
    """

    data: DataConfig = field(default_factory=DataConfig)
    views: ViewsConfig = field(default_factory=ViewsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    imports: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A plain nested ``dict`` (YAML-serialisable)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Config:
        """Build and validate a config from a nested mapping (missing keys keep defaults).

        Raises:
            ConfigError: on an unknown key or a value of the wrong type.
        """
        cfg = _build(cls, d, "")
        validate(cfg)
        return cfg


# --------------------------------------------------------------------------- building
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(hint))
    if origin is not None:
        return getattr(origin, "__name__", str(origin))
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", str(hint))


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against a field's type hint; return it (numbers converted)."""
    if hint is Any:
        return value
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key} must be {_type_name(hint)}, got {value!r}")
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a mapping of its keys, got {value!r}")
        return _build(hint, value, key + ".")  # type: ignore[arg-type]
    if origin in (list, tuple, Sequence):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        (inner,) = typing.get_args(hint)[:1] or (Any,)
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return {str(k): v for k, v in value.items()}
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # YAML 1.1 reads "1e-3" (no dot) as a string: accept it as a number.
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key} must be a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {hint!r}")  # pragma: no cover


def _unknown(key: str, valid: Sequence[str], section: str) -> ConfigError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], valid, n=1)
    hint = ""
    if close:
        prefix = key.rsplit(".", 1)[0] + "." if "." in key else ""
        hint = f" (did you mean '{prefix}{close[0]}'?)"
    where = f"in '{section}'" if section else "at the top level"
    return ConfigError(f"unknown key '{key}'{hint}; valid keys {where}: {', '.join(sorted(valid))}")


def _build(cls: type, d: Mapping[str, Any], prefix: str) -> Any:
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for k, v in d.items():
        if k not in names:
            raise _unknown(f"{prefix}{k}", names, prefix.rstrip("."))
        kwargs[k] = _coerce(v, hints[k], f"{prefix}{k}")
    return cls(**kwargs)


def validate(cfg: Config) -> None:
    """Check the values that have a closed set of choices or a range.

    Raises:
        ConfigError: naming the key, the value and what is allowed.
    """

    def choice(key: str, value: str, allowed: Sequence[str]) -> None:
        if value not in allowed:
            raise ConfigError(f"{key} must be one of {list(allowed)}, got {value!r}")

    def positive(key: str, value: float | int | None, allow_none: bool = False) -> None:
        if value is None and allow_none:
            return
        bad = value is None or not value > 0
        if bad or (isinstance(value, float) and not math.isfinite(value)):
            raise ConfigError(f"{key} must be > 0, got {value!r}")

    def non_negative(key: str, value: float | int) -> None:
        if not value >= 0:
            raise ConfigError(f"{key} must be >= 0, got {value!r}")

    choice("data.name", cfg.data.name, DATA_NAMES)
    choice("views.preset", cfg.views.preset, VIEW_PRESETS)
    choice("optim.name", cfg.optim.name, OPTIMIZERS)
    choice("optim.schedule", cfg.optim.schedule, SCHEDULES)
    choice("optim.lr_scaling", cfg.optim.lr_scaling, ("none", "linear", "sqrt"))
    choice("trainer.strategy", cfg.trainer.strategy, ("auto", "ddp", "ddp_spawn"))
    choice("trainer.accelerator", cfg.trainer.accelerator, ("cpu", "gpu", "cuda", "auto"))
    positive("data.batch_size", cfg.data.batch_size)
    positive("data.subset", cfg.data.subset, allow_none=True)
    positive("data.test_subset", cfg.data.test_subset, allow_none=True)
    non_negative("data.num_workers", cfg.data.num_workers)
    if not 0 < cfg.data.test_fraction < 1:
        raise ConfigError(f"data.test_fraction must be in (0, 1), got {cfg.data.test_fraction}")
    positive("views.size", cfg.views.size, allow_none=True)
    positive("optim.lr", cfg.optim.lr)
    non_negative("optim.weight_decay", cfg.optim.weight_decay)
    non_negative("optim.momentum", cfg.optim.momentum)
    non_negative("optim.warmup_epochs", cfg.optim.warmup_epochs)
    if not 0 <= cfg.optim.min_lr_ratio <= 1:
        raise ConfigError(f"optim.min_lr_ratio must be in [0, 1], got {cfg.optim.min_lr_ratio}")
    if len(cfg.optim.betas) != 2:
        raise ConfigError(f"optim.betas must hold two numbers, got {cfg.optim.betas}")
    positive("trainer.epochs", cfg.trainer.epochs)
    if cfg.trainer.max_steps != -1:
        positive("trainer.max_steps", cfg.trainer.max_steps)
    positive("trainer.devices", cfg.trainer.devices)
    positive("trainer.log_every", cfg.trainer.log_every)
    non_negative("trainer.diagnostics_every", cfg.trainer.diagnostics_every)
    positive("trainer.num_threads", cfg.trainer.num_threads, allow_none=True)
    positive("trainer.checkpoint_every_epochs", cfg.trainer.checkpoint_every_epochs)
    non_negative("trainer.checkpoint_every_steps", cfg.trainer.checkpoint_every_steps)
    if cfg.trainer.keep_checkpoints < -1:
        keep = cfg.trainer.keep_checkpoints
        raise ConfigError(f"trainer.keep_checkpoints must be >= -1, got {keep}")
    if cfg.trainer.devices > 1:
        if cfg.data.batch_size % cfg.trainer.devices:
            raise ConfigError(
                f"data.batch_size ({cfg.data.batch_size}) must be divisible by trainer.devices "
                f"({cfg.trainer.devices}): it is the global batch, split evenly over the devices"
            )
        if not cfg.data.drop_last:
            raise ConfigError("data.drop_last must be true with several devices (equal shards)")
    positive("eval.knn_k", cfg.eval.knn_k)
    positive("eval.knn_t", cfg.eval.knn_t)
    positive("eval.online_every", cfg.eval.online_every)
    positive("eval.online_test_size", cfg.eval.online_test_size, allow_none=True)
    positive("eval.online_bank_size", cfg.eval.online_bank_size, allow_none=True)
    positive("eval.batch_size", cfg.eval.batch_size)
    positive("eval.chunk_size", cfg.eval.chunk_size)
    positive("eval.linear.epochs", cfg.eval.linear.epochs)
    for section in ("data", "views", "model", "method"):
        for k, v in getattr(cfg, section).options.items():
            if ":" in k and v is None:
                raise ConfigError(
                    f"{section}.options has the key {k!r}: YAML needs a space after the colon, "
                    f"e.g. {section}.options={{{k.replace(':', ': ', 1)}}}"
                )
    for name in ("mean", "std"):
        v = getattr(cfg.views, name)
        if v is not None and len(v) == 0:
            raise ConfigError(f"views.{name} must list one value per channel, got {v}")


# --------------------------------------------------------------------------- files and overrides
def _yaml() -> Any:
    try:
        import yaml
    except ImportError as e:  # pragma: no cover - yaml is part of the train extra
        raise ImportError("the training app needs PyYAML: pip install 'pairsmith[train]'") from e
    return yaml


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML mapping (an empty file is an empty mapping).

    Raises:
        FileNotFoundError: if the file is missing.
        ConfigError: if it is not valid YAML or not a mapping.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file not found: {p}")
    yaml = _yaml()
    try:
        d = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{p} is not valid YAML: {e}") from e
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise ConfigError(f"{p} must hold a mapping of sections, got {type(d).__name__}")
    return d


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into ``(["a", "b", "c"], yaml(value))``.

    Raises:
        ConfigError: if there is no ``=`` or the key is empty.
    """
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not key.strip() or any(not p for p in parts):
        raise ConfigError(f"override {text!r} has an empty key")
    yaml = _yaml()
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({e})") from e
    return parts, value


def set_path(d: dict[str, Any], parts: Sequence[str], value: Any) -> None:
    """Set ``d[p0][p1]...[pn] = value``, creating intermediate mappings.

    Raises:
        ConfigError: if an intermediate value exists and is not a mapping.
    """
    cur = d
    for i, p in enumerate(parts[:-1]):
        nxt = cur.get(p)
        if nxt is None:
            nxt = cur[p] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(
                f"cannot set '{'.'.join(parts)}': '{'.'.join(parts[: i + 1])}' is {nxt!r}, "
                "not a section"
            )
        cur = nxt
    cur[parts[-1]] = value


def merge(base: dict[str, Any], other: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``other`` into a copy of ``base`` (mappings merge, other values replace)."""
    out = copy.deepcopy(base)
    for k, v in other.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    base: Mapping[str, Any] | None = None,
) -> Config:
    """Defaults <- ``base`` <- the YAML file <- the ``key=value`` overrides, validated.

    Args:
        path: YAML file (``None``: defaults only).
        overrides: ``section.key=value`` strings, applied in order.
        base: a nested mapping applied before the file (e.g. a run's saved config).

    Returns:
        The validated :class:`Config`.

    Raises:
        ConfigError: on an unknown key, a malformed override or an invalid value.
        FileNotFoundError: if ``path`` does not exist.
    """
    d: dict[str, Any] = Config().to_dict()
    if base is not None:
        d = merge(d, base)
    if path is not None:
        d = merge(d, read_yaml(path))
    for o in overrides:
        parts, value = parse_override(o)
        set_path(d, parts, value)
    return Config.from_dict(d)


def dump_config(cfg: Config, path: str | os.PathLike[str]) -> None:
    """Write the resolved config as YAML (keys in section order)."""
    yaml = _yaml()
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=None))


def section_keys(section: str) -> list[str]:
    """The valid keys of a section (``"optim"``, ``"eval.linear"``), for help texts."""
    cls: Any = Config
    for part in section.split("."):
        cls = _hints(cls)[part]
    return [f.name for f in dataclasses.fields(cls)]
