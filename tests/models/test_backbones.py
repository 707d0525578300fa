import builtins

import pytest
import torch

from pairsmith.models import (
    PredictionHead,
    ProjectionHead,
    SmallCNN,
    create_backbone,
    list_backbones,
    mlp,
    resnet18_cifar,
)


def test_small_cnn_default_matches_reference_setup():
    net = SmallCNN(1)
    assert sum(p.numel() for p in net.parameters()) == 388_320
    assert net.out_dim == 256
    assert net(torch.zeros(3, 1, 28, 28)).shape == (3, 256)


def test_small_cnn_configurable():
    net = SmallCNN(3, channels=(8, 16), convs_per_block=2)
    assert net.out_dim == 16
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 16)
    with pytest.raises(ValueError, match="channels"):
        SmallCNN(1, channels=())


@pytest.mark.parametrize("c", [1, 3, 4])
def test_resnet18_cifar(c):
    net = resnet18_cifar(c, width=8)
    assert net.out_dim == 64
    assert net(torch.zeros(2, c, 32, 32)).shape == (2, 64)
    # CIFAR stem: 3x3 stride-1 conv, no max-pool
    assert net.stem[0].kernel_size == (3, 3) and net.stem[0].stride == (1, 1)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in net.modules())


def test_factory():
    assert set(list_backbones()) >= {"small_cnn", "resnet18_cifar"}
    net = create_backbone("small_cnn", in_channels=1, channels=None)
    assert net.out_dim == 256  # None kwargs are dropped
    with pytest.raises(ValueError, match="unknown"):
        create_backbone("vgg", 3)


def test_timm_missing_is_clear(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "timm":
            raise ImportError("blocked")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match="timm"):
        create_backbone("timm:resnet18", 3)


def test_heads():
    head = ProjectionHead(16, 32, 8, layers=3)
    assert head(torch.randn(4, 16)).shape == (4, 8)
    assert sum(isinstance(m, torch.nn.Linear) for m in head.modules()) == 3
    pred = PredictionHead(8, 4)
    assert pred(torch.randn(4, 8)).shape == (4, 8) and pred.out_dim == 8
    one = mlp(5, 7, 3, layers=1)
    assert len(one) == 1
    last = mlp(5, 7, 3, layers=2, last_bn=True)
    assert isinstance(last[-1], torch.nn.BatchNorm1d) and not last[-1].affine
    with pytest.raises(ValueError, match="layers"):
        mlp(5, 7, 3, layers=0)
