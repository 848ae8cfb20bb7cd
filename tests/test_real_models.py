"""Models nobody here wrote, on real inputs: every format handles them or names its limit, and the
quality gate says honestly whether each artifact kept the float model's outputs.

Pretrained (weights shipped in registry packages, no download): all-MiniLM-L6-v2 on real
sentences (sample_apps/minilm) and EfficientNet-Lite0 on photo crops (sample_apps/efficientnet_lite0).
Random weights from real `transformers` configs and packages (tests/real_models.py) for the
structures: attention masks, position/token-type buffers, F.pad "same" padding,
squeeze-excite, hardswish/SiLU. The default run keeps a representative subset; the rest is
marked slow (`make test-slow`, which CI runs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from edgekit.formats import get_format

# `--format all` builds LiteRT too when its extra is installed (`make install` installs it).
LITERT = {"litert"} if get_format("litert").available() is None else set()
APPS = REPO / "sample_apps"
TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def real_data(tmp_path_factory) -> Path:
    """Real inputs for every model here, written once: token ids of real sentences, photo crops,
    and the two pretrained apps' own calibration/evaluation sets."""
    import real_models as R

    out = tmp_path_factory.mktemp("real-data")
    for app in ("minilm", "efficientnet_lite0"):
        subprocess.run([sys.executable, str(APPS / app / "data.py"), "--out", str(out / app)], check=True,
                       capture_output=True)
    tokens = R.token_ids(96)
    np.savez(out / "text_calib.npz", **{k: v[:32] for k, v in tokens.items()})
    np.savez(out / "text_eval.npz", **{k: v[32:] for k, v in tokens.items()})
    np.savez(out / "ids_calib.npz", input_ids=tokens["input_ids"][:32])
    np.savez(out / "ids_eval.npz", input_ids=tokens["input_ids"][32:])
    for size in (64, 96, 224):
        np.savez(out / f"img{size}_calib.npz", x=R.photo_crops(16, 0, size))
        np.savez(out / f"img{size}_eval.npz", x=R.photo_crops(16, 1, size))
    np.savez(out / "mel_calib.npz", x=R.log_mel(16, 0))
    np.savez(out / "mel_eval.npz", x=R.log_mel(16, 1))
    return out


def build(*args: str, cwd: Path | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """`edgekit build` as a user runs it, with tests/ importable for `--model real_models:NAME`."""
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(TESTS)}
    return subprocess.run([sys.executable, "-m", "edgekit", "build", *args], cwd=cwd or REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def manifest_of(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def _data(data: Path, stem: str) -> list[str]:
    return ["--calib", str(data / f"{stem}_calib.npz"), "--eval", str(data / f"{stem}_eval.npz")]


TEXT = ["--input", "input_ids:1x16:int64", "--input", "attention_mask:1x16:int64", "--task", "embedding"]
HF_TORCHSCRIPT_LIMIT = "FX graph-mode quantization cannot trace this model's forward"


# ---------------------------------------------------------------- default run: a representative subset


def test_hf_encoder_with_a_mask_builds_in_every_format_that_can_take_it(real_data, tmp_path):
    """The reported crash: a BERT whose forward makes its own attention mask (integers expanded,
    compared and used as indices inside the graph). ExecuTorch and ONNX keep its outputs; the lite
    interpreter's static int8 (FX tracing) cannot trace transformers and says so."""
    out = tmp_path / "b"
    proc = build("--model", "real_models:bert_mask_inside", "--input", "input_ids:1x16:int64", "--task", "embedding",
                 *_data(real_data, "ids"), "--format", "all", "--target", "rpi5", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    m = manifest_of(out)
    assert set(m["formats"]) == {"executorch", "onnx"} | LITERT
    for fmt, record in m["formats"].items():
        assert record["gate"]["passed"] and record["metrics"]["cosine"] > 0.999, fmt
        assert record["metrics"]["data"]["held_out"] and not record["metrics"]["data"]["labels"]
    # its boolean padding mask reaches SDPA: the attention is rewritten onto the delegate, so its
    # decomposition's safe softmax (any, eq, logical_not over the scores) is not left on portable kernels
    lowering = m["formats"]["executorch"]["lowering"]
    assert any(r["rewrite"].startswith("scaled_dot_product_attention") for r in lowering["rewrites"]), lowering
    assert not {"any", "eq", "logical_not"} & set(lowering["ops_outside_delegate"]), lowering["ops_outside_delegate"]
    skipped = m["skipped_formats"]["torchscript-lite"]
    assert HF_TORCHSCRIPT_LIMIT in skipped["error"] and "--quant dynamic" in skipped["hint"]
    assert "torchscript-lite skipped" in proc.stdout  # said in the summary, not only in the manifest
    assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow  # two builds (~25 s)
def test_hf_encoder_for_the_lite_interpreter_alone_is_a_named_limit_and_dynamic_works(real_data, tmp_path):
    proc = build("--model", "real_models:bert", *TEXT, *_data(real_data, "text"), "--format", "torchscript-lite",
                 "--out", str(tmp_path / "static"))
    assert proc.returncode == 2, proc.stderr
    assert HF_TORCHSCRIPT_LIMIT in proc.stderr and "--quant dynamic" in proc.stderr
    assert not (tmp_path / "static").exists()
    out = tmp_path / "dynamic"
    proc = build("--model", "real_models:bert", *TEXT, *_data(real_data, "text"), "--format", "torchscript-lite",
                 "--quant", "dynamic", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    record = manifest_of(out)["formats"]["torchscript-lite"]
    assert "quantized::linear_dynamic" in record["lowering"]["quantized_operators"]
    assert record["gate"]["passed"] and record["metrics"]["cosine"] > 0.999


@pytest.mark.slow  # ~6 minutes (four tries per format); the default run keeps the pretrained CNN and a masked HF encoder
def test_pretrained_sentence_encoder_on_real_sentences_keeps_its_embeddings(real_data, tmp_path):
    """all-MiniLM-L6-v2 (real weights) on 128 real sentences, no labels. Static int8 costs its
    embeddings too much (BERT's outlier activations: cosine ~0.86), whatever the calibration; on
    the calibration sentences --quality auto finds that and keeps dynamic int8 activations,
    which hold cosine >= 0.99 on the evaluation sentences in both formats."""
    out = tmp_path / "b"
    proc = build(str(APPS / "minilm"), "--calib", str(real_data / "minilm" / "calib.npz"), "--eval", str(real_data / "minilm" / "eval.npz"),
                 "--format", "executorch", "--format", "onnx", "--target", "rpi5", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    m = manifest_of(out)
    assert m["gate"]["task"] == "embedding" and m["gate"]["min_cosine"] == 0.99
    for fmt, record in m["formats"].items():
        metrics = record["metrics"]
        assert metrics["top1_agreement"] is None  # an embedding has no top class
        assert metrics["data"] == {"source": str(real_data / "minilm" / "eval.npz"), "samples": 128,
                                   "held_out": True, "labels": False}
        assert metrics["cosine"] >= 0.99 and record["gate"]["passed"], (fmt, metrics["cosine"])
        quality = record["quality"]
        static = [t for t in quality["tries"] if t["quantization"]["scheme"] == "static"]
        assert static and not any(t["passed"] for t in static), fmt
        assert all(0.7 < t["cosine"] < 0.99 for t in static if t.get("cosine") is not None), static
        assert quality["chosen"] == "dynamic int8 activations" and record["quantization"]["scheme"] == "dynamic"
    assert "--quality auto kept dynamic int8 activations" in proc.stdout and "tries: the first clearly" in proc.stdout
    assert "✓ model.pte" in proc.stdout and "✓ model.onnx" in proc.stdout
    assert "Loading weights" not in proc.stderr  # transformers' progress bars stay off the terminal


def test_pretrained_efficientnet_lite0_keeps_its_predictions_in_int8(real_data, tmp_path):
    """EfficientNet-Lite0 with its ImageNet weights on photo crops. ExecuTorch's tutorial path
    keeps the float top-1 on about half of them (its ReLU6 ranges are the convs' pre-activation
    ranges, bench/RESULTS.md); edgekit's .pte keeps >= 90 % with cosine >= 0.99, fully on the
    XNNPACK delegate, and its .onnx >= 95 % with cosine >= 0.995 (with nearest weight rounding
    they kept 91 % / 0.994 and 94 % / 0.994: GPTQ rounding, formats/rounding.py, closes that).
    The gate still judges them: on the crops where float is confident it asks 95 %, and an
    artifact under that is marked and exits 3, never a ✓."""
    data = real_data / "efficientnet_lite0"
    out = tmp_path / "b"
    # --quality fast: one pass per format. auto would also try the other calibrations, which on
    # these 32 crops come out within noise of the default (the slow Lite2 test builds with auto).
    proc = build(str(APPS / "efficientnet_lite0"), "--calib", str(data / "calib.npz"), "--eval", str(data / "eval.npz"),
                 "--format", "executorch", "--format", "onnx", "--target", "rpi5", "--quality", "fast", "--out", str(out))
    assert proc.returncode in (0, 3), proc.stderr
    m = manifest_of(out)
    pte, onnx = m["formats"]["executorch"], m["formats"]["onnx"]
    assert pte["metrics"]["top1_agreement"] >= 90 and pte["metrics"]["cosine"] >= 0.99, pte["metrics"]
    assert pte["lowering"]["ops_outside_delegate"] == [] and pte["lowering"]["quantizer"]["clamps_observed_after"] > 0
    assert onnx["gate"]["passed"] and onnx["metrics"]["top1_agreement"] >= 95 and onnx["metrics"]["cosine"] >= 0.995
    for record in (pte, onnx):  # the same float model, its weights rounded once, for both formats
        assert record["quantization"]["weight_rounding"] == "gptq" and record["quantization"]["rounding"]["layers"] >= 45
    assert proc.returncode == (0 if pte["gate"]["passed"] else 3)
    mark = "✓" if pte["gate"]["passed"] else "✗"
    assert f"{mark} model.pte" in proc.stdout and "✓ model.onnx" in proc.stdout
    assert pte["gate"]["passed"] or "ship model.onnx, which passed" in proc.stderr
    assert "32 held-out samples (no labels)" in proc.stdout

    # validate and report judge the same artifacts the same way, without labels
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "edgekit", "validate", str(out), "--check", "parity", "--json"],
                          capture_output=True, text=True, env=env, cwd=REPO)
    assert proc.returncode == (0 if pte["gate"]["passed"] else 3), proc.stderr
    doc = json.loads(proc.stdout) if proc.stdout.strip() else manifest_of(out)["validation"]
    parity = {fmt: r["parity"] for fmt, r in doc["formats"].items()}
    assert parity["executorch"]["ok"] == pte["gate"]["passed"] and parity["onnx"]["ok"]
    assert parity["onnx"]["outputs"][0]["cosine"] == pytest.approx(onnx["metrics"]["cosine"], abs=1e-6)
    report = subprocess.run([sys.executable, "-m", "edgekit", "report", str(out), "--json", "--no-html"],
                            capture_output=True, text=True, env=env, cwd=REPO)
    assert report.returncode == 0, report.stderr
    rows = {q["format"]: q for q in json.loads(report.stdout)["quality"]}
    assert rows["executorch"]["gate_passed"] is pte["gate"]["passed"] and rows["onnx"]["gate_passed"] is True
    assert rows["onnx"]["cosine"] == onnx["metrics"]["cosine"]

    # the report a user reads: piped at 80 columns, then the page's first screen in Chromium
    report = subprocess.run([sys.executable, "-m", "edgekit", "report", str(out)], capture_output=True, text=True,
                            env={**os.environ, "COLUMNS": "80"}, cwd=REPO)
    assert report.returncode == 0, report.stderr
    table_lines = [line for line in report.stdout.splitlines() if not line.startswith("report: ")]  # a path, whole
    assert max(map(len, table_lines)) <= 80 and "…" not in report.stdout, report.stdout
    verdicts = {line.split()[0]: line for line in report.stdout.splitlines() if line.split()[:1] in (["model.pte"], ["model.onnx"])}
    from edgekit.report.format import ms

    for fmt, file in (("executorch", "model.pte"), ("onnx", "model.onnx")):
        p = manifest_of(out)["validation"]["formats"][fmt]["prediction"]
        assert f"{ms(p['low_ms'])}–{ms(p['high_ms'])}" in verdicts[file], verdicts  # each format's own range
    assert "✓ passed" in verdicts["model.onnx"]
    rec = json.loads(subprocess.run([sys.executable, "-m", "edgekit", "report", str(out), "--json", "--no-html"],
                                    capture_output=True, text=True, env=env, cwd=REPO).stdout)["recommendation"]
    assert f"recommended: ship {rec['file']}" in " ".join(report.stdout.split())
    from chromium import first_screen

    seen = first_screen(out / "report.html", tmp_path / "first-screen.png")
    text = " ".join(seen["text"].split())
    assert f"Recommended: ship {rec['file']}" in text and "model.pte" in text and "model.onnx" in text, text
    assert seen["broken_images"] == [] and seen["images"] >= 2


@pytest.mark.slow
def test_a_second_pretrained_cnn_keeps_its_predictions_with_the_same_method(tmp_path):
    """EfficientNet-Lite2's own ImageNet weights at 260x260: nothing was tuned on it. ExecuTorch's
    tutorial path keeps 75 % of its top-1 decisions on these crops (cosine 0.945); edgekit's .pte
    the same >= 90 % / 0.99 the Lite0 test asks, on the delegate throughout."""
    import real_models as R

    np.savez(tmp_path / "calib.npz", x=R.photo_crops(32, 0, 260))
    np.savez(tmp_path / "eval.npz", x=R.photo_crops(32, 1, 260))
    out = tmp_path / "b"
    proc = build("--model", "real_models:efficientnet_lite2_pretrained", "--input", "x:1x3x260x260",
                 "--calib", str(tmp_path / "calib.npz"), "--eval", str(tmp_path / "eval.npz"),
                 "--format", "executorch", "--target", "rpi5", "--out", str(out))
    assert proc.returncode in (0, 3), proc.stderr
    pte = manifest_of(out)["formats"]["executorch"]
    assert pte["metrics"]["top1_agreement"] >= 90 and pte["metrics"]["cosine"] >= 0.99, pte["metrics"]
    assert pte["lowering"]["ops_outside_delegate"] == [] and pte["lowering"]["quantizer"]["clamps_observed_after"] > 0


# ---------------------------------------------------------------- slow: every architecture, every format

# name -> (input options, data stem, formats that build, whether every artifact passes the gate).
# LiteRT's converter cannot take Hugging Face MobileNetV2 (litert-torch 0.10's NHWC layout pass
# fails on it): skipped, and named.
ARCHITECTURES = {
    "bert": (TEXT, "text", {"executorch", "onnx", "litert"}, True),
    "distilbert": (TEXT, "text", {"executorch", "onnx", "litert"}, True),
    "roberta": (TEXT, "text", {"executorch", "onnx", "litert"}, True),
    "llama": (["--input", "input_ids:1x16:int64"], "ids", {"executorch", "onnx", "litert"}, True),
    "gpt2": (["--input", "input_ids:1x16:int64"], "ids", {"executorch", "onnx", "litert"}, True),
    "whisper_encoder": (["--input", "input_features:1x80x200"], "mel", {"executorch", "onnx", "litert"}, True),
    "vit": (["--input", "pixel_values:1x3x64x64"], "img64", {"executorch", "onnx", "litert"}, None),
    "mobilenet_v2_tf_padding": (["--input", "pixel_values:1x3x96x96"], "img96", {"executorch", "onnx"}, None),
    "efficientnet_b0": (["--input-shape", "1,3,224,224"], "img224", {"executorch", "onnx", "litert"}, None),
    "mobilenet_v3_small": (["--input-shape", "1,3,224,224"], "img224", {"executorch", "torchscript-lite", "onnx", "litert"}, None),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_architecture_builds_in_every_format_or_names_the_limit(name, real_data, tmp_path):
    """`--format all` on each architecture: exit 0 when every artifact passes the gate, 3 when one
    does not (random weights are no trained model: what is checked is that every format handles
    the structure and that the verdict is the artifact's own); never an internal error."""
    options, stem, built, all_pass = ARCHITECTURES[name]
    out = tmp_path / "b"
    # --quality fast: what is tested is each format's handling of the structure; auto's recovery
    # tries on random weights would only add minutes (tests/test_quality.py tests them)
    proc = build("--model", f"real_models:{name}", *options, *_data(real_data, stem), "--format", "all",
                 "--target", "rpi5", "--quality", "fast", "--out", str(out))
    assert proc.returncode in (0, 3), proc.stderr
    assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr
    m = manifest_of(out)
    assert set(m["formats"]) == (built if LITERT else built - {"litert"})
    for fmt in {"executorch", "torchscript-lite", "onnx"} - built:
        assert HF_TORCHSCRIPT_LIMIT in m["skipped_formats"][fmt]["error"]
    if LITERT and "litert" not in built:
        assert "litert-torch could not convert this model" in m["skipped_formats"]["litert"]["error"]
    passed = {fmt: r["gate"]["passed"] for fmt, r in m["formats"].items()}
    assert proc.returncode == (0 if all(passed.values()) else 3)
    for fmt, record in m["formats"].items():
        assert record["gate"]["passed"] == (not record["gate"]["failures"])
        assert (out / record["artifact"]["file"]).is_file()
    if all_pass is not None:
        assert all(passed.values()) is all_pass, {f: r["gate"]["failures"] for f, r in m["formats"].items()}
