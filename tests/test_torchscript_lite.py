"""The lite interpreter's `.ptl` on a conv that FX cannot fuse with its ReLU6 (a conv written as
F.conv2d inside a module, as EfficientNet-Lite's "same"-padding conv is): QNNPACK's quantized
ReLU6 scrambles the channels_last tensor the conv writes unless it is given a contiguous one."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgekit.formats import torchscript_lite
from edgekit.formats.base import QuantConfig


class SamePaddingConv(nn.Conv2d):
    """EfficientNet-Lite's pattern: the padding and the convolution in the module's own forward."""

    def forward(self, x):
        return F.conv2d(F.pad(x, (1, 1, 1, 1)), self.weight, self.bias, self.stride, (0, 0), self.dilation, self.groups)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.act = SamePaddingConv(3, 16, 3), nn.ReLU6()
        self.head = nn.Conv2d(16, 8, 1)

    def forward(self, x):
        return self.head(self.act(self.conv(x))).flatten(1)  # every position and channel kept: order matters


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return float(np.mean((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))


def test_relu6_after_an_unfused_conv_keeps_its_channels_in_the_lite_interpreter(tmp_path):
    model = Net().eval()
    g = torch.Generator().manual_seed(1)
    calib = [(torch.rand(1, 3, 12, 12, generator=g) * 4 - 2,) for _ in range(16)]
    held_out = [torch.rand(1, 3, 12, 12, generator=g) * 4 - 2 for _ in range(8)]
    qmodel = torchscript_lite.quantize(model, calib[0], calib, QuantConfig(calibration="minmax"))
    path = tmp_path / "model.ptl"
    torchscript_lite.export(qmodel, calib[0], path)
    runner = torchscript_lite.load(path)  # the real lite interpreter, QNNPACK kernels
    with torch.no_grad():
        ref = np.concatenate([model(x).numpy() for x in held_out])
    out = np.concatenate([runner.run([x.numpy()])[0] for x in held_out])
    assert _cosine(ref, out) > 0.99, _cosine(ref, out)  # scrambled channels came out near 0.4
