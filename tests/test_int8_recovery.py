"""int8 that keeps predictions: each recovery method against the path without it, on a model built to need it.

ReLU6 after a conv whose pre-activation range is wide (as in a pretrained EfficientNet-Lite0's
depthwise convs) is the case `fuse_clamps` exists for: ExecuTorch's tutorial quantizer
observes the conv's output before the clamp, so the 0..6 the next layer reads gets a few
of the 256 levels.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgekit.formats import executorch
from edgekit.formats.base import QuantConfig


class WideReluSix(nn.Module):
    """conv -> BN -> ReLU6 twice, with BN scaled so the conv outputs reach about ±300."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU6(),
            nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU6(),
            nn.Conv2d(16, 8, 1),
        )
        with torch.no_grad():
            for bn in (self.body[1], self.body[4]):
                bn.weight.copy_(torch.linspace(1, 100, 16))  # a few channels swing far past 6
                bn.bias.copy_(torch.linspace(-50, 3, 16))
        self.eval()

    def forward(self, x):
        return self.body(x).mean((2, 3))


def sqnr_db(ref: torch.Tensor, out: torch.Tensor) -> float:
    return float(10 * torch.log10(ref.pow(2).mean() / (ref - out).pow(2).mean()))


@pytest.fixture(scope="module")
def wide():
    model = WideReluSix()
    g = torch.Generator().manual_seed(1)
    calib = [(torch.randn(1, 3, 16, 16, generator=g),) for _ in range(16)]
    held_out = torch.randn(32, 3, 16, 16, generator=g)
    with torch.no_grad():
        ref = torch.cat([model(x[None]) for x in held_out])
    return model, calib, held_out, ref


def tutorial_quantize(model, calib):
    """ExecuTorch's PT2E tutorial as written: XNNPACKQuantizer, per-channel symmetric."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(torch.export.export(model, calib[0]).module(), quantizer)
    with torch.no_grad():
        for batch in calib:
            prepared(*batch)
    return convert_pt2e(prepared)


def run(q, held_out):
    with torch.no_grad():
        return torch.cat([q(x[None]) for x in held_out])


def test_relu6_observed_after_the_clamp_keeps_what_the_tutorial_path_loses(wide, tmp_path):
    model, calib, held_out, ref = wide
    tutorial_q = tutorial_quantize(model, calib)
    tutorial = sqnr_db(ref, run(tutorial_q, held_out))
    q = executorch.quantize(model, calib[0], calib, QuantConfig(calibration="minmax"))  # the same observer
    ours = sqnr_db(ref, run(q, held_out))
    assert ours > tutorial + 10, (ours, tutorial)  # 10 dB: a tenth of the error power

    # and the clamp still fuses into XNNPACK's conv: the delegate takes all it takes from the
    # tutorial's graph, and the final mean over H, W too (formats/xnnpack_rewrites.py), which the
    # tutorial's graph leaves on the portable kernels
    lowering = executorch.export(q, calib[0], tmp_path / "m.pte")
    theirs = executorch.export(tutorial_q, calib[0], tmp_path / "t.pte")
    assert lowering["xnnpack_delegated"] and "hardtanh" not in lowering["ops_outside_delegate"]
    assert lowering["ops_outside_delegate"] == [] and theirs["ops_outside_delegate"] == ["mean"]
    assert lowering["quantizer"]["clamps_observed_after"] == 2  # recorded: the manifest's lowering.quantizer


def test_a_clamp_whose_producer_has_other_users_keeps_the_shared_range():
    """conv -> (relu6, and the conv's raw output elsewhere): the conv's own range is still needed."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    from edgekit.formats.pt2e import fuse_clamps

    class TwoUsers(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            y = self.conv(x)
            return nn.functional.relu6(y) + y

    model = TwoUsers().eval()
    graph = torch.export.export(model, (torch.randn(1, 3, 8, 8),)).module()
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config())
    graph = quantizer.transform_for_annotation(graph)
    quantizer.annotate(graph)
    assert fuse_clamps(graph) == []


def test_functional_relu6_after_add_and_linear_is_observed_after_the_clamp_too(tmp_path):
    """F.relu6 exports as aten.relu6 (XNNPACKQuantizer leaves it unannotated: its producer's range is
    the pre-activation one); a hand-written hardswish puts it after an add."""

    class HandWritten(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 8, 3), nn.Linear(8, 8)

        def forward(self, x):
            y = self.conv(x)
            y = y * nn.functional.relu6(y + 3) / 6
            return nn.functional.relu6(self.fc(y.mean((2, 3))))

    model = HandWritten().eval()
    calib = [(torch.randn(1, 3, 16, 16),) for _ in range(8)]
    q = executorch.quantize(model, calib[0], calib, QuantConfig())
    ours = executorch.export(q, calib[0], tmp_path / "m.pte")
    theirs = executorch.export(tutorial_quantize(model, calib), calib[0], tmp_path / "t.pte")
    assert ours["quantizer"]["clamps_observed_after"] == 2
    # both clamps fused into the kernels; the mean taken by the rewrite, left outside by the tutorial
    assert ours["ops_outside_delegate"] == [] and theirs["ops_outside_delegate"] == ["mean"]
