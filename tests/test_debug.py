"""`edgekit debug`: the layer-by-layer comparison finds where int8 error enters, and why."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgekit.debug import _replay, _offenders
from edgekit.formats import executorch
from edgekit.formats.base import QuantConfig
from edgekit.model.data import Dataset
from edgekit.model.spec import InputSpec
from test_int8_recovery import WideReluSix

SPEC_INPUTS = (InputSpec("x", (1, 3, 16, 16), "float32"),)


class _Spec:
    inputs = SPEC_INPUTS


def datasets():
    rng = np.random.default_rng(0)
    calib = Dataset({"x": rng.standard_normal((16, 3, 16, 16)).astype(np.float32)}, None, "random")
    held_out = Dataset({"x": rng.standard_normal((8, 3, 16, 16)).astype(np.float32)}, None, "random")
    return calib, held_out


def broken_scale(quantizer, layer: str, scale: float):
    """`quantizer`, with the output of the op owned by `layer` forced to a fixed (wrong) scale."""
    from torchao.quantization.pt2e import FixedQParamsObserver
    from torchao.quantization.pt2e.quantizer import QuantizationSpec, Quantizer

    spec = QuantizationSpec(dtype=torch.int8, quant_min=-128, quant_max=127, qscheme=torch.per_tensor_affine,
                            observer_or_fake_quant_ctr=FixedQParamsObserver.with_args(
                                scale=scale, zero_point=0, dtype=torch.int8, quant_min=-128, quant_max=127))

    class Broken(Quantizer):
        def transform_for_annotation(self, model):
            return quantizer.transform_for_annotation(model)

        def annotate(self, model):
            quantizer.annotate(model)
            for node in model.graph.nodes:
                stack = node.meta.get("nn_module_stack") or {}
                owner = list(stack.values())[-1][0] if stack else ""
                ann = node.meta.get("quantization_annotation")
                if owner == layer and ann is not None and ann.output_qspec is not None:
                    ann.output_qspec = spec
            return model

        def validate(self, model):
            pass

    return Broken()


def test_a_planted_broken_scale_is_the_top_offender():
    model = WideReluSix()
    calib, held_out = datasets()
    example = (torch.from_numpy(calib.arrays["x"][:1]),)
    cfg = QuantConfig(calibration="minmax")
    healthy = {g.node: g for g in _replay(model, example, executorch.pt2e_quantizer(cfg), calib, held_out, _Spec, set())}
    # body.6 is the last conv (outputs within about ±6): its output scale set 20x too coarse
    planted = _replay(model, example, broken_scale(executorch.pt2e_quantizer(cfg), "body.6", 1.0), calib, held_out,
                      _Spec, set())
    worst = _offenders(planted, 3)[0]
    assert worst.layer == "body.6" and worst.op == "conv2d", [(g.layer, g.op, g.added_db) for g in planted]
    assert worst.int8_range == pytest.approx(255.0) and "fixed by another op" in worst.diagnosis
    assert worst.added_db < healthy[worst.node].added_db - 10


def test_onnx_a_planted_broken_scale_in_the_artifact_is_the_top_offender(tmp_path):
    """The .onnx artifact itself, one QuantizeLinear scale in it made 50x too coarse: the comparison
    with onnxruntime's qdq_loss_debug names that tensor first, and the healthy artifact does not."""
    import onnx
    from onnx import numpy_helper

    from edgekit.debug import _compare_onnx
    from edgekit.formats import onnx as onnx_format
    from edgekit.model.data import batches

    model = WideReluSix()
    calib, held_out = datasets()
    example = (torch.from_numpy(calib.arrays["x"][:1]),)
    cfg = QuantConfig(calibration="minmax", input_names=("x",))
    healthy_path, broken_path = tmp_path / "healthy.onnx", tmp_path / "broken.onnx"
    onnx_format.export(onnx_format.quantize(model, example, batches(calib, SPEC_INPUTS), cfg), example, healthy_path)
    artifact = onnx.load(str(healthy_path))
    inits = {i.name: i for i in artifact.graph.initializer}
    # the last conv's output: the tensor the final QuantizeLinear before the mean reads
    convs = [n for n in artifact.graph.node if n.op_type == "Conv"]
    target = convs[-1].output[0]
    quant = next(n for n in artifact.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == target)
    scale = inits[quant.input[1]]
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * 50, scale.name))
    onnx.save(artifact, str(broken_path))

    healthy = {g.node: g for g in _compare_onnx(model, example, healthy_path, held_out, _Spec)}
    planted = _compare_onnx(model, example, broken_path, held_out, _Spec)
    worst = _offenders(planted, 3)[0]
    assert worst.node == target and worst.op == "Conv", [(g.node, g.op, g.added_db) for g in planted]
    assert worst.added_db < healthy[target].added_db - 10
    assert healthy[target].sqnr_db > 20  # int8, not broken
    assert worst.layer == "body.6"  # named by the module it came from


def test_the_tutorial_paths_relu6_loss_is_named_and_edgekits_quantization_removes_it():
    model = WideReluSix()
    calib, held_out = datasets()
    example = (torch.from_numpy(calib.arrays["x"][:1]),)
    cfg = QuantConfig(calibration="minmax")
    tutorial = _replay(model, example, executorch.pt2e_quantizer(cfg, tutorial=True), calib, held_out, _Spec, set())
    ours = {g.node: g for g in _replay(model, example, executorch.pt2e_quantizer(cfg), calib, held_out, _Spec, set())}
    named = [g for g in _offenders(tutorial, 3) if g.op == "hardtanh"]
    assert named and all("observed before the clamp" in g.diagnosis for g in named), \
        [(g.layer, g.op, g.diagnosis) for g in tutorial]
    for g in named:
        assert ours[g.node].sqnr_db > g.sqnr_db + 10  # fixed where it entered


def test_edgekit_debug_on_a_build(build_copy, run_cli):
    proc = run_cli("debug", str(build_copy), "--json", "--samples", "4", "--baseline", "tutorial")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["format"] == "executorch" and doc["samples"] == 4 and doc["baseline"] == "tutorial"
    convs = [g for g in doc["layers"] if g["op"] == "conv2d"]
    assert len(convs) == 3 and all(20 < g["sqnr_db"] < 100 for g in convs)  # int8: not exact, not broken
    assert all(g["baseline_sqnr_db"] is not None for g in convs) and doc["baseline_top"]
    assert doc["top"] and all(doc_layer["diagnosis"] for doc_layer in doc["layers"] if doc_layer["node"] in doc["top"])
    manifest = json.loads((build_copy / "manifest.json").read_text())
    assert manifest["numeric_debug"]["executorch"]["layers"] == doc["layers"]
    proc = run_cli("report", str(build_copy))
    assert proc.returncode == 0, proc.stderr
    html = (build_copy / "report.html").read_text()
    assert "Where the int8 error enters" in html and doc["layers"][0]["layer"] in html

    # the terminal form: both tables, every diagnosis, in 80 columns
    from rich.console import Console

    from edgekit.report.terminal import print_numeric_debug

    console = Console(width=80, record=True)
    print_numeric_debug(doc, console=console)
    text = console.export_text()
    assert "where the error enters" in text and "where the tutorial path loses" in text and "output: SQNR" in text
    assert max(len(line) for line in text.splitlines()) <= 80


@pytest.mark.slow  # a build and the CLI (~25 s); the onnx comparison itself is tested above
def test_edgekit_debug_on_an_onnx_build(digits_app, run_cli, tmp_path):
    out = tmp_path / "b"
    assert run_cli("build", str(digits_app), "--format", "onnx", "--out", str(out)).returncode == 0
    proc = run_cli("debug", str(out), "--json", "--samples", "4")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["format"] == "onnx" and doc["samples"] == 4 and "qdq_loss_debug" in doc["method"]
    # ORT's QDQ folds each ReLU into its conv: the quantized tensors are the ReLUs' outputs
    quantized = [g for g in doc["layers"] if g["op"] in ("Relu", "Gemm")]
    assert [g["layer"] for g in quantized] == ["features.0.2", "features.1.2", "features.3.2", "classifier"]
    assert all(20 < g["sqnr_db"] < 100 and g["int8_range"] for g in quantized)  # int8: not exact, not broken
    assert doc["top"] and doc["output_sqnr_db"] > 20
    proc = run_cli("debug", str(out), "--baseline", "tutorial")
    assert proc.returncode == 2 and "--baseline tutorial" in proc.stderr and "--format executorch" in proc.stderr
    assert "Failed to load" not in proc.stderr and "W1201" not in proc.stderr  # library noise stays off


@pytest.mark.parametrize("args,message", [
    (["--format", "onnx"], "this build has no onnx artifact"),
    (["--baseline", "nope"], "--baseline"),
])
def test_edgekit_debug_refuses_by_name(build_copy, run_cli, args, message):
    proc = run_cli("debug", str(build_copy), *args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
