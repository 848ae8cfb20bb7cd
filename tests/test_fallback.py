"""Accuracy-aware fallback: a model with one layer that int8 ruins.

The model reads 64 pixels plus one unnormalised "sensor" feature fixed at 1e4
that it ignores (zero weights) — a realistic unscaled input. Quantizing the
first layer's input per-tensor over [0, 1e4] crushes every pixel to zero, so
plain int8 collapses to chance; keeping that one layer (`embed`) float fixes it.
"""

from __future__ import annotations

import json

import pytest

from conftest import sensor_app
from edgekit import api
from edgekit.errors import BuildGateFailed, GateError, UsageError

@pytest.fixture(scope="module")
def outlier_app(tmp_path_factory, digits_app):
    return sensor_app(tmp_path_factory.mktemp("outlier"), (64, 64), digits_app, eval_labels=True, steps=60, lr=1e-2)


def _drop(record: dict) -> float:
    return record["metrics"]["accuracy_float"] - record["metrics"]["accuracy_artifact"]


def test_plain_int8_ruins_the_model(outlier_app, tmp_path):
    with pytest.raises(BuildGateFailed) as err:  # the label-free gate catches it, no budget needed
        api.build(outlier_app, "rpi4", api.recipe(formats=("executorch",), calibration="minmax"), out=tmp_path / "b")
    m = err.value.manifest
    assert not m["formats"]["executorch"]["gate"]["passed"]
    assert m["metrics"]["accuracy_float"] >= 90.0
    assert _drop(m) > 50.0  # far over any sane budget
    assert "fallback" not in m["formats"]["executorch"]


# onnx in the default run; the PT2E formats' fallback (50 s of ExecuTorch lowering per try) in the slow one
@pytest.mark.parametrize("fmt", [pytest.param("executorch", marks=pytest.mark.slow), "onnx",
                                 pytest.param("torchscript-lite", marks=pytest.mark.slow)])
def test_budget_is_met_by_keeping_the_outlier_layer_float(outlier_app, tmp_path, fmt):
    m = api.build(outlier_app, "rpi4", api.recipe(formats=(fmt,), calibration="minmax", max_accuracy_drop=1.0),
                  out=tmp_path / "b")
    record = m["formats"][fmt]
    assert _drop(record) <= 1.0
    fallback = record["fallback"]
    assert fallback["met"] is True
    assert [f["layer"] for f in fallback["float_layers"]] == ["embed"]
    assert "SQNR" in fallback["float_layers"][0]["why"]
    assert record["quantization"]["float_layers"] == ["embed"]
    assert fallback["tries"][0]["float_layers"] == [] and fallback["tries"][0]["disagreement"] > 50
    assert fallback["tries"][-1]["disagreement"] <= 1.0  # chosen on the calibration inputs
    assert fallback["chosen_on"] == "top-1 disagreement with float on the calibration inputs"
    assert m["sensitivity"][0]["layer"] == "embed"  # ranked most harmful
    assert (tmp_path / "b" / record["artifact"]["file"]).is_file()


def test_no_fallback_fails_the_gate_and_keeps_the_build(outlier_app, tmp_path, run_cli):
    out = tmp_path / "b"
    proc = run_cli("build", str(outlier_app), "--format", "onnx", "--calibration", "minmax",
                   "--max-accuracy-drop", "1", "--no-fallback", "--out", str(out))
    assert proc.returncode == 3, proc.stderr
    assert "over the --max-accuracy-drop 1 budget" in proc.stderr and "Traceback" not in proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["gate"]["max_accuracy_drop"] == 1.0 and manifest["gate"]["fallback"] is False
    assert (out / "model.onnx").is_file()


def test_gate_error_is_raised_from_the_api(outlier_app, tmp_path):
    with pytest.raises(GateError, match="budget"):
        api.build(outlier_app, "rpi4", api.recipe(formats=("onnx",), calibration="minmax", max_accuracy_drop=1.0,
                                                no_fallback=True), out=tmp_path / "b")


def test_budget_needs_labelled_data(outlier_app, tmp_path, monkeypatch):
    monkeypatch.chdir(outlier_app)  # --model imports from the current directory
    with pytest.raises(UsageError, match="labelled evaluation data"):
        api.build(api.source(model="model:make", input_shape="1,65", calib="calib.npz"), "rpi4",
                  api.recipe(formats=("onnx",), max_accuracy_drop=1.0), out=tmp_path / "b")


def test_fallback_chooses_on_the_calibration_inputs_and_puts_the_best_back_on_disk(monkeypatch):
    """The tries are judged on the calibration inputs and the kept one is built last (every try
    writes the same file), judged on the evaluation data, which decides nothing: here it says
    the budget was met although no try met it on the calibration inputs, and the kept layers are
    the ones closest to float there. (The build step is scripted; the real backends are above.)"""
    from types import SimpleNamespace

    from edgekit.build import fallback
    from edgekit.formats.base import QuantConfig

    disagreements = {(): 40.0, ("a",): 3.0, ("a", "b"): 9.0}  # budget 1: never met; closest is ("a",)
    built = []

    def fake_build(ctx, backend, cfg, stage="validate"):
        built.append((ctx.loaded.where, cfg.skip_layers))
        if ctx.loaded.where == "calib":
            metrics = {"top1_agreement": 100.0 - disagreements[cfg.skip_layers]}
        else:  # the evaluation data: a drop within the budget, whichever layers
            metrics = {"top1_agreement": 99.5, "accuracy_float": 90.0, "accuracy_artifact": 89.5}
        return {"format": "x", "quantization": cfg.to_json(), "metrics": metrics}

    class Loaded(SimpleNamespace):
        def judged_on(self, evaluation, held_out):
            return Loaded(where="calib", calib=self.calib)

    monkeypatch.setattr(fallback, "build_format", fake_build)
    from edgekit.build.artifact import BuildContext

    ctx = BuildContext(loaded=Loaded(where="eval", calib=None), stage=None, gate=None, cache=None, model_digest="",
                       steps=SimpleNamespace(console=SimpleNamespace(print=lambda *a, **k: None)))
    ranking = [{"layer": "a", "output_sqnr_db": 5.0}, {"layer": "b", "output_sqnr_db": 9.0}]
    best, _ = fallback.fall_back(ctx, None, QuantConfig(), ranking, 1.0)
    assert built == [("calib", ()), ("calib", ("a",)), ("calib", ("a", "b")), ("eval", ("a",))]
    assert best["quantization"]["float_layers"] == ["a"]
    assert [t["float_layers"] for t in best["fallback"]["tries"]] == [[], ["a"], ["a", "b"]]
    assert [t["disagreement"] for t in best["fallback"]["tries"]] == [40.0, 3.0, 9.0]
    assert best["fallback"]["met"] is True  # by the evaluation data, which chose nothing


@pytest.mark.slow  # a fallback build (~20 s)
def test_report_shows_the_ranking_and_the_layers_kept_float(outlier_app, tmp_path):
    out = tmp_path / "b"
    api.build(outlier_app, "rpi4", api.recipe(formats=("onnx",), calibration="minmax", max_accuracy_drop=1.0), out=out)
    data = api.report(out)
    assert data["sensitivity"][0]["layer"] == "embed"
    assert data["fallbacks"] == [{"format": "onnx", "budget_points": 1.0, "met": True,
                                  "float_layers": data["fallbacks"][0]["float_layers"]}]
    assert data["fallbacks"][0]["float_layers"][0]["layer"] == "embed"
    html = (out / "report.html").read_text()
    assert "Quantization sensitivity" in html
    assert "kept float for the 1-point accuracy budget (met): embed" in html
