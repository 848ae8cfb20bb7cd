"""A MobileNetV3-Small (Howard et al. 2019, "Searching for MobileNetV3", arXiv:1905.02244),
written here because torchvision does not import beside this torch build.

What makes it a different test of a toolchain than MobileNetV2: hardswish
activations (x * relu6(x + 3) / 6), squeeze-and-excite blocks (global pool ->
1x1 reduce -> ReLU -> 1x1 expand -> hardsigmoid, multiplied back onto the
features), 5x5 depthwise convolutions, and a hardswish classifier head.
Random weights by default.
"""

from __future__ import annotations

import torch
from torch import nn

# (kernel, expanded channels, output channels, squeeze-excite, activation, stride): Table 2 of the paper.
SMALL = (
    (3, 16, 16, True, "relu", 2),
    (3, 72, 24, False, "relu", 2),
    (3, 88, 24, False, "relu", 1),
    (5, 96, 40, True, "hswish", 2),
    (5, 240, 40, True, "hswish", 1),
    (5, 240, 40, True, "hswish", 1),
    (5, 120, 48, True, "hswish", 1),
    (5, 144, 48, True, "hswish", 1),
    (5, 288, 96, True, "hswish", 2),
    (5, 576, 96, True, "hswish", 1),
    (5, 576, 96, True, "hswish", 1),
)


def _make_divisible(c: float, divisor: int = 8) -> int:
    """Channel counts rounded to a multiple of 8, never below 90 % of the request (the paper's code)."""
    rounded = max(divisor, int(c + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * c else rounded


def _act(name: str) -> nn.Module:
    return nn.Hardswish() if name == "hswish" else nn.ReLU()


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        squeezed = _make_divisible(channels / 4)  # reduction 4 (section 5.3)
        self.reduce = nn.Conv2d(channels, squeezed, 1)
        self.expand = nn.Conv2d(squeezed, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = nn.functional.adaptive_avg_pool2d(x, 1)
        scale = nn.functional.hardsigmoid(self.expand(nn.functional.relu(self.reduce(scale))))
        return x * scale


class Bneck(nn.Module):
    def __init__(self, c_in: int, kernel: int, expanded: int, c_out: int, se: bool, act: str, stride: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if expanded != c_in:
            layers += [nn.Conv2d(c_in, expanded, 1, bias=False), nn.BatchNorm2d(expanded), _act(act)]
        layers += [nn.Conv2d(expanded, expanded, kernel, stride, kernel // 2, groups=expanded, bias=False),
                   nn.BatchNorm2d(expanded), _act(act)]
        if se:
            layers.append(SqueezeExcite(expanded))
        layers += [nn.Conv2d(expanded, c_out, 1, bias=False), nn.BatchNorm2d(c_out)]
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.use_residual else self.block(x)


class MobileNetV3Small(nn.Module):
    """(N, 3, H, W) -> (N, num_classes)."""

    def __init__(self, num_classes: int = 1000, width: float = 1.0, settings=SMALL) -> None:
        super().__init__()
        c = _make_divisible(16 * width)
        layers: list[nn.Module] = [nn.Sequential(nn.Conv2d(3, c, 3, 2, 1, bias=False), nn.BatchNorm2d(c), nn.Hardswish())]
        for kernel, expanded, out, se, act, stride in settings:
            expanded, out = _make_divisible(expanded * width), _make_divisible(out * width)
            layers.append(Bneck(c, kernel, expanded, out, se, act, stride))
            c = out
        last = _make_divisible(576 * width)
        layers.append(nn.Sequential(nn.Conv2d(c, last, 1, bias=False), nn.BatchNorm2d(last), nn.Hardswish()))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(last, 1024), nn.Hardswish(), nn.Linear(1024, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


def build_model(num_classes: int = 1000, width: float = 1.0) -> nn.Module:
    return MobileNetV3Small(num_classes, width).eval()
