"""Calibration methods, each through a real backend, and clear refusals."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit import api
from edgekit.errors import BuildGateFailed

# The Lite Interpreter's histogram, ONNX's entropy and ExecuTorch's percentile (~10 s a build) run with the
# slow tests (the percentile observer itself is tested below).
_SLOW = {("torchscript-lite", "histogram"), ("onnx", "entropy"), ("executorch", "percentile")}
SUPPORTED = [
    ("executorch", "minmax"), ("executorch", "histogram"), ("executorch", "percentile"),
    ("torchscript-lite", "minmax"), ("torchscript-lite", "histogram"),
    ("onnx", "minmax"), ("onnx", "percentile"), ("onnx", "entropy"), ("onnx", "histogram"),
]


def _params(pairs):
    return [pytest.param(*p, marks=pytest.mark.slow) if p in _SLOW else p for p in pairs]


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, digits_app):
    """Builds on the digits sample, one per (format, method), 32 calibration images each, made when first asked."""
    root = tmp_path_factory.mktemp("calib")
    built: dict = {}

    def get(fmt: str, method: str) -> dict:
        if (fmt, method) not in built:
            built[(fmt, method)] = api.build(
                digits_app, "rpi4", api.recipe(formats=(fmt,), calibration=method, calib_samples=32),
                out=root / f"{fmt}-{method}")
        return built[(fmt, method)]
    get.root = root  # each build in root / f"{fmt}-{method}"
    return get


@pytest.mark.parametrize("fmt,method", _params(SUPPORTED))
def test_each_method_builds_a_working_artifact(calibrated, fmt, method):
    m = calibrated(fmt, method)
    assert m["quantization"]["calibration"] == method
    assert m["steps"][1]["config"]["calibration"] == method
    assert abs(m["metrics"]["accuracy_float"] - m["metrics"]["accuracy_artifact"]) <= 1.0


@pytest.mark.parametrize("fmt,method", _params([p for p in SUPPORTED if p[1] != "minmax"]))
def test_method_changes_the_quantization(calibrated, fmt, method):
    """Different activation ranges give a different artifact than minmax's."""
    assert calibrated(fmt, method)["artifact"]["sha256"] != calibrated(fmt, "minmax")["artifact"]["sha256"]


@pytest.fixture(scope="module")
def glitched_calib(tmp_path_factory, digits_app):
    """The calibration split with ONE pixel of one image glitched to 200 (pixels are 0..1)."""
    x = np.load(digits_app / "calib.npz")["x"].copy()
    x[7, 0, 3, 3] = 200.0
    path = tmp_path_factory.mktemp("glitch") / "calib.npz"
    np.savez(path, x=x)
    return path


def test_the_pt2e_percentile_observer_clips_what_minmax_keeps():
    """One value in 10^5 at 200 among values in 0..1: minmax's range reaches it, percentile's does
    not (PERCENTILE keeps 99.99 % inside), over batches accumulated as calibration feeds them."""
    import torch
    from torchao.quantization.pt2e.observer import MinMaxObserver

    from edgekit.formats.pt2e import percentile_observer

    torch.manual_seed(0)
    batches = [torch.rand(10_000) for _ in range(10)]
    batches[3][17] = 200.0
    ranges = {}
    for name, ctr in (("minmax", MinMaxObserver), ("percentile", percentile_observer())):
        obs = ctr(dtype=torch.int8, qscheme=torch.per_tensor_affine, quant_min=-128, quant_max=127)
        for b in batches:
            obs(b)
        scale, _ = obs.calculate_qparams()
        ranges[name] = float(scale) * 255
    assert ranges["minmax"] == pytest.approx(200.0, rel=0.01)
    assert 0.99 <= ranges["percentile"] <= 1.2, ranges


@pytest.mark.slow  # three builds; tests/test_quality.py's glitch test runs by default
def test_clipping_calibrators_survive_a_glitch_that_ruins_minmax(digits_app, glitched_calib, tmp_path):
    """minmax stretches the input range to the glitch; entropy and percentile clip it. The quality
    gate fails the ruined artifact (its build is still written, marked) and passes the others."""
    acc, passed = {}, {}
    for method in ("minmax", "entropy", "percentile"):
        try:
            manifest = api.build(api.source(digits_app, calib=glitched_calib), "rpi4",
                                 api.recipe(formats=("onnx",), calibration=method), out=tmp_path / method)
        except BuildGateFailed as e:
            manifest = e.manifest
        acc[method], passed[method] = manifest["metrics"]["accuracy_artifact"], manifest["formats"]["onnx"]["gate"]["passed"]
    assert acc["minmax"] < 80.0, acc
    assert acc["entropy"] >= 95.0 and acc["percentile"] >= 95.0, acc
    assert passed == {"minmax": False, "entropy": True, "percentile": True}


@pytest.mark.parametrize(
    "args,fragments",
    [
        (["--format", "torchscript-lite", "--calibration", "percentile"],
         ["--calibration percentile", "torchscript-lite offers: minmax, histogram"]),
        (["--format", "executorch", "--calibration", "entropy"], ["executorch offers: minmax, histogram, percentile"]),
        (["--format", "all", "--calibration", "entropy"], ["--calibration entropy"]),
        (["--format", "torchscript-lite", "--quant", "fp16", "--target", "rpi5"], ["no fp16", "QNNPACK has no fp16 kernels"]),
        (["--quant", "fp16", "--target", "rpi4"], ["target 'rpi4'", "no fp16 arithmetic", "rpi5"]),
        (["--quant", "dynamic", "--calibration", "minmax"], ["--calibration applies to --quant static only"]),
    ],
)
def test_what_a_backend_lacks_is_a_usage_error(run_cli, digits_app, tmp_path, args, fragments):
    proc = run_cli("build", str(digits_app), *args, "--out", str(tmp_path / "out"))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, (fragment, proc.stderr)
    assert not (tmp_path / "out").exists()


def test_onnx_histogram_is_the_range_the_pt2e_formats_observe(calibrated, digits_app):
    """--calibration histogram in .onnx: torchao's HistogramObserver (XNNPACK's and LiteRT's own) on the
    tensors onnxruntime collects. The .onnx input's scale and zero point are the observer's on the
    same calibration images."""
    import onnx
    import torch
    from onnx import numpy_helper
    from torchao.quantization.pt2e.observer import HistogramObserver

    def input_qparams(method):
        calibrated("onnx", method)
        model = onnx.load(str(calibrated.root / f"onnx-{method}" / "model.onnx"))
        init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        [q] = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == model.graph.input[0].name]
        return float(init[q.input[1]]), int(init[q.input[2]])

    observer = HistogramObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine)
    for x in np.load(digits_app / "calib.npz")["x"][:32]:
        observer(torch.from_numpy(np.ascontiguousarray(x[None], dtype=np.float32)))
    scale, zero_point = (float(v) for v in observer.calculate_qparams())
    ours = input_qparams("histogram")
    assert ours[0] == pytest.approx(scale, rel=1e-4) and ours[1] == zero_point, (ours, scale, zero_point)
    # (that the other tensors' ranges differ from minmax's: test_method_changes_the_quantization)
