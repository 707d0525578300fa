"""Backbones and heads."""

from pairsmith.models.backbones import (
    ResNetCIFAR,
    SmallCNN,
    TimmBackbone,
    create_backbone,
    list_backbones,
    resnet18_cifar,
    timm_backbone,
)
from pairsmith.models.heads import PredictionHead, ProjectionHead, mlp

__all__ = [
    "PredictionHead",
    "ProjectionHead",
    "ResNetCIFAR",
    "SmallCNN",
    "TimmBackbone",
    "create_backbone",
    "list_backbones",
    "mlp",
    "resnet18_cifar",
    "timm_backbone",
]
