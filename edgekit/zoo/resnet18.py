"""A ResNet18 (He et al. 2015, arXiv:1512.03385), written here because
torchvision does not import beside this torch build.

BasicBlock: two 3x3 convs with batch norm, plus the identity (or a strided
1x1 projection when the shape changes). Four stages of two blocks each,
64 -> 128 -> 256 -> 512 channels: 11.7 M parameters, 1.8 GMACs at 224x224.
Dense 3x3 convolutions make it the opposite of MobileNetV2 (depthwise,
memory-bound), which is why the benchmarks carry both. Random weights.
"""

from __future__ import annotations

import torch
from torch import nn

# Blocks per stage and the stage widths: ResNet18 in Table 1 of the paper.
LAYERS = (2, 2, 2, 2)
WIDTHS = (64, 128, 256, 512)
STEM = 64  # the 7x7 stem's channels


def projection(c_in: int, c_out: int, stride: int) -> nn.Module | None:
    """Option B of the paper: a strided 1x1 projection shortcut only where the shape changes."""
    if stride == 1 and c_in == c_out:
        return None
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = projection(c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNet(nn.Module):
    """(N, 3, H, W) -> (N, num_classes): a 7x7 stem of STEM channels and max pooling, four stages of
    `block`s (block(c_in, c_out, stride)) whose outputs are `widths` wide, then average pooling and a
    Linear. resnet50.py uses it with its bottleneck block."""

    def __init__(self, num_classes: int = 1000, layers=LAYERS, widths=WIDTHS, block=BasicBlock) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, STEM, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, c_in = [], STEM
        for i, (blocks, c_out) in enumerate(zip(layers, widths)):
            stride = 1 if i == 0 else 2  # the stem already downsampled 4x
            stages.append(nn.Sequential(*[block(c_in if b == 0 else c_out, c_out, stride if b == 0 else 1)
                                          for b in range(blocks)]))
            c_in = c_out
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def build_model() -> nn.Module:
    """ResNet18 for 224x224 ImageNet, 1000 classes (random weights)."""
    return ResNet().eval()
