"""Dynamic int8 and fp16: each through the real runtimes, or refused clearly."""

from __future__ import annotations

import onnx
import pytest

from edgekit import api


@pytest.fixture(scope="module")
def dynamic_build(tmp_path_factory, digits_app):
    out = tmp_path_factory.mktemp("dynamic") / "b"
    return out, api.build(digits_app.parent / "vit_digits", "rpi4", api.recipe(quant="dynamic", formats=("all",)), out=out)


def test_dynamic_int8_in_every_format(dynamic_build):
    out, m = dynamic_build
    assert list(m["formats"]) == ["executorch", "torchscript-lite", "onnx"]
    # LiteRT is built as static int8 only: `all` leaves it out and says why (or it is not installed)
    litert = m["skipped_formats"]["litert"]
    assert "no dynamic quantization" in litert["error"] or "litert extra" in litert["error"], litert
    for fmt, record in m["formats"].items():
        assert record["quantization"]["scheme"] == "dynamic"
        assert record["quantization"]["calibration"] is None  # dynamic needs no calibration
        metrics = record["metrics"]
        assert abs(metrics["accuracy_float"] - metrics["accuracy_artifact"]) <= 1.0, (fmt, metrics)
        assert record["artifact"]["bytes"] < 0.5 * m["float"]["bytes"], fmt  # int8 weights


def test_dynamic_int8_uses_the_dynamic_kernels(dynamic_build):
    out, m = dynamic_build
    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert "DynamicQuantizeLinear" in ops and "MatMulInteger" in ops
    assert any("linear_dynamic" in op for op in m["formats"]["torchscript-lite"]["lowering"]["quantized_operators"])
    assert m["formats"]["executorch"]["lowering"]["xnnpack_delegated"]


@pytest.mark.parametrize("fmt", ["executorch", "onnx"])
def test_fp16_on_a_target_with_fp16(digits_app, tmp_path, fmt):
    m = api.build(digits_app, "rpi5", api.recipe(quant="fp16", formats=(fmt,)), out=tmp_path / "b")
    metrics = m["metrics"]
    assert m["quantization"]["scheme"] == "fp16"
    assert abs(metrics["accuracy_float"] - metrics["accuracy_artifact"]) <= 0.5
    # Half precision, not int8: int8 gives about 40 dB on digits. A CPU with fp16 arithmetic (ARMv8.2's FP16,
    # x86's AVX512-FP16) runs XNNPACK's fp16 kernels natively, accumulating in fp16: 53.6 dB (max abs error
    # 0.072) measured on such a host; accumulating in fp32 gives more.
    assert metrics["sqnr_db"] > 48, metrics
    if fmt == "onnx":  # weight-only fp16: weights stored as float16, half the bytes
        graph = onnx.load(str(tmp_path / "b" / "model.onnx")).graph
        assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in graph.initializer)
        assert m["artifact"]["bytes"] < 0.6 * m["float"]["bytes"]
