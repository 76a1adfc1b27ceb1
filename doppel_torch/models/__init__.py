"""Encoders trained by doppel-torch."""

from doppel_torch.models.resnet import BasicBlock, ResNet18Encoder

__all__ = ["BasicBlock", "ResNet18Encoder"]
