"""A MobileNetV2 (Sandler et al. 2018, arXiv:1801.04381), written here because
torchvision does not import beside this torch build.

Inverted residual blocks: 1x1 expand -> 3x3 depthwise -> 1x1 project, with a
residual add when stride is 1 and widths match. Those two features (depthwise
groups, residual adds) are what make channel pruning need dependency tracking,
so this net is the pruning stage's structural test. Random weights by default.
"""

from __future__ import annotations

import torch
from torch import nn

# (expansion t, output channels c, repeats n, first stride s): Table 2 of the paper.
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out)]
    return nn.Sequential(*layers, nn.ReLU6()) if act else nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = c_in * expand
        self.use_residual = stride == 1 and c_in == c_out
        layers = [_conv_bn(c_in, hidden, 1)] if expand != 1 else []
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden), _conv_bn(hidden, c_out, 1, act=False)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.use_residual else self.block(x)


class MobileNetV2(nn.Module):
    """(N, 3, H, W) -> (N, num_classes). `width` scales every layer (0.35 .. 1.4 in the paper)."""

    def __init__(self, num_classes: int = 1000, width: float = 1.0, settings=SETTINGS, last_channels: int = 1280) -> None:
        super().__init__()
        c_in = _round8(32 * width)
        layers = [_conv_bn(3, c_in, 3, stride=2)]
        for t, c, n, s in settings:
            c_out = _round8(c * width)
            for i in range(n):
                layers.append(InvertedResidual(c_in, c_out, s if i == 0 else 1, t))
                c_in = c_out
        last = _round8(last_channels * max(1.0, width))
        layers += [_conv_bn(c_in, last, 1), nn.AdaptiveAvgPool2d(1)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def _round8(c: float) -> int:
    # The paper's _make_divisible: multiples of 8, never more than 10 % below the request.
    r = max(8, int(c + 4) // 8 * 8)
    return r + 8 if r < 0.9 * c else r


def build_model() -> nn.Module:
    """Full MobileNetV2 1.0 for 224x224 ImageNet (random weights)."""
    return MobileNetV2().eval()


def build_small() -> nn.Module:
    """A 0.35-width MobileNetV2 for 10 classes: the same structure at test-friendly size (1,3,32,32 inputs)."""
    return MobileNetV2(num_classes=10, width=0.35, last_channels=256).eval()
