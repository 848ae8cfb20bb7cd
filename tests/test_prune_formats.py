"""A pruned MobileNetV2 (depthwise convs, residual adds) exports and runs in every format."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_pruned_mobilenet_v2_builds_in_every_format(tmp_path):
    from edgekit import api
    from edgekit.formats import get_format

    m = api.build(api.source(model="edgekit.zoo.mobilenet_v2:build_small", input_shape="1,3,32,32"), "rpi4",
                  api.recipe(formats=("all",), prune=0.5, calib_samples=16), out=tmp_path / "mbv2")
    steps = {s["stage"]: s for s in m["steps"]}
    assert steps["prune"]["macs"] < 0.6 * steps["measure"]["macs"]
    litert = {"litert"} if get_format("litert").available() is None else set()  # `all`: the extra is installed
    assert set(m["formats"]) == {"executorch", "torchscript-lite", "onnx"} | litert
    for fmt, record in m["formats"].items():
        assert (tmp_path / "mbv2" / record["artifact"]["file"]).stat().st_size == record["artifact"]["bytes"] > 0
        assert record["metrics"]["samples"] > 0, fmt  # it ran in its runtime
    assert (tmp_path / "mbv2" / "float_model.pt2").is_file()
