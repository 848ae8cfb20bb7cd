"""`--format all`: three artifacts per sample (four with the litert extra), each run in its own real runtime."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgekit import api
from edgekit.formats import get_format

# The ViT's `--format all` build (four formats, ~2 minutes) runs with the slow tests.
APPS = ["digits", pytest.param("vit_digits", marks=pytest.mark.slow)]
FILES = {"executorch": "model.pte", "torchscript-lite": "model.ptl", "onnx": "model.onnx"}
if get_format("litert").available() is None:  # the extra is installed: `all` includes it
    FILES["litert"] = "model.tflite"


@pytest.fixture(scope="module", params=APPS)
def built(request, tmp_path_factory, digits_app):
    app = digits_app.parent / request.param
    out = tmp_path_factory.mktemp("formats") / request.param
    return {"app": app, "out": out, "manifest": api.build(app, "rpi4", api.recipe(formats=("all",)), out=out)}


def test_one_build_dir_holds_three_artifacts(built):
    m = built["manifest"]
    assert list(m["formats"]) == list(FILES)  # the target's format first
    assert m["format"] == "executorch" and m["artifact"] == m["formats"]["executorch"]["artifact"]
    for fmt, name in FILES.items():
        record = m["formats"][fmt]
        assert record["artifact"]["file"] == name
        assert (built["out"] / name).stat().st_size == record["artifact"]["bytes"]
        assert record["artifact"]["bytes"] < m["float"]["bytes"]


def test_each_int8_artifact_keeps_accuracy(built):
    for fmt, record in built["manifest"]["formats"].items():
        metrics = record["metrics"]
        assert metrics["samples"] == 360
        assert abs(metrics["accuracy_float"] - metrics["accuracy_artifact"]) <= 1.0, (fmt, metrics)


def test_formats_agree_with_each_other(built):
    pairs = built["manifest"]["cross_agreement"]
    names = list(FILES)
    assert set(pairs) == {f"{a}~{b}" for i, a in enumerate(names) for b in names[i + 1:]}
    assert all(v >= 97.0 for v in pairs.values()), pairs


def test_artifacts_run_in_their_runtimes_without_edgekit(built):
    """Load each file with its runtime's own API and score 100 held-out digits."""
    import onnxruntime as ort
    from executorch.runtime import Runtime
    from torch.jit.mobile import _load_for_lite_interpreter

    data = np.load(built["app"] / "eval.npz")
    x, y = data["x"][:100], data["y"][:100]
    torch.backends.quantized.engine = "qnnpack"
    pte = Runtime.get().load_program(str(built["out"] / "model.pte")).load_method("forward")
    ptl = _load_for_lite_interpreter(str(built["out"] / "model.ptl"))
    onnx = ort.InferenceSession(str(built["out"] / "model.onnx"), providers=["CPUExecutionProvider"])
    runners = {
        "executorch": lambda t: pte.execute([t])[0],
        "torchscript-lite": lambda t: ptl(t),
        "onnx": lambda t: torch.from_numpy(onnx.run(None, {"x": t.numpy()})[0]),
    }
    for fmt, run in runners.items():
        hits = sum(int(run(torch.from_numpy(xi[None])).argmax()) == int(yi) for xi, yi in zip(x, y))
        assert hits >= 93, (fmt, hits)


def test_each_format_is_really_int8(built):
    import onnx

    formats = built["manifest"]["formats"]
    graph = onnx.load(str(built["out"] / "model.onnx")).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ form
    int8_weights = [i for i in graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert int8_weights, "weights should be stored as int8"
    assert any(op.startswith("quantized::linear") for op in formats["torchscript-lite"]["lowering"]["quantized_operators"])
    assert formats["executorch"]["lowering"]["xnnpack_delegated"]


def test_mobile_optimizer_state_is_recorded(built):
    state = built["manifest"]["formats"]["torchscript-lite"]["lowering"]["optimize_for_mobile"]
    if torch._C._is_xnnpack_enabled():
        assert state == "applied"
    else:
        assert state.startswith("skipped: ") and "XNNPACK" in state


def test_the_report_answers_the_three_questions_in_80_columns(built, run_cli):
    """`edgekit report` piped (as CI logs see it, 80 columns): each artifact's verdict, its own
    predicted latency on the target and the recommendation, no name cut."""
    proc = run_cli("report", str(built["out"]), "--no-html", columns=80)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80 and "…" not in proc.stdout, proc.stdout
    from edgekit.report.format import ms

    m = built["manifest"]
    for fmt, name in FILES.items():
        [row] = [line for line in lines if line.split()[:1] == [name]]
        assert "✓ passed" in row, row
        p = m["validation"]["formats"][fmt]["prediction"]
        assert f"{ms(p['low_ms'])}–{ms(p['high_ms'])}" in row, (row, p)  # each format its own range
    assert "recommended: ship model.pte" in " ".join(proc.stdout.split())


def test_report_html_first_screen_renders_in_chromium(built, run_cli, tmp_path):
    """The page in headless Chromium at 1280x800: the recommendation and every artifact's verdict
    on the first screen, the per-format detail collapsed below it, no broken image."""
    from chromium import chromium_path, first_screen

    chromium_path()  # skip (or, under CI, fail) before the report is written
    proc = run_cli("report", str(built["out"]))
    assert proc.returncode == 0, proc.stderr
    seen = first_screen(built["out"] / "report.html", tmp_path / "first-screen.png")
    text = " ".join(seen["text"].split())
    assert "Recommended: ship model.pte" in text and "At a glance" in text, text
    for name in FILES.values():
        assert name in text, name
    assert text.count("✓ passed") >= len(FILES), text
    assert seen["broken_images"] == [] and seen["images"] >= len(FILES) + 2  # sizes, cosines, a confusion each
    assert (tmp_path / "first-screen.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow  # ~30 s (every format built); the recommendation stays in the default run (test_report)
def test_format_auto_keeps_the_artifact_to_ship_over_the_profiles_slower_format(digits_app, tmp_path, run_cli):
    """A board profile that prefers .ptl: `--format auto` builds every format and keeps as the
    primary the one predicted fastest among those that pass, saying why; .ptl (QNNPACK: no
    dot-product kernels, docs/cost_model.md) is predicted slower, so it is not kept."""
    import json
    import re

    from edgekit.target import targets_dir

    profile = re.sub(r'^format = "executorch"', 'format = "torchscript-lite"',
                     (targets_dir() / "rpi5.toml").read_text(), flags=re.M)
    profile = re.sub(r'^backend = "xnnpack"', 'backend = "qnnpack"', profile, flags=re.M)
    board = tmp_path / "myboard.toml"
    board.write_text(profile)
    out = tmp_path / "b"
    proc = run_cli("build", str(digits_app), "--target", str(board), "--format", "auto", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    m = json.loads((out / "manifest.json").read_text())
    choice = m["format_choice"]
    candidates = {c["format"]: c for c in choice["candidates"]}
    assert {"executorch", "torchscript-lite", "onnx"} <= set(candidates) and all(c["passed"] for c in candidates.values())
    chosen = choice["chosen"]
    assert chosen != "torchscript-lite" and m["format"] == chosen and m["artifact"] == m["formats"][chosen]["artifact"]
    assert candidates["torchscript-lite"]["predicted_ms"] > 1.1 * candidates[chosen]["predicted_ms"]
    assert "fastest predicted on myboard (model.ptl slower)" in choice["why"], choice
    assert f"--format auto: kept {choice['file']}" in " ".join(proc.stderr.split())
    assert next(iter(m["formats"])) == chosen  # the primary, first in the manifest as in every build


def test_format_auto_fails_the_build_only_when_no_candidate_passes():
    from edgekit.build import _choose_primary

    class Console:
        def print(self, *_):
            pass

    class Steps:
        console = Console()

    def record(file, passed):
        return {"artifact": {"file": file}, "gate": {"passed": passed}, "metrics": {"cosine": 0.99}}

    def manifest(records):
        return {"target": "rpi5", "target_profile": {"format": "executorch"}, "formats": records,
                "validation": {"formats": {f: {"lint": {"macs_fast_share": 1.0}} for f in records}}}

    records = {"executorch": record("model.pte", False), "onnx": record("model.onnx", True)}
    m, failures = _choose_primary(manifest(records), records, ["model.pte: cosine"], Steps(), manifest)
    assert failures == [] and m["format_choice"]["chosen"] == "onnx" and next(iter(m["formats"])) == "onnx"
    records["onnx"] = record("model.onnx", False)
    m, failures = _choose_primary(manifest(records), records, ["model.pte: cosine", "model.onnx: cosine"], Steps(), manifest)
    assert len(failures) == 2 and m["format_choice"]["chosen"] is None
