"""LiteRT `.tflite`, the fourth format: built through litert-torch's PT2E path, scored in ai_edge_litert.

The accuracy here is measured without edgekit: the file is loaded with
ai_edge_litert's own Interpreter, the held-out digits are quantized by hand with
the input tensor's scale and zero point, and the arg-max of the int8 output is
compared with the labels and with the float model run in torch.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import require_litert
from edgekit.runtime import RUNNER_PATH


@pytest.fixture(scope="module")
def litert_build(tmp_path_factory, digits_app, run_cli) -> dict:
    require_litert()
    out = tmp_path_factory.mktemp("litert") / "digits-rpi4"
    proc = run_cli("build", str(digits_app), "--target", "rpi4", "--format", "litert", "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    return {"dir": out, "manifest": json.loads(proc.stdout), "stderr": proc.stderr}


def _float_accuracy(app, x, y) -> float:
    """The sample's own model.py and weights in torch: no edgekit code between the file and the figure."""
    spec = importlib.util.spec_from_file_location("digits_model", app / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.build_model()
    model.load_state_dict(torch.load(app / "weights.pt", weights_only=True))
    model.eval()
    with torch.no_grad():
        predictions = model(torch.from_numpy(x)).argmax(1).numpy()
    return 100.0 * float((predictions == y).mean())


def test_tflite_keeps_float_accuracy_in_ai_edge_litert(litert_build, digits_app):
    from ai_edge_litert.interpreter import Interpreter

    path = litert_build["dir"] / "model.tflite"
    assert litert_build["manifest"]["artifact"]["file"] == "model.tflite"
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert inp["dtype"] == np.int8 and out["dtype"] == np.int8  # a fully int8 model, not float with int8 weights
    scale, zero = inp["quantization"]
    data = np.load(digits_app / "eval.npz")
    x, y = data["x"], data["y"]
    hits = 0
    for xi, yi in zip(x, y):
        q = np.clip(np.round(xi[None] / scale) + zero, -128, 127).astype(np.int8)
        interpreter.set_tensor(inp["index"], q)
        interpreter.invoke()
        hits += int(interpreter.get_tensor(out["index"]).argmax()) == int(yi)
    accuracy = 100.0 * hits / len(y)
    float_accuracy = _float_accuracy(digits_app, x, y)
    assert abs(accuracy - float_accuracy) <= 1.0, (accuracy, float_accuracy)
    # The build's own figures are the same measurement.
    metrics = litert_build["manifest"]["metrics"]
    assert metrics["samples"] == len(y)
    assert metrics["accuracy_artifact"] == pytest.approx(accuracy, abs=0.005)  # the manifest keeps 2 decimals
    assert metrics["accuracy_float"] == pytest.approx(float_accuracy, abs=0.005)


def test_tflite_build_passes_the_gate_and_is_int8(litert_build):
    m = litert_build["manifest"]
    assert m["format"] == "litert" and list(m["formats"]) == ["litert"]
    record = m["formats"]["litert"]
    assert record["gate"]["passed"] is True
    lowering = record["lowering"]
    assert {"CONV_2D", "FULLY_CONNECTED"} <= set(lowering["operators"])
    # int8 from input to output: no op converts to or from float inside the graph
    assert lowering["quantize_ops"] == 0 and lowering["dequantize_ops"] == 0
    assert record["artifact"]["bytes"] < m["float"]["bytes"] / 3  # int8 weights: about a quarter of float32


def test_library_noise_stays_out_of_the_terminal(litert_build):
    """torchao's CUDA-kernel notes, torch's pytree deprecations, the converter's absl lines: none reach stderr."""
    lines = litert_build["stderr"].splitlines()
    assert lines and all(line.startswith(("✓ ", "… ")) for line in lines), lines  # a step's end, or (piped) its start


def test_validate_judges_the_tflite(litert_build, run_cli):
    proc = run_cli("validate", str(litert_build["dir"]), "--runs", "5", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    result = doc["formats"]["litert"]
    assert doc["ok"] and result["parity"]["ok"] and result["parity"]["samples"] == 360
    assert result["lint"]["findings"] == []  # every conv and linear reads int8
    assert result["resources"]["ok"] and result["resources"]["latency"]["p50"] > 0
    assert result["profile"]["ops"] == [] and "benchmark_model" in result["profile"]["why"]


def test_the_device_runner_runs_the_tflite(litert_build):
    """runtime/runner.py, the file deploy copies to a board, with ai_edge_litert as the board's runtime."""
    spec = json.dumps(litert_build["manifest"]["model"]["inputs"])
    proc = subprocess.run([sys.executable, str(RUNNER_PATH), str(litert_build["dir"] / "model.tflite"), "--runtime", "litert",
                           "--input-spec", spec, "--runs", "5", "--warmup", "1", "--threads", "1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    assert doc["runtime"]["name"] == "litert" and doc["runs"] == 5 and doc["min"] > 0


def test_without_the_extra_litert_exits_2_naming_it(digits_app, tmp_path):
    """The extra hidden from the interpreter (sys.modules entries of None make imports fail)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import sys\nfor name in ('litert_torch', 'ai_edge_litert'):\n    sys.modules[name] = None\n")
    env = {**os.environ, "PYTHONPATH": str(site), "COLUMNS": "200"}
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "edgekit", "build", str(digits_app), "--format", "litert",
                           "--out", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "edgekit[litert]" in proc.stderr and "--format litert" in proc.stderr
    assert not out.exists()  # refused before anything was written
