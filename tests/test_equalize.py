"""Cross-layer range equalization (formats/equalize.py): exact where the module doc says it is,
and on a net built to need it, closer to float in the real runtimes, chosen by --quality auto."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from conftest import app_toml, write_app
from edgekit import api
from edgekit.errors import BuildGateFailed
from edgekit.formats.equalize import equalize

# An inverted-residual block as MobileNetV2 / EfficientNet-Lite write it, with the expanded channels'
# ranges spread 1000x by their batch norms (as a trained net's are: Lite0's span 180-800x) and the
# depthwise batch norm undoing it, so every channel matters equally to the output. One per-tensor
# activation scale on the depthwise input leaves the narrow channels a level or two.
NARROW_MODEL = textwrap.dedent(
    """
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, act=nn.ReLU6):
            super().__init__()
            self.expand, self.bn1, self.act1 = nn.Conv2d(3, 32, 1, bias=False), nn.BatchNorm2d(32), act()
            self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False)
            self.bn2, self.act2 = nn.BatchNorm2d(32), act()
            self.project = nn.Conv2d(32, 8, 1)

        def forward(self, x):
            y = self.act1(self.bn1(self.expand(x)))
            return self.project(self.act2(self.bn2(self.dw(y)))).mean((2, 3))

    def make(act=nn.ReLU6):
        torch.manual_seed(0)
        model = Block(act)
        spread = torch.logspace(-3, 0, 32)
        spread[1:-1] = spread[1:-1].pow(0.25) * 1e-3 ** 0.75  # 1e-3 .. 6e-3: all but one channel narrow
        with torch.no_grad():
            model.bn1.weight.copy_(spread)
            model.bn1.bias.copy_(spread * 0.5)
            model.bn2.weight.copy_(1 / spread)
        return model.eval()
    """
)
NARROW_APP = app_toml("narrow", [1, 3, 16, 16])


def _inputs(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 16, 16)).astype(np.float32)


@pytest.fixture(scope="module")
def narrow_app(tmp_path_factory):
    return write_app(tmp_path_factory.mktemp("narrow"), NARROW_MODEL, NARROW_APP,
                     calib={"x": _inputs(32, 1)}, eval={"x": _inputs(32, 2)})


def _narrow(act):
    namespace: dict = {}
    exec(NARROW_MODEL, namespace)  # noqa: S102 - the test's own model source
    return namespace["make"](act)


def _batches(n, seed):
    return [(torch.from_numpy(x[None]),) for x in _inputs(n, seed)]


def test_relu_pairs_are_equalized_exactly_on_any_input():
    model = _narrow(nn.ReLU)
    calib = _batches(16, 1)
    equalized, record = equalize(model, calib[0], calib)
    assert record["pairs"] == 1 and record["layers"][0]["consumer"] == "dw"
    assert record["spread_before"] > 500 and record["spread_after"] < 2  # MAX_SCALE caps the growth at 1000x
    unseen = torch.from_numpy(_inputs(8, 3) * 10)  # far outside the calibration range: ReLU is homogeneous
    with torch.no_grad():
        torch.testing.assert_close(equalized(unseen), model(unseen), rtol=1e-4, atol=1e-5)
    assert not torch.equal(equalized.bn1.weight, model.bn1.weight), "the model's own weights were changed"
    assert torch.equal(model.bn1.weight, _narrow(nn.ReLU).bn1.weight), "the input model must not be modified"


def test_relu6_pairs_keep_the_outputs_where_the_clamp_did_not_fire():
    model = _narrow(nn.ReLU6)
    with torch.no_grad():
        model.bn1.weight[-1] = 50.0  # this channel clamps at 6 on the calibration data: it must keep k = 1
    calib = _batches(16, 1)
    equalized, record = equalize(model, calib[0], calib)
    assert record["layers"][0]["activation"] == "clamp(0, 6)"
    assert equalized.bn1.weight[-1] == model.bn1.weight[-1]
    with torch.no_grad():
        for (x,) in calib:
            torch.testing.assert_close(equalized(x), model(x), rtol=1e-4, atol=1e-5)


def test_only_depthwise_consumers_and_traceable_models_are_touched():
    dense = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)).eval()
    x = (torch.randn(1, 3, 8, 8),)
    same, record = equalize(dense, x, [x])
    assert record["pairs"] == 0 and torch.equal(same[0].weight, dense[0].weight)

    class Untraceable(nn.Module):
        def forward(self, x):
            return x * 2 if float(x.sum()) > 0 else x  # data-dependent Python control flow

    _, record = equalize(Untraceable(), x, [x])
    assert record["pairs"] == 0 and "torch.export" in record["note"]


@pytest.mark.parametrize("fmt", ["onnx", pytest.param("executorch", marks=pytest.mark.slow)])
def test_equalization_brings_the_artifact_closer_to_float_and_auto_chooses_it(narrow_app, tmp_path, fmt):
    """In the format's real runtime, on held-out inputs: the plain static artifact against the one
    --quality auto made, which equalized because the plain one missed the gate on the calibration inputs."""
    recipe = dict(formats=(fmt,), calibration="minmax")
    with pytest.raises(BuildGateFailed) as plain_failure:
        api.build(narrow_app, "rpi5", api.recipe(**recipe, quality="fast"), out=tmp_path / "plain")
    plain = plain_failure.value.manifest["formats"][fmt]
    assert "equalization" not in plain["quantization"]
    auto = api.build(narrow_app, "rpi5", api.recipe(**recipe), out=tmp_path / "auto")["formats"][fmt]
    tries = auto["quality"]["tries"]
    assert [t["method"] for t in tries[:2]] == ["static int8 (minmax)", "static int8 (minmax + equalization)"]
    assert not tries[0]["passed"] and tries[1]["passed"]
    assert auto["quality"]["chosen"] == "static int8 (minmax + equalization)"
    eq = auto["quantization"]["equalization"]
    assert auto["quantization"]["equalize"] is True and eq["pairs"] == 1 and eq["spread_before"] > 500
    # judged on the evaluation inputs, which played no part in the choice
    assert auto["gate"]["passed"]
    assert auto["metrics"]["sqnr_db"] > plain["metrics"]["sqnr_db"] + 10, (plain["metrics"], auto["metrics"])

    if fmt == "onnx":  # the debugger names the cause on the plain artifact, and shows it gone on the equalized one
        plain_debug = api.debug(tmp_path / "plain", format=fmt)
        auto_debug = api.debug(tmp_path / "auto", format=fmt)
        [before] = [g for g in plain_debug["layers"] if g["layer"] == "act1"]
        [after] = [g for g in auto_debug["layers"] if g["layer"] == "act1"]
        assert "one per-tensor scale across channels" in before["diagnosis"], before
        assert "per-tensor scale" not in after["diagnosis"] and after["sqnr_db"] > before["sqnr_db"], after
        assert auto_debug["output_sqnr_db"] > plain_debug["output_sqnr_db"] + 10
