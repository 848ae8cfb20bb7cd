"""The graph rewrites that keep a .pte on the XNNPACK delegate (formats/xnnpack_rewrites.py):
each exact, and each moving a real architecture's op from the portable kernels to the delegate."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgekit.formats import executorch, xnnpack_rewrites
from edgekit.formats.base import QuantConfig, torch_export


class Means(nn.Module):
    """Global average pooling written four ways, and a mean the delegate cannot take."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        return (y.mean((2, 3)) + y.mean((-1, -2)) + y.mean((2, 3), keepdim=True).flatten(1)
                + y.mean(1).mean((1, 2))[:, None])


def test_the_global_mean_rewrite_is_exact_and_leaves_other_means_alone():
    example = (torch.randn(2, 3, 12, 12),)
    model = Means().eval()
    graph = torch_export(model, example).module()
    records = xnnpack_rewrites.keep_on_delegate(graph, example)
    [record] = records
    assert len(record["nodes"]) == 2 and record["checked"] == "identical outputs on the example input"
    means = [n for n in graph.graph.nodes if n.target == torch.ops.aten.mean.dim]
    keepdims = sorted(bool(n.args[2]) if len(n.args) > 2 else False for n in means)
    assert keepdims == [False, False, True, True, True]  # the 3-D means keep theirs
    with torch.no_grad():
        assert torch.equal(graph(*example), model(*example))


def _lowered(model, example, tmp_path, name):
    calib = [(torch.randn_like(example[0]),) for _ in range(4)]
    qmodel = executorch.quantize(model, example, calib, QuantConfig())
    return executorch.export(qmodel, example, tmp_path / name)


class MeanPooled(nn.Module):
    """conv -> ReLU -> x.mean((2, 3)) -> Linear: a ResNet's head as it is usually written."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 16, 3), nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


@pytest.mark.parametrize("architecture", ["mean-pooled head", pytest.param("mobilenet_v3_small", marks=pytest.mark.slow)])
def test_a_mean_pooled_net_stays_on_the_delegate(architecture, tmp_path, monkeypatch):
    """x.mean((2, 3)) (MobileNetV3's reference code pools so): without the rewrite the mean runs on
    ExecuTorch's portable kernels; with it every op is delegated."""
    if architecture == "mobilenet_v3_small":
        from edgekit.zoo.mobilenet_v3 import build_model

        torch.manual_seed(0)
        model, example = build_model().eval(), (torch.randn(1, 3, 96, 96),)
    else:
        torch.manual_seed(0)
        model, example = MeanPooled().eval(), (torch.randn(1, 3, 16, 16),)
    lowering = _lowered(model, example, tmp_path, "model.pte")
    assert lowering["ops_outside_delegate"] == [], lowering["ops_outside_delegate"]
    assert [r["rewrite"] for r in lowering["rewrites"]] == [xnnpack_rewrites.REWRITES[0][0]]
    assert executorch.lint(tmp_path / "model.pte")["findings"] == []
    monkeypatch.setattr(xnnpack_rewrites, "REWRITES", [])
    plain = _lowered(model, example, tmp_path, "plain.pte")
    assert "mean" in plain["ops_outside_delegate"] and plain["rewrites"] == []
