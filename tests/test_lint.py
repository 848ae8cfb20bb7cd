"""The deployability lint names what will not run on the target runtime's fast kernels."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgekit.formats import executorch as et
from edgekit.validate.graph import model_work
from edgekit.validate.lint import lint


class NotAllXnnpack(nn.Module):
    """A Conv3d (XNNPACK has no 3-D convolution) and a cumsum (no XNNPACK kernel) around a delegated Linear."""

    def __init__(self):
        super().__init__()
        self.conv3d = nn.Conv3d(2, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 4 * 6 * 6, 10)

    def forward(self, x):
        y = torch.relu(self.conv3d(x))
        y = torch.cumsum(y, dim=-1)
        return self.fc(y.flatten(1))


@pytest.fixture(scope="module")
def odd_pte(tmp_path_factory):
    torch.manual_seed(0)
    model = NotAllXnnpack().eval()
    example = (torch.randn(1, 2, 4, 6, 6),)
    path = tmp_path_factory.mktemp("lint") / "model.pte"
    # fp32 lowering: an int8 conv3d left outside the delegate has no portable kernel at all
    # (ExecuTorch: "Missing out variants: dequantize_per_channel"), a worse finding than this test's.
    info = et.export(model, example, path)
    work = [r.to_json() for r in model_work(model, example)]
    return path, info, work


def test_pte_lint_names_ops_outside_xnnpack_with_mac_share(odd_pte):
    path, info, work = odd_pte
    doc = lint(path, work)
    assert "cumsum" in doc["ops_outside"], doc
    assert "convolution" in doc["ops_outside"], doc  # the 3-D conv, by its ExecuTorch op name
    assert all(f["advice"] for f in doc["findings"])
    cumsum = next(f for f in doc["findings"] if f["op"] == "cumsum")
    assert "cumsum" in cumsum["advice"]
    # The Linear (17,280 MACs... of ~42k for the conv3d) is delegated, the conv3d is not.
    conv_macs = sum(r["macs"] for r in work if r["op"] == "conv3d")
    assert doc["macs_outside"] == conv_macs > 0
    assert 0 < doc["macs_fast_share"] < 0.5
    # the export's own record agrees with what the lint reads back from the file
    assert set(info["ops_outside_delegate"]) >= {"cumsum"}


def test_onnx_lint_flags_float_compute_outside_qdq(tmp_path):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    zp = numpy_helper.from_array(np.array(0, np.uint8), "z")
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
        helper.make_node("Relu", ["xd"], ["r"]),  # between DQ and Q: runs quantized
        helper.make_node("QuantizeLinear", ["r", "s", "z"], ["rq"]),
        helper.make_node("DequantizeLinear", ["rq", "s", "z"], ["rd"]),
        helper.make_node("MatMul", ["rd", "w"], ["y"], name="head"),  # output not requantized: float
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w, scale, zp])
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    doc = lint(path)
    assert doc["ops_outside"] == ["MatMul"]
    assert "float" in doc["findings"][0]["advice"]


def test_digits_artifacts_lint_clean(digits_build):
    doc = digits_build["manifest"]["validation"]["formats"]["executorch"]["lint"]
    assert doc["findings"] == [] and doc["macs_fast_share"] == 1.0


# --- dynamic input shapes ------------------------------------------------------------------------


def test_an_onnx_input_with_a_symbolic_batch_is_a_finding(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 10])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])])
    path = tmp_path / "dyn.onnx"
    onnx.save(helper.make_model(graph), str(path))
    [finding] = [f for f in lint(path)["findings"] if f["op"] == "dynamic_shape"]
    assert finding["where"] == "input x (dim 0 'batch')" and "make_dynamic_shape_fixed" in finding["advice"]
    assert "dynamic_shape" not in lint(path)["ops_outside"]  # not an op: the MAC share ignores it

    fixed = tmp_path / "fixed.onnx"
    graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(helper.make_model(graph), str(fixed))
    assert not [f for f in lint(fixed)["findings"] if f["op"] == "dynamic_shape"]


def test_a_pte_exported_with_a_dynamic_batch_is_a_finding(tmp_path):
    from executorch.exir import to_edge

    model = nn.Sequential(nn.Linear(8, 4)).eval()
    batch = torch.export.Dim("batch", min=1, max=16)
    program = torch.export.export(model, (torch.randn(2, 8),), dynamic_shapes=({0: batch},))
    path = tmp_path / "dyn.pte"
    path.write_bytes(to_edge(program).to_executorch().buffer)
    [finding] = [f for f in lint(path)["findings"] if f["op"] == "dynamic_shape"]
    assert "[16, 8]" in finding["where"] and "--input-shape" in finding["advice"]


def test_an_edgekit_build_has_static_inputs(digits_build):
    assert not [f for f in lint(digits_build["dir"] / "model.pte")["findings"] if f["op"] == "dynamic_shape"]
