"""End to end: the bundled digits sample built for rpi4, checked against its accuracy and size bars."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from edgekit.manifest import MANIFEST


def test_manifest_has_the_documented_fields(digits_build):
    m = digits_build["manifest"]
    assert m["target"] == "rpi4"
    assert m["format"] == "executorch"
    assert set(m["artifact"]) >= {"file", "sha256", "bytes"}
    assert m["float"]["bytes"] > 0
    assert set(m["metrics"]) >= {"accuracy_float", "accuracy_artifact", "top1_agreement", "max_abs_error"}
    # select: --quality auto's check on the calibration inputs; validate: on the evaluation data
    assert [s["stage"] for s in m["steps"]] == ["load", "quantize", "export", "select", "validate"]
    assert all(s["seconds"] > 0 and isinstance(s["config"], dict) for s in m["steps"])
    assert m["versions"]["torch"].startswith("2.13.0")
    assert m["versions"]["executorch"] == "1.5.1"
    assert m["versions"]["edgekit"]
    # The manifest printed with --json is the one written in the build dir.
    on_disk = json.loads((digits_build["dir"] / MANIFEST).read_text())
    assert on_disk["artifact"] == m["artifact"] and on_disk["metrics"] == m["metrics"]


def test_int8_keeps_accuracy_and_shrinks_the_model(digits_build):
    metrics = digits_build["manifest"]["metrics"]
    assert metrics["samples"] == 360  # the whole held-out split was scored
    assert metrics["accuracy_float"] >= 95.0
    assert abs(metrics["accuracy_artifact"] - metrics["accuracy_float"]) <= 1.0
    assert metrics["top1_agreement"] >= 97.0
    m = digits_build["manifest"]
    assert m["artifact"]["bytes"] <= 0.35 * m["float"]["bytes"]


def test_artifact_on_disk_matches_the_manifest(digits_build):
    art = digits_build["manifest"]["artifact"]
    path = digits_build["dir"] / art["file"]
    data = path.read_bytes()
    assert len(data) == art["bytes"]
    assert hashlib.sha256(data).hexdigest() == art["sha256"]
    leftovers = [p.name for p in digits_build["dir"].iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_pte_is_lowered_to_xnnpack(digits_build):
    """Read the program back from the file: the delegate must be in the .pte itself."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    pte = deserialize_pte_binary((digits_build["dir"] / "model.pte").read_bytes())
    program = getattr(pte, "program", pte)
    delegates = [d.id for plan in program.execution_plan for d in plan.delegates]
    assert "XnnpackBackend" in delegates
    assert digits_build["manifest"]["lowering"]["ops_outside_delegate"] == []


def test_pte_runs_in_the_executorch_runtime_and_agrees_with_float(digits_build, digits_app):
    """Independently of the build's own validation: load, run, compare with the float model."""
    from executorch.runtime import Runtime

    from edgekit.model.app import build_module, load_app

    method = Runtime.get().load_program(str(digits_build["dir"] / "model.pte")).load_method("forward")
    model = build_module(load_app(digits_app))
    data = np.load(digits_app / "eval.npz")
    x, y = data["x"][:50], data["y"][:50]
    hits = 0
    for xi, yi in zip(x, y):
        t = torch.from_numpy(xi[None])
        out = method.execute([t])[0]
        with torch.no_grad():
            ref = model(t)
        assert out.shape == (1, 10)
        assert torch.allclose(out, ref, atol=0.5), (out, ref)
        hits += int(out.argmax()) == int(yi)
    assert hits >= 47


def test_summary_progress_goes_to_stderr(digits_build):
    """--json keeps stdout machine-readable: stage lines only on stderr."""
    assert "quantize" in digits_build["stderr"]
    assert "warning" not in digits_build["stderr"]  # the sample ships real calibration data


@pytest.mark.slow  # a second build (~25 s)
def test_rebuild_replaces_the_previous_build(digits_build, run_cli, tmp_path):
    """A second build to the same --out replaces the first whole, old files included."""
    import shutil

    out = tmp_path / "b"
    shutil.copytree(digits_build["dir"], out)
    (out / "stale.txt").write_text("from an older build")
    proc = run_cli("build", "sample_apps/digits", "--out", str(out), "--json", "--calib-samples", "20")
    assert proc.returncode == 0, proc.stderr
    assert not (out / "stale.txt").exists()
    assert json.loads((out / MANIFEST).read_text())["steps"][1]["config"]["samples"] == 20


def test_summary_table_says_what_the_demo_promises(digits_build, capsys):
    """`make demo` ends with float vs int8 accuracy, sizes, the artifact path, lint and the prediction."""
    from edgekit.report.terminal import print_build_summary

    print_build_summary(digits_build["manifest"] | {"build_dir": "build/digits-rpi4"})
    out = capsys.readouterr().out
    m = digits_build["manifest"]["metrics"]
    assert f"{m['accuracy_float']:.2f}" in out and f"{m['accuracy_artifact']:.2f}" in out
    assert "model.pte" in out and "build/digits-rpi4/" in out
    assert "KB" in out and "0.27" in out  # size and its ratio to the float state_dict
    assert "lint: clean" in out and "predicted on rpi4:" in out
