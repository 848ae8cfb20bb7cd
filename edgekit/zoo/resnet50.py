"""A ResNet-50 (He et al. 2015, arXiv:1512.03385), written here because torchvision does not
import beside this torch build.

Bottleneck blocks: 1x1 reduce, 3x3, 1x1 expand (x4), each with batch norm, plus the identity
(or a strided 1x1 projection). Stages of 3, 4, 6, 3 blocks, 64 -> 128 -> 256 -> 512 inner
widths: 25.6 M parameters, 4.1 GMACs at 224x224, the stride on the 3x3 conv as torchvision's
(ResNet v1.5). Random weights: the cost model's check (docs/cost_model.md) needs its structure.
"""

from __future__ import annotations

import torch
from torch import nn

from edgekit.zoo.resnet18 import ResNet, projection

LAYERS = (3, 4, 6, 3)  # blocks per stage: Table 1 of the paper
EXPANSION = 4  # a bottleneck's output is 4x its inner width
WIDTHS = tuple(EXPANSION * w for w in (64, 128, 256, 512))  # each stage's output channels


class Bottleneck(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        width = c_out // EXPANSION
        self.conv1, self.bn1 = nn.Conv2d(c_in, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, c_out, 1, bias=False), nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = projection(c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


def build_model() -> nn.Module:
    """ResNet-50 for 224x224 ImageNet, 1000 classes (random weights)."""
    torch.manual_seed(0)
    return ResNet(layers=LAYERS, widths=WIDTHS, block=Bottleneck).eval()
