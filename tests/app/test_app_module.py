"""The LightningModule drives any Method: step numbers, after_optimizer_step, checkpointed state."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
import torch
from ps_app_helpers import tiny_overrides
from torch import Tensor

import pairsmith.app.module as app_module
from pairsmith.app.config import Config, load_config
from pairsmith.app.train import train
from pairsmith.methods.base import Method, StepOutput


class Recording(Method):
    """A tiny method around another one: records the hook calls, keeps a counter buffer."""

    def __init__(self, inner: Method) -> None:
        super().__init__(inner.backbone)
        self.inner = inner
        self.num_views = inner.num_views
        self.register_buffer("pushes", torch.zeros((), dtype=torch.long))
        self.steps: list[int] = []
        self.after: list[tuple[int, int]] = []

    def training_step(
        self, views: Sequence[Tensor], keys: Mapping[str, Tensor], step: int, epoch: int
    ) -> StepOutput:
        self.steps.append(step)
        return self.inner.training_step(views, keys, step, epoch)

    @torch.no_grad()
    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        self.after.append((step, total_steps))
        self.pushes += 1


def test_module_calls_the_method_hooks_once_per_step(
    fmnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[Recording] = []
    real = app_module.build_method

    def build(cfg: Config) -> Method:
        m = Recording(real(cfg))
        made.append(m)
        return m

    monkeypatch.setattr(app_module, "build_method", build)
    run = tmp_path / "run"
    train(load_config(None, [*tiny_overrides(fmnist_root), "eval.final=false"]), run)
    m = made[0]
    assert m.steps == list(range(8))
    assert m.after == [(s, 8) for s in range(8)]  # after each step, with the schedule length
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert int(ckpt["state_dict"]["method.pushes"]) == 8  # method state is checkpointed
    assert ckpt["hyper_parameters"]["config"]["method"]["name"] == "simclr"
