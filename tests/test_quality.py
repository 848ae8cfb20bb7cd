"""`--quality auto`: each recovery on a model built to need it, chosen on the calibration inputs
and never on the evaluation data that then scores it."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch

from conftest import sensor_app, write_app
from edgekit import api
from edgekit.errors import BuildGateFailed

# A Linear-only net (no biases: its outputs scale with its inputs) on inputs whose scale varies
# 1000x from sample to sample, as a transformer's hidden states vary in magnitude from sentence to
# sentence. One static range must cover the loudest sample: the quietest then round to zero. Per-call
# (dynamic) activation ranges follow each sample.
SCALED_MODEL = textwrap.dedent(
    """
    import torch
    from torch import nn

    class Mlp(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2, self.fc3 = nn.Linear(32, 128, bias=False), nn.Linear(128, 128, bias=False), \\
                nn.Linear(128, 16, bias=False)

        def forward(self, x):
            return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))

    def make():
        torch.manual_seed(0)
        return Mlp()
    """
)
SCALED_APP = textwrap.dedent(
    """
    name = "scaled"
    [model]
    factory = "model:make"
    task = "embedding"
    [[inputs]]
    name = "x"
    shape = [1, 32]
    [data]
    calib = "calib.npz"
    eval = "eval.npz"
    """
)


def _scaled(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scale = 10.0 ** rng.uniform(0, 3, size=(n, 1))  # 1 .. 1000, log-uniform
    return (rng.standard_normal((n, 32)) * scale).astype(np.float32)


@pytest.fixture(scope="module")
def scaled_app(tmp_path_factory):
    return write_app(tmp_path_factory.mktemp("scaled"), SCALED_MODEL, SCALED_APP,
                     calib={"x": _scaled(64, 1)}, eval={"x": _scaled(64, 2)})


def test_a_linear_model_whose_ranges_move_per_sample_gets_dynamic_activations(scaled_app, tmp_path):
    # --calibration pinned: auto goes from the recipe straight to dynamic activations
    m = api.build(scaled_app, "rpi5", api.recipe(formats=("executorch", "onnx"), calibration="minmax"),
                  out=tmp_path / "auto")
    for fmt, record in m["formats"].items():
        quality = record["quality"]
        assert quality["mode"] == "auto" and quality["selection"] == {
            "source": str(scaled_app / "calib.npz"), "samples": 64, "held_out": False}
        static, dynamic = quality["tries"][:-1], quality["tries"][-1]
        assert [t["method"] for t in static] == ["static int8 (minmax)"] and not static[0]["passed"], fmt
        assert dynamic["method"] == "dynamic int8 activations" and dynamic["passed"], fmt
        assert quality["chosen"] == "dynamic int8 activations"
        assert record["quantization"]["scheme"] == "dynamic" and record["gate"]["passed"]
        # the recovery is real: on the evaluation data too, far closer to float than static was
        # even on the inputs it was calibrated on
        assert record["metrics"]["cosine"] >= 0.99 > max(t["cosine"] for t in static), (fmt, record["metrics"])
    with pytest.raises(BuildGateFailed):  # one pass, as the recipe says: static, and the gate fails it
        api.build(scaled_app, "rpi5", api.recipe(formats=("onnx",), quality="fast"), out=tmp_path / "fast")


@pytest.fixture(scope="module")
def glitched_app(tmp_path_factory, digits_app):
    """The digits app whose calibration data (64 images) has ONE pixel of one image glitched to 200
    (pixels are 0..1): minmax stretches the input's range to it, a clipping calibration does not."""
    root = tmp_path_factory.mktemp("glitched")
    for name in ("model.py", "edgekit.toml", "weights.pt", "eval.npz"):
        (root / name).write_bytes((digits_app / name).read_bytes())
    x = np.load(digits_app / "calib.npz")["x"][:64].copy()
    x[3, 0, 3, 3] = 200.0
    np.savez(root / "calib.npz", x=x)
    return root


@pytest.mark.slow  # ~30 s; --quality auto's other tries stay in the default run
def test_a_calibration_a_glitch_ruins_is_replaced_and_the_eval_data_plays_no_part(glitched_app, tmp_path):
    """onnx's default minmax misses the gate on the calibration inputs; a clipping calibration
    passes there; another evaluation file gives the same choice and the same artifact."""
    other_eval = tmp_path / "other_eval.npz"
    evaluation = np.load(glitched_app / "eval.npz")
    np.savez(other_eval, x=evaluation["x"][::-1][:100], y=evaluation["y"][::-1][:100])
    built = {}
    for name, source in (("eval", api.source(glitched_app)), ("other", api.source(glitched_app, eval=other_eval))):
        built[name] = api.build(source, "rpi4", api.recipe(formats=("onnx",)), out=tmp_path / name)["formats"]["onnx"]
    record = built["eval"]
    tries = record["quality"]["tries"]
    methods = ["static int8 (minmax)", "static int8 (percentile)", "static int8 (entropy)"]
    assert [t["method"] for t in tries] == methods[:len(tries)] and len(tries) >= 2
    assert [t["passed"] for t in tries] == [False] * (len(tries) - 1) + [True]
    assert tries[0]["top1_agreement"] < 80 and tries[-1]["top1_agreement"] >= 95
    assert record["quantization"]["calibration"] != "minmax" and record["gate"]["passed"]
    assert record["quality"]["chosen"] == tries[-1]["method"]
    assert record["metrics"]["accuracy_artifact"] >= record["metrics"]["accuracy_float"] - 1.0
    assert built["other"]["quality"]["tries"] == tries
    assert built["other"]["artifact"]["sha256"] == record["artifact"]["sha256"]
    assert built["other"]["metrics"]["data"]["samples"] == 100  # scored on its own evaluation data


@pytest.mark.slow  # two builds (~27 s); --quality fast runs in the default Lite0 test and the replay in test_recipe
def test_fast_is_one_pass_on_all_calibration_data_and_the_recipe_replays_it(glitched_app, tmp_path, run_cli):
    out = tmp_path / "fast"
    proc = run_cli("build", str(glitched_app), "--format", "onnx", "--quality", "fast", "--out", str(out))
    assert proc.returncode == 3, proc.stderr  # minmax over the glitch, and nothing tried instead
    m = json.loads((out / "manifest.json").read_text())
    record = m["formats"]["onnx"]
    assert record["quality"] == {"mode": "fast", "tries": [], "note": "one pass, as the recipe says"}
    assert record["quantization"]["calibration"] == "minmax"
    assert m["recipe"]["quality"] == "fast"
    quantize = next(s for s in m["steps"] if s["config"].get("samples") is not None and "calibration" in s["config"])
    assert quantize["config"]["samples"] == 64  # all of the calibration data
    proc = run_cli("build", "--recipe", str(out / "manifest.json"), "--out", str(tmp_path / "replay"))
    assert proc.returncode == 3, proc.stderr
    replay = json.loads((tmp_path / "replay" / "manifest.json").read_text())
    assert replay["formats"]["onnx"]["artifact"]["sha256"] == record["artifact"]["sha256"]


def test_an_unknown_quality_is_a_usage_error(run_cli, digits_app, tmp_path):
    proc = run_cli("build", str(digits_app), "--quality", "best", "--out", str(tmp_path / "b"))
    assert proc.returncode == 2 and "--quality" in proc.stderr and "auto" in proc.stderr, proc.stderr
    assert not (tmp_path / "b").exists()


def test_too_few_calibration_samples_to_choose_with_build_one_pass(digits_app, tmp_path):
    m = api.build(digits_app, "rpi4", api.recipe(formats=("onnx",), calib_samples=3), out=tmp_path / "b")
    assert m["formats"]["onnx"]["quality"]["tries"] == []
    assert "fewer than 4 calibration samples" in m["formats"]["onnx"]["quality"]["note"]


def test_linear_share_tells_a_transformer_from_a_cnn(digits_app):
    from edgekit.stages.macs import linear_share

    namespace: dict = {}
    exec(SCALED_MODEL, namespace)
    assert linear_share(namespace["make"](), (torch.zeros(1, 32),)) == 1.0
    cnn = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.Flatten(), torch.nn.Linear(16 * 30 * 30, 2))
    share = linear_share(cnn, (torch.zeros(1, 3, 32, 32),))
    conv, linear = 16 * 30 * 30 * 3 * 9, 16 * 30 * 30 * 2
    assert share == pytest.approx(linear / (conv + linear))


# A wide MLP whose first, small layer reads 64 pixels plus an unscaled "sensor" feature fixed at 1e4
# that it ignores (zero weights). Any int8 range of that input, static or per call, must reach 1e4:
# every pixel rounds to zero. No calibration, no dynamic activations can fix it; keeping the first
# layer float (0.4 % of the MACs) does, and the evaluation data has no labels.
@pytest.fixture(scope="module")
def sensor_mlp_app(tmp_path_factory, digits_app):
    # no labels in the evaluation data: the gate, and so the choice, is label-free
    return sensor_app(tmp_path_factory.mktemp("sensor"), (16, 512, 512), digits_app, eval_labels=False,
                      steps=80, lr=3e-3)


# litert in the slow run (~20 s): the fallback is the same code for every format
@pytest.mark.parametrize("fmt", ["onnx", pytest.param("litert", marks=pytest.mark.slow)])
def test_the_layer_no_range_can_quantize_is_kept_float_without_labels(sensor_mlp_app, tmp_path, fmt):
    if fmt == "litert":
        from conftest import require_litert

        require_litert()
    m = api.build(sensor_mlp_app, "rpi5", api.recipe(formats=(fmt,)), out=tmp_path / "b")
    record = m["formats"][fmt]
    quality = record["quality"]
    mixed = [t for t in quality["tries"] if t["method"].startswith("mixed precision")]
    before = [t for t in quality["tries"] if t not in mixed]
    assert before and not any(t["passed"] for t in before), quality["tries"]  # calibration, dynamic: none passes
    assert mixed[0]["quantization"]["float_layers"] == ["embed"] and mixed[0]["passed"], mixed
    assert quality["chosen"] == mixed[0]["method"] and "0.4 % of MACs" in mixed[0]["method"]
    assert record["quantization"]["float_layers"] == ["embed"] and record["gate"]["passed"]
    # on the evaluation data too, which the choice never saw
    assert record["metrics"]["top1_agreement"] >= 95 > max(t["top1_agreement"] for t in before)


def test_layers_are_found_through_subclasses_and_counted_in_macs():
    """EfficientNet's Conv2dStaticSamePadding is an nn.Conv2d that pads in its forward: the ranking,
    mixed precision and the accuracy fallback must see it (they saw only Lite0's classifier)."""
    from edgekit.formats.base import quantizable_layers
    from edgekit.stages.macs import layer_macs

    class SamePadConv(torch.nn.Conv2d):
        def forward(self, x):
            return super().forward(torch.nn.functional.pad(x, (1, 1, 1, 1)))

    model = torch.nn.Sequential(SamePadConv(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 16 * 16, 4))
    assert quantizable_layers(model) == ["0", "3"]
    assert layer_macs(model, (torch.zeros(1, 3, 16, 16),)) == {"0": 8 * 16 * 16 * 3 * 9, "3": 8 * 16 * 16 * 4}


def test_mixed_precision_is_not_tried_where_it_cannot_be_kept_and_says_why(scaled_app, tmp_path):
    """The scaled MLP in LiteRT (static only): every layer's input moves 1000x from sample to
    sample, so the error is spread over the layers, and the few that fit in 10 % of the MACs
    cannot carry half of it: no mixed-precision artifact is built, and the record says why."""
    from conftest import require_litert

    require_litert()
    with pytest.raises(BuildGateFailed) as err:
        api.build(scaled_app, "rpi5", api.recipe(formats=("litert",)), out=tmp_path / "b")
    quality = err.value.manifest["formats"]["litert"]["quality"]
    assert not any(t["method"].startswith("mixed precision") for t in quality["tries"]), quality["tries"]
    [note] = [n for n in quality["not_tried"] if n.startswith("mixed precision")]
    assert note.startswith("mixed precision not tried: the layers that fit in 10 % of the MACs carry"), note
    # nor the last resort, which LiteRT has (PT2E QAT) but this app gives it nothing to train on
    assert any(n.startswith("quantization-aware training not tried: no training inputs")
               for n in quality["not_tried"]), quality["not_tried"]
