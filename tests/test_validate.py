"""`edgekit validate`: sha256 first, then parity/accuracy, lint, prediction, resources and profile, merged into the manifest."""

from __future__ import annotations

import json

import pytest
import torch

from edgekit import api
from edgekit.errors import GateError



def _manifest(build) -> dict:
    return json.loads((build / "manifest.json").read_text())


def test_validate_digits_build(build_copy, run_cli):
    proc = run_cli("validate", str(build_copy), "--format", "executorch", "--runs", "5", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    ex = doc["formats"]["executorch"]

    parity = ex["parity"]
    assert parity["ok"] and parity["samples"] == 360 and parity["data"] == "evaluation data"
    out = parity["outputs"][0]
    assert out["accuracy_float"] >= 97 and out["accuracy_artifact"] >= 97
    assert out["top1_agreement"] >= 97 and out["cosine"] > 0.99
    assert 0 < out["max_steps"] < 32  # errors in int8 output levels are measured and recorded
    # judged by the gate the build recorded, with the build's own code (edgekit/compare.py)
    manifest = _manifest(build_copy)
    assert parity["gate"] == {k: manifest["gate"][k] for k in parity["gate"]}
    assert parity["gate"]["min_agreement"] == 95.0 and parity["gate"]["min_cosine_scores"] == 0.95

    assert ex["lint"]["findings"] == [] and ex["lint"]["macs_fast_share"] == 1.0
    pred = ex["prediction"]
    assert pred["target"] == "rpi4" and 0 < pred["low_ms"] < pred["latency_ms"] < pred["high_ms"]

    res = ex["resources"]
    assert res["fits"] and res["ok"] and res["threads"] <= 4 and len(res["cores"]) <= 4
    assert res["peak_rss_mb"] > res["runtime_baseline_rss_mb"] > 0
    assert res["latency"]["p50"] > 0 and res["latency"]["runs"] >= 5

    ops = ex["profile"]["ops"]
    assert ops and all(o["ms"] >= 0 and o["name"] for o in ops)
    assert any("Convolution" in o["name"] for o in ops)  # XNNPACK's own operator names, from ETDump

    manifest = _manifest(build_copy)
    assert manifest["validation"] == doc  # merged, whole
    assert manifest["prediction"] == pred
    runs = [r for r in manifest["device_runs"] if r["device"] == "host-validate"]
    assert len(runs) == 1 and runs[0]["p50"] == res["latency"]["p50"]

    report = api.report(build_copy, html=False)
    host = next(r for r in report["runs"] if r["device"] == "host-validate")
    assert host["ops"] and host["host"] and not report["prediction"]["runs"][0]["comparable"]


def test_tampered_artifact_is_refused(build_copy, run_cli):
    artifact = build_copy / "model.pte"
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    artifact.write_bytes(bytes(data))
    before = (build_copy / "manifest.json").read_text()
    proc = run_cli("validate", str(build_copy))
    assert proc.returncode == 2, proc.stderr
    assert "model.pte" in proc.stderr and "sha256" in proc.stderr and "fix:" in proc.stderr
    assert (build_copy / "manifest.json").read_text() == before  # nothing recorded for a file we don't trust


def test_parity_failure_names_the_output_and_exits_3(build_copy, tmp_path):
    """A float reference that is not what the artifact was made from (here: the last layer's weights
    negated) must fail parity with the output named and the size of the error."""
    manifest = _manifest(build_copy)
    state = torch.load(manifest["model"]["weights"], weights_only=True)
    last = [k for k in state if k.endswith("weight")][-1]
    state[last] = -state[last]
    torch.save(state, tmp_path / "other.pt")
    manifest["model"]["weights"] = str(tmp_path / "other.pt")
    (build_copy / "manifest.json").write_text(json.dumps(manifest))

    with pytest.raises(GateError) as err:  # in-process: the CLI maps GateError to exit 3 (test_errors)
        api.validate(build_copy, checks=["parity"], formats=["executorch"])
    assert err.value.exit_code == 3
    message = str(err.value)
    assert "executorch parity: output 0" in message
    assert "output steps" in message or "top-1 agreement" in message
    recorded = _manifest(build_copy)["validation"]
    assert recorded["ok"] is False and recorded["failures"]


def test_a_validate_of_fewer_checks_keeps_the_builds_lint_and_prediction():
    """`edgekit validate --check parity` after a build: the lint and the prediction the build made
    (what the report shows per format) stay, marked as kept; another target's are not mixed in."""
    from edgekit.validate.run import _keep_earlier_checks

    build = {"target": "rpi5", "by": "build", "time": "t0",
             "formats": {"onnx": {"lint": {"checked": True}, "prediction": {"low_ms": 1.0}}}}
    doc = {"target": "rpi5", "formats": {"onnx": {"parity": {"ok": True}}}}
    _keep_earlier_checks(build, doc)
    assert doc["formats"]["onnx"] == {"lint": {"checked": True}, "prediction": {"low_ms": 1.0}, "parity": {"ok": True}}
    assert doc["kept"] == {"by": "build", "time": "t0", "checks": {"onnx": ["lint", "prediction"]}}
    other = {"target": "pi-zero2", "formats": {"onnx": {"parity": {"ok": True}}}}
    _keep_earlier_checks(build, other)
    assert other["formats"]["onnx"] == {"parity": {"ok": True}} and "kept" not in other
