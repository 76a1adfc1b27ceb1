"""ResNet18 audio encoder: log-mel (B, 1, 96, 64) -> embedding (B, embed_dim).

Our own implementation (no torchvision dependency) of He et al. (2016)'s ResNet18 with the layout of
torchvision's ``resnet18(num_classes=embed_dim)``: 7x7/2 stem convolution, 3x3/2 max-pool, four stages of two
BasicBlocks (64, 128, 256, 512 channels, stride 1, 2, 2, 2), global average pool and a linear head. As in the
paper, the stem takes a 1-channel spectrogram. ``width`` scales every stage (64 is ResNet18; tests use 8).
Parameter names follow torchvision (``conv1``, ``bn1``, ``layer1.0.conv1``, ..., ``fc``), so state dicts
line up with a torchvision ResNet18 that has a 1-channel ``conv1``.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity (or 1x1 projection) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18Encoder(nn.Module):
    """ResNet18 encoder for spectrograms.

    Args:
        in_channels: input channels (1 for a log-mel spectrogram).
        embed_dim: output dimension of the linear head (512 in the paper).
        width: channels of the first stage; stages have width x (1, 2, 4, 8). 64 is ResNet18.

    ``forward``: (B, in_channels, T, F) float -> (B, embed_dim) un-normalised embeddings (any T, F >= 32;
    the paper's input is (B, 1, 96, 64)). ``features``: the pooled trunk, (B, 8 * width), before the head.
    """

    def __init__(self, in_channels: int = 1, embed_dim: int = 512, width: int = 64) -> None:
        super().__init__()
        if in_channels < 1 or embed_dim < 1 or width < 1:
            raise ValueError(
                f"ResNet18Encoder needs positive in_channels, embed_dim and width; got "
                f"in_channels={in_channels}, embed_dim={embed_dim}, width={width}"
            )
        self.in_channels = in_channels
        self.embed_dim = embed_dim
        self.width = width
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        channels = [width, 2 * width, 4 * width, 8 * width]
        self.layer1 = self._stage(width, channels[0], stride=1)
        self.layer2 = self._stage(channels[0], channels[1], stride=2)
        self.layer3 = self._stage(channels[1], channels[2], stride=2)
        self.layer4 = self._stage(channels[2], channels[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.feature_dim = channels[3]
        self.fc = nn.Linear(self.feature_dim, embed_dim)
        self._init_weights()

    @staticmethod
    def _stage(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
        return nn.Sequential(BasicBlock(in_channels, out_channels, stride), BasicBlock(out_channels, out_channels))

    def _init_weights(self) -> None:
        # torchvision's ResNet initialisation: He (fan_out) for convolutions, BN to identity.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, T, F) -> pooled trunk features (B, 8 * width)."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"ResNet18Encoder expects (batch, {self.in_channels}, time, mel) input, got shape {tuple(x.shape)}"
            )
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, T, F) -> (B, embed_dim) un-normalised embeddings."""
        return self.fc(self.features(x))
