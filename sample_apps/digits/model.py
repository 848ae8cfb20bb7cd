"""A small CNN for scikit-learn's 8x8 handwritten digits.

Input: float32 tensor of shape (N, 1, 8, 8), pixel values scaled to [0, 1]
(the raw 0..16 values divided by 16). Output: logits of shape (N, 10).

Only ops that PT2E's XNNPACKQuantizer quantizes and that lower to XNNPACK are
used: Conv2d + BatchNorm2d (folded at export) + ReLU, MaxPool2d,
AdaptiveAvgPool2d(1), flatten and Linear.
"""

import torch
from torch import nn


def _conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    )


class DigitsCNN(nn.Module):
    """(N, 1, 8, 8) float32 in [0, 1] -> (N, 10) logits."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn_relu(1, 32),    # 8x8
            _conv_bn_relu(32, 64),   # 8x8
            nn.MaxPool2d(2),         # -> 4x4
            _conv_bn_relu(64, 128),  # 4x4
            nn.AdaptiveAvgPool2d(1), # -> 1x1
        )
        self.classifier = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def build_model() -> nn.Module:
    """Return an untrained DigitsCNN in eval mode (the toolchain's factory)."""
    return DigitsCNN().eval()
