#!/usr/bin/env python3
"""Classify images on the board with a model built by `edgekit build`.

Copy this directory to the device; it needs the standard library, numpy and
exactly one runtime, chosen by the artifact's suffix (as edgekit's device runner):

    .onnx   onnxruntime          pip install onnxruntime numpy
    .pte    executorch.runtime   pip install executorch==1.5.1 numpy   (brings torch)
    .ptl    torch lite           pip install torch numpy

Pillow is optional: without it PNG/JPEG cannot be read, PGM/PPM and .npy still can.

    python3 classify.py BUILD_DIR samples/*.pgm
    python3 classify.py BUILD_DIR/model.onnx photo.jpg --top-k 3 --json
    python3 classify.py BUILD_DIR --camera --threads 4
    python3 classify.py BUILD_DIR --requirements      # what to pip install for this build

MODEL is a build directory (its manifest.json names the artifact) or the
artifact itself with manifest.json beside it. From the manifest come the input
name, shape and dtype. edgekit's manifest records no preprocessing or class
names (a `preprocess` or `labels` key there would be used), so they come from
`preprocess.json` beside the manifest, `--labels` or `labels.txt` beside it,
and else the presets below for the bundled digits models.

Exit codes: 0 ok, 1 the runtime failed, 2 a usage or input error (the message
names the file or flag), 3 the runtime (or numpy) is not installed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

try:  # imported lazily in effect: --requirements must work before numpy is installed
    import numpy as np
except ImportError:
    np = None

EXIT_FAILED, EXIT_USAGE, EXIT_NO_RUNTIME = 1, 2, 3
MANIFEST = "manifest.json"
PREPROCESS_FILE = "preprocess.json"
LABELS_FILE = "labels.txt"

# The bundled digits samples (sample_apps/digits, sample_apps/vit_digits) train on
# sklearn's load_digits(): 8x8 images whose values 0..16 count the "on" pixels of a
# 4x4 block of the original 32x32 bitmap, so strokes are bright on a dark
# background, then scaled by 1/16 into [0, 1]. Ink-on-paper images (dark on light)
# must be inverted to look like that: "auto" decides from the image's border.
DIGITS = {
    "invert": "auto",
    "labels": [str(d) for d in range(10)],
    "note": "sklearn digits: bright strokes on a dark background, pixels in [0, 1]; dark-on-light images are inverted",
}
PRESETS = {"digits": DIGITS, "vit_digits": DIGITS}
DEFAULT_PREPROCESS = {"invert": "no", "note": "no preprocessing recorded: pixels scaled to [0, 1], no normalization"}

RUNTIME_PACKAGES = {".onnx": "onnxruntime", ".pte": "executorch", ".ptl": "torch"}


class ClassifyError(Exception):
    def __init__(self, message: str, code: int = EXIT_USAGE):
        super().__init__(message)
        self.code = code


# --- the build: manifest, artifact, input spec, preprocessing, labels ---------------


def load_build(model_path: str, fmt: str | None) -> dict:
    """{artifact, manifest, dir}: MODEL is a build dir or an artifact with its manifest beside it."""
    if os.path.isdir(model_path):
        build_dir, artifact = model_path, None
    elif os.path.isfile(model_path):
        build_dir, artifact = os.path.dirname(os.path.abspath(model_path)), model_path
    else:
        raise ClassifyError(f"{model_path}: no such build directory or artifact file")
    manifest_path = os.path.join(build_dir, MANIFEST)
    if not os.path.isfile(manifest_path):
        raise ClassifyError(f"'{build_dir}' has no {MANIFEST}: pass the directory `edgekit build` wrote "
                            f"(e.g. build/digits-rpi4), or copy its {MANIFEST} beside the artifact")
    try:
        with open(manifest_path) as f:
            manifest = json.load(f)
    except ValueError as e:
        raise ClassifyError(f"{manifest_path}: not valid JSON ({e}); copy it again from the build") from None
    if artifact is None:
        artifact = os.path.join(build_dir, _artifact_name(manifest, manifest_path, fmt))
    if not os.path.isfile(artifact):
        raise ClassifyError(f"{artifact}: named by {manifest_path} but missing; copy the whole build directory")
    suffix = os.path.splitext(artifact)[1].lower()
    if suffix not in RUNTIME_PACKAGES:
        raise ClassifyError(f"{artifact}: unknown artifact type '{suffix}'; expected one of {', '.join(RUNTIME_PACKAGES)}")
    return {"artifact": artifact, "manifest": manifest, "dir": build_dir, "manifest_path": manifest_path}


def _artifact_name(manifest: dict, where: str, fmt: str | None) -> str:
    formats = manifest.get("formats") or {}
    if fmt is not None:
        if fmt not in formats:
            raise ClassifyError(f"--format {fmt}: {where} has {', '.join(formats) or 'no formats'}")
        return formats[fmt]["artifact"]["file"]
    try:
        return manifest["artifact"]["file"]
    except (KeyError, TypeError):
        raise ClassifyError(f"{where}: no artifact.file; is this an edgekit build manifest?") from None


def image_input(manifest: dict, where: str) -> dict:
    """The one image input: name, shape, dtype, and where channels/height/width sit in the shape."""
    inputs = (manifest.get("model") or {}).get("inputs") or []
    if len(inputs) != 1:
        raise ClassifyError(f"{where}: the model takes {len(inputs)} inputs; classify.py feeds one image tensor")
    spec = inputs[0]
    shape, dtype = list(spec.get("shape", [])), spec.get("dtype", "float32")
    if not dtype.startswith("float"):
        raise ClassifyError(f"{where}: input '{spec.get('name')}' is {dtype}; classify.py feeds float images")
    if len(shape) == 4 and shape[1] in (1, 3):  # NCHW, PyTorch's layout
        layout = {"channels": shape[1], "height": shape[2], "width": shape[3], "nhwc": False}
    elif len(shape) == 4 and shape[3] in (1, 3):
        layout = {"channels": shape[3], "height": shape[1], "width": shape[2], "nhwc": True}
    elif len(shape) == 3:  # (N, H, W): one gray channel
        layout = {"channels": 1, "height": shape[1], "width": shape[2], "nhwc": False}
    else:
        raise ClassifyError(f"{where}: input shape {shape} is not an image (N,C,H,W), (N,H,W,C) or (N,H,W) with C 1 or 3")
    if shape[0] != 1:
        raise ClassifyError(f"{where}: input batch is {shape[0]}; classify.py feeds one image per run (batch 1)")
    return {"name": spec.get("name", "x"), "shape": shape, "dtype": dtype, **layout}


def preprocessing(build: dict) -> dict:
    """Preprocessing from the manifest, else preprocess.json beside it, else a preset by model name, else none."""
    manifest = build["manifest"]
    recorded = manifest.get("preprocess") or (manifest.get("model") or {}).get("preprocess")
    if recorded:
        return {**recorded, "source": build["manifest_path"]}
    path = os.path.join(build["dir"], PREPROCESS_FILE)
    if os.path.isfile(path):
        try:
            with open(path) as f:
                doc = json.load(f)
        except ValueError as e:
            raise ClassifyError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(doc, dict) or doc.get("invert", "no") not in ("auto", "yes", "no"):
            raise ClassifyError(f"{path}: expected an object like {{\"mean\": [..], \"std\": [..], \"invert\": \"auto|yes|no\"}}")
        return {**doc, "source": path}
    name = manifest.get("name")
    if name in PRESETS:
        return {**PRESETS[name], "source": f"preset '{name}' (classify.py)"}
    return {**DEFAULT_PREPROCESS, "source": "default (classify.py)"}


def class_labels(build: dict, pre: dict, labels_arg: str | None):
    """Class names: --labels, labels.txt beside the manifest, the manifest, the preprocessing; else None."""
    path = labels_arg or os.path.join(build["dir"], LABELS_FILE)
    if labels_arg or os.path.isfile(path):
        try:
            with open(path) as f:
                return [line.strip() for line in f if line.strip()], path
        except OSError as e:
            raise ClassifyError(f"{'--labels ' if labels_arg else ''}{path}: {e.strerror}") from None
    manifest = build["manifest"]
    for found, where in ((manifest.get("labels"), build["manifest_path"]),
                         ((manifest.get("model") or {}).get("labels"), build["manifest_path"]),
                         (pre.get("labels"), pre["source"])):
        if found:
            return [str(x) for x in found], where
    return None, None


# --- reading images: PGM/PPM and .npy with numpy alone, the rest through Pillow ----


def read_netpbm(data: bytes, where: str):
    """PGM/PPM, binary (P5/P6) or plain (P2/P3), maxval up to 65535 -> float32 in [0, 1], (H, W) or (H, W, 3)."""
    magic = data[:2]
    tokens, pos = [], 2
    # Header: width, height, maxval as whitespace-separated ASCII, '#' comments to end of line.
    while len(tokens) < 3:
        while pos < len(data) and data[pos:pos + 1].isspace():
            pos += 1
        if data[pos:pos + 1] == b"#":
            pos = data.find(b"\n", pos)
            if pos < 0:
                break
            continue
        start = pos
        while pos < len(data) and not data[pos:pos + 1].isspace() and data[pos:pos + 1] != b"#":
            pos += 1
        if start == pos:
            break
        tokens.append(data[start:pos])
    try:
        width, height, maxval = (int(t) for t in tokens)
    except ValueError:
        raise ClassifyError(f"{where}: broken PGM/PPM header (want width, height, maxval)") from None
    if width < 1 or height < 1 or not 0 < maxval < 65536:
        raise ClassifyError(f"{where}: PGM/PPM header has width {width}, height {height}, maxval {maxval}")
    channels = 3 if magic in (b"P3", b"P6") else 1
    count = width * height * channels
    if magic in (b"P5", b"P6"):
        pixels = data[pos + 1:]  # exactly one whitespace byte separates header and raster
        dtype = np.dtype(">u2") if maxval > 255 else np.dtype("u1")  # 16-bit samples are big-endian (netpbm spec)
        if len(pixels) < count * dtype.itemsize:
            raise ClassifyError(f"{where}: truncated: {width}x{height} needs {count * dtype.itemsize} bytes of pixels, has {len(pixels)}")
        values = np.frombuffer(pixels, dtype=dtype, count=count)
    else:
        try:
            values = np.array(data[pos:].split()[:count], dtype=np.int64)
        except ValueError:
            raise ClassifyError(f"{where}: plain PGM/PPM pixels must be integers") from None
        if values.size < count:
            raise ClassifyError(f"{where}: truncated: {width}x{height} needs {count} values, has {values.size}")
    image = values.astype(np.float32) / maxval
    return image.reshape((height, width, 3) if channels == 3 else (height, width))


def write_pgm(path: str, image, maxval: int = 255) -> None:
    """A binary PGM (P5) of integer values 0..maxval; used by make_samples.py and the tests."""
    image = np.asarray(image)
    if image.ndim != 2 or image.min() < 0 or image.max() > maxval:
        raise ValueError(f"write_pgm: want a 2-D array of 0..{maxval}, got shape {image.shape}")
    raster = image.astype(">u2" if maxval > 255 else "u1").tobytes()
    with open(path, "wb") as f:
        f.write(b"P5\n%d %d\n%d\n" % (image.shape[1], image.shape[0], maxval) + raster)


def read_npy(path: str):
    """float arrays are taken as pixels already in [0, 1]; uint8/uint16 are scaled by 255/65535."""
    try:
        a = np.load(path, allow_pickle=False)  # no pickles: a .npy from elsewhere must not run code
    except ValueError as e:
        raise ClassifyError(f"{path}: not a plain numpy array ({e})") from None
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    if a.dtype == np.uint16:
        return a.astype(np.float32) / 65535.0
    if a.dtype.kind in "fb":
        return a.astype(np.float32)
    raise ClassifyError(f"{path}: array dtype {a.dtype}; use float pixels in [0, 1], or uint8/uint16")


def read_with_pillow(path: str, data: bytes):
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise ClassifyError(f"{path}: not a PGM/PPM or .npy file, and reading other images (PNG, JPEG) needs Pillow: "
                            f"{sys.executable} -m pip install pillow (or convert it to .pgm)") from None
    import io

    try:
        with Image.open(io.BytesIO(data)) as img:
            img = img.convert("RGB")  # palettes, alpha, CMYK, 16-bit gray: one common form
            return np.asarray(img, dtype=np.float32) / 255.0
    except UnidentifiedImageError:
        raise ClassifyError(f"{path}: not an image (not PGM/PPM, not .npy, and not a format Pillow reads "
                            f"such as PNG or JPEG)") from None
    except OSError as e:  # a known format but a broken file, e.g. a truncated JPEG
        raise ClassifyError(f"{path}: Pillow cannot decode it: {e}") from None


def read_image(path: str):
    """(H, W) or (H, W, C) float32 in [0, 1]; the format is told by content, not by name."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ClassifyError(f"{path}: cannot read the image file: {e.strerror}") from None
    if not data:
        raise ClassifyError(f"{path}: empty file")
    if data[:2] in (b"P2", b"P3", b"P5", b"P6") and data[2:3].isspace():
        return read_netpbm(data, path)
    if data[:6] == b"\x93NUMPY":
        return read_npy(path)
    return read_with_pillow(path, data)


# --- preprocessing: gray/RGB, crop, resize, invert, contrast, normalize ---------------


def area_weights(n_in: int, n_out: int):
    """(n_out, n_in) matrix averaging the input cells each output cell covers (box filter, exact area overlap)."""
    edges_in = np.arange(n_in + 1) / n_in
    edges_out = np.arange(n_out + 1) / n_out
    lo = np.maximum(edges_out[:-1, None], edges_in[None, :-1])
    hi = np.minimum(edges_out[1:, None], edges_in[None, 1:])
    w = np.clip(hi - lo, 0.0, None)
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def resize(image, height: int, width: int):
    """Area-average resize of (H, W) or (H, W, C): downscaling a big photo averages, never aliases."""
    if image.shape[:2] == (height, width):
        return image
    wy, wx = area_weights(image.shape[0], height), area_weights(image.shape[1], width)
    if image.ndim == 2:
        return wy @ image @ wx.T
    return np.einsum("yh,hwc,xw->yxc", wy, image, wx)


def center_crop(image, height: int, width: int):
    """The largest centred region with the model's aspect ratio (a camera frame is 4:3, digits are 1:1)."""
    h, w = image.shape[:2]
    if h * width > w * height:  # too tall
        new_h = max(1, round(w * height / width))
        top = (h - new_h) // 2
        return image[top:top + new_h]
    new_w = max(1, round(h * width / height))
    left = (w - new_w) // 2
    return image[:, left:left + new_w]


def to_channels(image, channels: int):
    image = np.squeeze(image)  # .npy of shape (1, 1, 8, 8) or (8, 8, 1)
    if image.ndim == 3 and image.shape[0] in (1, 3, 4) and image.shape[-1] not in (1, 3, 4):
        image = np.moveaxis(image, 0, -1)  # CHW -> HWC
    if image.ndim == 3 and image.shape[-1] == 4:
        image = image[..., :3]  # alpha dropped
    if image.ndim not in (2, 3):
        raise ValueError(f"an image has 2 or 3 dimensions, this one has shape {list(image.shape)}")
    if channels == 1:
        # ITU-R BT.601 luma, the weights Pillow's convert("L") uses.
        return image if image.ndim == 2 else image @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image


def needs_invert(gray) -> bool:
    """A light background (the border is mostly light) means dark-on-light: invert for a bright-on-dark model."""
    border = np.concatenate([gray[0], gray[-1], gray[1:-1, 0], gray[1:-1, -1]])
    return float(np.median(border)) > 0.5


def prepare(image, spec: dict, pre: dict, invert: str | None, autocontrast: bool):
    """Image -> model input array; returns (array, what was done) so the output can say it."""
    img = to_channels(image, spec["channels"])
    img = center_crop(img, spec["height"], spec["width"])
    gray = img if img.ndim == 2 else img.mean(axis=-1)
    mode = invert or pre.get("invert", "no")  # the flag, else the preprocessing's
    inverted = mode == "yes" or (mode == "auto" and needs_invert(gray))
    img = resize(img, spec["height"], spec["width"])
    if inverted:
        img = 1.0 - img
    if autocontrast:  # camera frames: stretch to the full [0, 1] range the training data spans
        lo, hi = float(img.min()), float(img.max())
        img = (img - lo) / (hi - lo) if hi - lo > 1e-6 else img * 0.0
    mean = np.asarray(pre.get("mean", 0.0), dtype=np.float32)
    std = np.asarray(pre.get("std", 1.0), dtype=np.float32)
    img = (img - mean) / std
    if img.ndim == 2:
        img = img[..., None]
    if not spec["nhwc"]:
        img = np.moveaxis(img, -1, 0)
    x = img.reshape(spec["shape"]).astype(spec["dtype"])
    return np.ascontiguousarray(x), {"inverted": inverted, "autocontrast": autocontrast, "source_shape": list(image.shape)}


# --- camera -----------------------------------------------------------------------------


def grab_frame():
    """One RGB frame, float32 in [0, 1]: picamera2 (camera module) if importable, else OpenCV (USB camera)."""
    tried = []
    try:
        from picamera2 import Picamera2
    except ImportError:
        Picamera2 = None
    if Picamera2 is not None:
        try:
            cam = Picamera2()
            try:
                cam.configure(cam.create_still_configuration(main={"format": "RGB888", "size": (640, 480)}))
                cam.start()
                frame = cam.capture_array()
            finally:
                cam.close()
            # Picamera2's "RGB888" arrays are ordered B, G, R (Picamera2 manual, appendix A).
            return frame[..., ::-1].astype(np.float32) / 255.0, "picamera2"
        except Exception as e:  # no camera connected, or the camera is busy: try a USB one next
            tried.append(f"picamera2: {type(e).__name__}: {e}")
    try:
        import cv2
    except ImportError:
        cv2 = None
    if cv2 is not None:
        cap = cv2.VideoCapture(0)
        try:
            ok, frame = cap.isOpened(), None
            for _ in range(5):  # the first frames of many webcams are dark while auto-exposure settles
                ok, frame = cap.read()
        finally:
            cap.release()
        if ok and frame is not None:
            return frame[..., ::-1].astype(np.float32) / 255.0, "opencv:0"  # OpenCV frames are BGR
        tried.append("opencv: VideoCapture(0) gave no frame (no camera at /dev/video0?)")
    if not tried:
        raise ClassifyError("--camera needs picamera2 (Raspberry Pi camera module: sudo apt install python3-picamera2, "
                            "and a venv made with --system-site-packages) or OpenCV (USB camera: pip install "
                            "opencv-python-headless); neither is importable")
    raise ClassifyError("--camera: no frame: " + "; ".join(tried))


# --- runtimes: one class per artifact type --------------------------------------------------


def _missing(module: str, package: str, err: Exception) -> ClassifyError:
    return ClassifyError(f"cannot import {module} ({err}); install it on this device with: "
                         f"{sys.executable} -m pip install {package}", EXIT_NO_RUNTIME)


class OnnxRuntime:
    name = "onnxruntime"

    def __init__(self, path: str, threads: int | None):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise _missing("onnxruntime", "onnxruntime", e) from None
        self.version = ort.__version__
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads  # the CPU provider's thread pool for one inference
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def run(self, x):
        return np.asarray(self.session.run(None, {self.input_name: x})[0])


class ExecutorchRuntime:
    name = "executorch"

    def __init__(self, path: str, threads: int | None):
        try:
            import torch
            from executorch.runtime import Runtime
        except ImportError as e:
            raise _missing("executorch.runtime", "executorch==1.5.1", e) from None
        from importlib import metadata

        self.version, self.torch = metadata.version("executorch"), torch
        if threads:
            self._set_threads(threads)
        self.method = Runtime.get().load_program(path).load_method("forward")

    @staticmethod
    def _set_threads(n: int) -> None:
        # The Python runtime has no public thread setting; the pybindings' threadpool
        # reset (experimental) is what edgekit's runner uses too. Where it is missing
        # XNNPACK keeps its default pool.
        try:
            from executorch.extension.pybindings import portable_lib

            portable_lib._unsafe_reset_threadpool(n)
        except (ImportError, AttributeError):
            pass

    def run(self, x):
        out = self.method.execute([self.torch.from_numpy(x)])
        return out[0].detach().numpy()


class LiteRuntime:
    name = "torch-lite-interpreter"

    def __init__(self, path: str, threads: int | None):
        try:
            import torch
            from torch.jit.mobile import _load_for_lite_interpreter
        except ImportError as e:
            raise _missing("torch.jit.mobile", "torch", e) from None
        self.version, self.torch = torch.__version__, torch
        if threads:
            torch.set_num_threads(threads)
        self.module = _load_for_lite_interpreter(path)

    def run(self, x):
        with self.torch.no_grad():
            out = self.module(self.torch.from_numpy(x))
        return (out[0] if isinstance(out, (tuple, list)) else out).numpy()


RUNTIMES = {".onnx": OnnxRuntime, ".pte": ExecutorchRuntime, ".ptl": LiteRuntime}


def load_runtime(artifact: str, threads: int | None):
    cls = RUNTIMES[os.path.splitext(artifact)[1].lower()]
    try:
        return cls(artifact, threads)
    except ClassifyError:
        raise
    except Exception as e:
        raise ClassifyError(f"{artifact}: {cls.name} could not load it: {type(e).__name__}: {e}", EXIT_FAILED) from None


# --- scores -------------------------------------------------------------------------------


def scores_from(output):
    """Softmax of the logits; an output that already sums to 1 (a softmax head) is kept as is."""
    v = np.asarray(output, dtype=np.float64).reshape(-1)
    if v.min() >= 0 and abs(v.sum() - 1.0) < 1e-3:
        return v
    e = np.exp(v - v.max())
    return e / e.sum()


def top_k(scores, k: int, labels):
    order = np.argsort(-scores, kind="stable")[:k]
    return [{"index": int(i), "label": labels[i] if labels else str(int(i)), "score": round(float(scores[i]), 6)} for i in order]


# --- the program ------------------------------------------------------------------------------


def requirements(build: dict) -> str:
    """pip requirements for this build on a device: numpy and the runtime version that validated the artifact."""
    suffix = os.path.splitext(build["artifact"])[1].lower()
    package = RUNTIME_PACKAGES[suffix]
    version = (build["manifest"].get("versions") or {}).get(package)
    if package == "torch" and version:
        version = version.split("+")[0]  # "2.13.0+cpu": the local tag names a wheel index, not a version on PyPI
    return " ".join(["numpy", f"{package}=={version}" if version else package])


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Classify images (or one camera frame) with an edgekit build, on the device.",
        epilog="Exit codes: 0 ok, 1 runtime failed, 2 usage or input error, 3 runtime or numpy not installed.")
    p.add_argument("model", help="build directory (with manifest.json), or its artifact (.onnx/.pte/.ptl) with manifest.json beside it")
    p.add_argument("images", nargs="*", help="image files: PGM/PPM, .npy (numpy only), PNG/JPEG/... (with Pillow)")
    p.add_argument("--camera", action="store_true", help="also classify one frame from the camera (picamera2, else OpenCV)")
    p.add_argument("-k", "--top-k", type=int, default=3, help="classes to print per image [default: 3]")
    p.add_argument("--threads", type=int, help="runtime threads [default: the runtime's own]")
    p.add_argument("--format", help="which artifact of a multi-format build (a key of the manifest's 'formats')")
    p.add_argument("--labels", help=f"class names, one per line [default: {LABELS_FILE} beside the manifest, or the preset]")
    p.add_argument("--invert", choices=("auto", "yes", "no"),
                   help="invert gray levels: auto decides per image from its border [default: the preprocessing's]")
    p.add_argument("--autocontrast", action=argparse.BooleanOptionalAction, default=None,
                   help="stretch each image to [0, 1] after inversion [default: on for --camera only]")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--requirements", action="store_true", help="print what to pip install for this build, and exit")
    args = p.parse_args(argv)
    if args.top_k < 1:
        p.error("--top-k must be >= 1")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be >= 1")
    if not (args.images or args.camera or args.requirements):
        p.error("give image files, --camera, or --requirements")
    return args


def classify(args) -> dict:
    build = load_build(args.model, args.format)
    if args.requirements:
        return {"requirements": requirements(build)}
    if np is None:
        raise ClassifyError(f"numpy is not installed: {sys.executable} -m pip install numpy", EXIT_NO_RUNTIME)
    spec = image_input(build["manifest"], build["manifest_path"])
    pre = preprocessing(build)
    labels, labels_from = class_labels(build, pre, args.labels)
    # Read and check every image before the (slow) runtime import, so a typo fails at once.
    batch = []
    for path in args.images:
        batch.append((path, read_image(path), bool(args.autocontrast)))
    if args.camera:
        frame, source = grab_frame()
        batch.append((f"camera:{source}", frame, args.autocontrast is not False))
    inputs = []
    for name, image, contrast in batch:
        try:
            inputs.append((name, *prepare(image, spec, pre, args.invert, contrast)))
        except ValueError as e:
            raise ClassifyError(f"{name}: {e}") from None
    start = time.perf_counter()
    rt = load_runtime(build["artifact"], args.threads)
    load_ms = (time.perf_counter() - start) * 1e3
    results = []
    for name, x, done in inputs:
        start = time.perf_counter()
        try:
            output = rt.run(x)
        except Exception as e:
            raise ClassifyError(f"{name}: {rt.name} failed: {type(e).__name__}: {e}", EXIT_FAILED) from None
        ms = (time.perf_counter() - start) * 1e3
        scores = scores_from(output)
        if labels and len(labels) != scores.size:
            raise ClassifyError(f"{labels_from}: {len(labels)} labels, the model has {scores.size} classes")
        results.append({"image": name, "top": top_k(scores, args.top_k, labels), "ms": round(ms, 3), **done})
    return {
        "artifact": build["artifact"], "runtime": {"name": rt.name, "version": rt.version}, "threads": args.threads,
        "load_ms": round(load_ms, 3), "input": {k: spec[k] for k in ("name", "shape", "dtype")},
        "preprocess": {k: v for k, v in pre.items() if k != "labels"}, "labels": labels_from, "results": results,
    }


def print_text(doc: dict) -> None:
    if "requirements" in doc:
        print(doc["requirements"])
        return
    rt = doc["runtime"]
    print(f"{os.path.basename(doc['artifact'])} on {rt['name']} {rt['version']} "
          f"(runtime imported and model loaded in {doc['load_ms']:.0f} ms; preprocessing: {doc['preprocess']['source']})")
    for r in doc["results"]:
        best = "  ".join(f"{t['label']} {t['score']:.3f}" for t in r["top"])
        flags = " [inverted]" if r["inverted"] else ""
        print(f"{r['image']}: {r['top'][0]['label']}   ({best}; {r['ms']:.2f} ms){flags}")


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        doc = classify(args)
    except ClassifyError as e:
        if args.json:
            print(json.dumps({"ok": False, "error": str(e), "exit_code": e.code}))
        print(f"error: {e}", file=sys.stderr)
        return e.code
    if args.json:
        print(json.dumps({"ok": True, **doc}, indent=2))
    else:
        print_text(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
