"""The copyable sample apps: sample_apps/rpi_classifier run on this computer against real digits builds.

classify.py runs as a user runs it on the board (a child process, the project's
python standing in for the device's), on the committed sample images whose file
names carry their true labels.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
APP = REPO / "sample_apps" / "rpi_classifier"
CLASSIFY = APP / "classify.py"
SAMPLES = APP / "samples"
ANDROID = REPO / "sample_apps" / "android_arm64"


def classify(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CLASSIFY), *map(str, args)], capture_output=True, text=True, timeout=timeout)


def true_label(path: str) -> str:
    match = re.search(r"digit-(\d)-eval\d+\.", Path(path).name)
    assert match, f"sample name without a label: {path}"
    return match.group(1)


@pytest.fixture(scope="module")
def ck():
    """classify.py as a module (it lives outside any package), for its reader and preprocessing."""
    spec = importlib.util.spec_from_file_location("rpi_classify", CLASSIFY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def onnx_build(tmp_path_factory, run_cli, digits_app) -> Path:
    """The digits sample built to ONNX (the light runtime for a Pi), once for this module."""
    out = tmp_path_factory.mktemp("onnx") / "digits-rpi4-onnx"
    proc = run_cli("build", str(digits_app), "--target", "rpi4", "--format", "onnx", "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    return out


def samples(pattern: str = "digit-*") -> list[Path]:
    found = sorted(SAMPLES.glob(pattern))
    assert found, f"no samples matching {pattern} in {SAMPLES}"
    return found


def run_json(*args) -> dict:
    proc = classify(*args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


# --- the samples -------------------------------------------------------------------------


def test_samples_are_what_make_samples_writes(tmp_path):
    proc = subprocess.run([sys.executable, str(APP / "make_samples.py"), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    fresh = sorted(p.name for p in tmp_path.iterdir())
    assert fresh == sorted(p.name for p in samples()), "samples/ is stale: run make_samples.py"
    assert sorted({true_label(name) for name in fresh}) == [str(d) for d in range(10)]
    for name in fresh:
        if name.endswith(".pgm"):  # our own writer: byte for byte
            assert (tmp_path / name).read_bytes() == (SAMPLES / name).read_bytes(), name
        else:  # zlib's output may vary by version: compare the decoded pixels
            from PIL import Image

            assert np.array_equal(np.asarray(Image.open(tmp_path / name)), np.asarray(Image.open(SAMPLES / name))), name


def test_samples_hold_the_eval_images_they_name(ck, digits_app):
    """Each PGM is its eval image's raw 0..16 values exactly, so its label is the data set's."""
    data = np.load(digits_app / "eval.npz")
    for path in samples("*.pgm"):
        index = int(re.search(r"eval(\d+)", path.name).group(1))
        assert int(data["y"][index]) == int(true_label(path.name))
        assert np.array_equal(ck.read_image(str(path)), data["x"][index, 0]), path.name


# --- classify.py end to end ---------------------------------------------------------------


def test_onnx_build_classifies_every_sample_correctly(onnx_build):
    doc = run_json(onnx_build, *samples())
    assert doc["ok"] is True and doc["runtime"]["name"] == "onnxruntime"
    assert doc["input"] == {"name": "x", "shape": [1, 1, 8, 8], "dtype": "float32"}
    assert len(doc["results"]) == len(samples()) == 20
    for r in doc["results"]:
        assert r["top"][0]["label"] == true_label(r["image"]), r
        assert len(r["top"]) == 3
        # The PNGs are dark ink on white paper: auto-invert must flip them, and only them.
        assert r["inverted"] is r["image"].endswith(".png"), r


def test_executorch_build_classifies_every_sample_correctly(digits_build):
    """The .pte (the rpi4 default) through executorch.runtime; one run, since importing torch is slow."""
    doc = run_json(digits_build["dir"], *samples())
    assert doc["runtime"]["name"] == "executorch" and doc["artifact"].endswith("model.pte")
    assert [r["top"][0]["label"] for r in doc["results"]] == [true_label(r["image"]) for r in doc["results"]]


def test_artifact_path_with_manifest_beside_it(onnx_build):
    image = samples("digit-7-*.pgm")[0]
    doc = run_json(onnx_build / "model.onnx", image, "--top-k", "10", "--threads", "1")
    top = doc["results"][0]["top"]
    assert [t["label"] for t in top][0] == "7" and len(top) == 10
    scores = [t["score"] for t in top]
    assert scores == sorted(scores, reverse=True) and abs(sum(scores) - 1.0) < 1e-4  # softmax over all 10 classes
    assert doc["threads"] == 1


def test_text_output_names_each_image_and_its_class(onnx_build):
    proc = classify(onnx_build, *samples("digit-4-*"))
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if "digit-4" in line]
    assert len(lines) == 2 and all(re.search(r"digit-4-eval\d+\.(pgm|png): 4\s", line) for line in lines), proc.stdout


def test_npy_input_needs_no_conversion(onnx_build, digits_app, tmp_path):
    """A float .npy of the model's own shape (an eval sample as stored) goes in unchanged."""
    data = np.load(digits_app / "eval.npz")
    path = tmp_path / "sample.npy"
    np.save(path, data["x"][5:6])
    doc = run_json(onnx_build, path)
    assert doc["results"][0]["top"][0]["label"] == str(int(data["y"][5]))
    assert doc["results"][0]["inverted"] is False


def test_labels_file_beside_the_manifest_renames_classes(onnx_build, tmp_path):
    build = tmp_path / "build"
    shutil.copytree(onnx_build, build)
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    (build / "labels.txt").write_text("\n".join(names) + "\n")
    doc = run_json(build, samples("digit-2-*.pgm")[0])
    assert doc["results"][0]["top"][0]["label"] == "two" and doc["labels"].endswith("labels.txt")

    (build / "labels.txt").write_text("\n".join(names[:9]) + "\n")  # one short
    proc = classify(build, samples("digit-2-*.pgm")[0])
    assert proc.returncode == 2 and "labels.txt: 9 labels, the model has 10 classes" in proc.stderr


def test_requirements_name_the_runtime_version_that_validated_the_build(onnx_build, digits_build):
    proc = classify(onnx_build, "--requirements")
    version = json.loads((onnx_build / "manifest.json").read_text())["versions"]["onnxruntime"]
    assert proc.returncode == 0 and proc.stdout.split() == ["numpy", f"onnxruntime=={version}"]
    assert classify(digits_build["dir"], "--requirements").stdout.split()[1].startswith("executorch==")


def test_make_run_on_the_device(onnx_build):
    proc = subprocess.run(["make", "-s", "-C", str(APP), "run", f"BUILD={onnx_build}", f"PYTHON={sys.executable}",
                           "VENV=/nonexistent", "IMAGES=samples/digit-9-*.pgm"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"digit-9-eval\d+\.pgm: 9\s", proc.stdout), proc.stdout

    proc = subprocess.run(["make", "-s", "-C", str(APP), "run", "BUILD="], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "not a build directory" in proc.stderr


# --- errors a user makes: exit 2 and a message naming the file or flag ---------------------


def test_missing_image_file(onnx_build):
    proc = classify(onnx_build, SAMPLES / "digit-3-nothere.pgm")
    assert proc.returncode == 2
    assert "digit-3-nothere.pgm: cannot read the image file: No such file or directory" in proc.stderr


def test_directory_that_is_not_a_build(digits_app):
    proc = classify(digits_app, samples()[0])  # the app dir, not its build
    assert proc.returncode == 2 and "has no manifest.json" in proc.stderr and "edgekit build" in proc.stderr
    proc = classify(digits_app / "no-such-build", samples()[0])
    assert proc.returncode == 2 and "no such build directory or artifact file" in proc.stderr


def test_non_image_file(onnx_build, tmp_path):
    notes = tmp_path / "notes.png"  # the name says image, the content does not
    notes.write_text("not pixels\n")
    proc = classify(onnx_build, notes, "--json")
    assert proc.returncode == 2 and "notes.png: not an image" in proc.stderr
    assert json.loads(proc.stdout) == {"ok": False, "error": json.loads(proc.stdout)["error"], "exit_code": 2}


def test_unknown_format_of_the_build(onnx_build):
    proc = classify(onnx_build, samples()[0], "--format", "executorch")
    assert proc.returncode == 2 and "--format executorch" in proc.stderr and "onnx" in proc.stderr


def test_camera_without_camera_libraries_says_what_to_install(onnx_build):
    for module in ("picamera2", "cv2"):
        if importlib.util.find_spec(module) is not None:
            pytest.skip(f"{module} is importable here: the 'nothing to grab frames with' path cannot be reached")
    proc = classify(onnx_build, "--camera")
    assert proc.returncode == 2
    assert "python3-picamera2" in proc.stderr and "opencv-python-headless" in proc.stderr


FAKE_PICAMERA2 = """
# Test double for the camera module (no camera here): the same calls classify.py makes on a Pi.
import numpy as np

class Picamera2:
    def create_still_configuration(self, main):
        assert main["format"] == "RGB888"
        return main

    def configure(self, config):
        self.size = config["size"]

    def start(self):
        pass

    def capture_array(self):
        return np.load(__file__.replace("picamera2.py", "frame.npy"))

    def close(self):
        pass
"""


def test_camera_frame_through_picamera2(ck, onnx_build, tmp_path):
    """A 640x480 frame of a dark digit on white paper, as picamera2 returns it, is cropped, shrunk, inverted: a 3."""
    raw = ck.read_image(str(samples("digit-3-*.pgm")[0])) * 16  # 8x8 counts 0..16, bright strokes on dark
    ink_on_paper = np.kron(255 - raw * 255 / 16, np.ones((60, 60)))  # each cell 60x60 px: 480x480
    frame = np.full((480, 640, 3), 255, np.uint8)  # white margins left and right, cut by the centre crop
    frame[:, 80:560] = np.rint(ink_on_paper)[..., None].astype(np.uint8)  # grey ink: B = G = R
    np.save(tmp_path / "frame.npy", frame)
    (tmp_path / "picamera2.py").write_text(FAKE_PICAMERA2)
    proc = subprocess.run([sys.executable, str(CLASSIFY), str(onnx_build), "--camera", "--json"], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)["results"][0]
    assert result["image"] == "camera:picamera2" and result["source_shape"] == [480, 640, 3]
    assert result["inverted"] and result["autocontrast"] and result["top"][0]["label"] == "3", result


def test_no_images_is_a_usage_error(onnx_build):
    proc = classify(onnx_build)
    assert proc.returncode == 2 and "give image files, --camera, or --requirements" in proc.stderr


# --- the pieces: PGM reader, preprocessing --------------------------------------------------


@pytest.mark.parametrize("maxval, dtype", [(255, np.uint8), (16, np.uint8), (65535, np.uint16)])
def test_pgm_round_trip(ck, tmp_path, maxval, dtype):
    rng = np.random.default_rng(maxval)
    image = rng.integers(0, maxval + 1, size=(7, 5), dtype=dtype)  # not square: rows vs columns must not swap
    path = tmp_path / "x.pgm"
    ck.write_pgm(str(path), image, maxval=maxval)
    back = ck.read_image(str(path))
    assert back.shape == (7, 5) and back.dtype == np.float32
    np.testing.assert_array_equal(back, image.astype(np.float32) / maxval)


def test_plain_pgm_with_comments(ck, tmp_path):
    path = tmp_path / "plain.pgm"
    path.write_text("P2\n# made by hand\n3 2 # width height\n4\n0 1 2\n3 4 0\n")
    np.testing.assert_array_equal(ck.read_image(str(path)), np.array([[0, 1, 2], [3, 4, 0]], np.float32) / 4)


def test_truncated_pgm_is_refused(ck, tmp_path):
    path = tmp_path / "cut.pgm"
    path.write_bytes(b"P5\n8 8\n255\n" + bytes(10))
    with pytest.raises(ck.ClassifyError, match=r"cut.pgm: truncated: 8x8 needs 64 bytes"):
        ck.read_image(str(path))


def test_png_preprocessing_recovers_the_model_input(ck, digits_app):
    """Inverting and area-downscaling the 32x32 ink-on-paper PNG gives back the 8x8 eval image (to 8-bit rounding)."""
    spec = {"name": "x", "shape": [1, 1, 8, 8], "dtype": "float32", "channels": 1, "height": 8, "width": 8, "nhwc": False}
    for png in samples("*.png"):
        pgm = png.with_suffix(".pgm")
        x_png, done = ck.prepare(ck.read_image(str(png)), spec, ck.DIGITS, None, False)
        x_pgm, _ = ck.prepare(ck.read_image(str(pgm)), spec, ck.DIGITS, None, False)
        assert done["inverted"] and done["source_shape"] == [32, 32, 3]
        assert np.abs(x_png - x_pgm).max() <= 0.5 / 255 + 1e-6, png.name


def test_resize_averages_areas(ck):
    image = np.arange(16, dtype=np.float32).reshape(4, 4)
    np.testing.assert_allclose(ck.resize(image, 2, 2), [[2.5, 4.5], [10.5, 12.5]])  # 2x2 block means
    assert ck.resize(image, 3, 3).mean() == pytest.approx(image.mean())  # uneven: areas still sum to the whole


# --- the Android guide points at commands that exist ----------------------------------------


def test_android_guide_uses_real_deploy_flags(run_cli):
    guide = (ANDROID / "README.md").read_text().replace("\\\n", " ")  # join shell continuation lines
    help_text = run_cli("deploy", "--help").stdout
    flags = set(re.findall(r"edgekit deploy [^\n`]*", guide))
    assert flags, "the Android guide shows no `edgekit deploy` command"
    for line in flags:
        for flag in re.findall(r"(--[a-z][a-z-]+)", line):
            assert flag in help_text, f"README uses {flag}, which `edgekit deploy` does not have"
