"""What a format is, and what every format shares.

A format is one module of this package (executorch.py, torchscript_lite.py,
onnx.py, litert.py), found by name or by its artifact's suffix (formats/__init__.py).
Everything that differs between formats lives in its module and nowhere else;
the build, validate, the emulator, deploy and report ask the module. Importing
one is cheap: runtimes and toolkits are imported inside the functions.

A format module defines (`Format` below spells it out):

    NAME, DISPLAY_NAME, SUFFIX, BACKEND   "executorch", "ExecuTorch (XNNPACK)", ".pte", "xnnpack"
    DEVICE_RUNTIME                        the device runner's runtime for it (runtime/runner.py)
    SCHEMES, CALIBRATIONS, DEFAULT_CALIBRATION, UNSUPPORTED_WHY
    available()                           None, or why the format cannot be used here (an extra missing)
    quantize(model, example, calib_batches, cfg) -> quantized model
    export(qmodel, example, path) -> dict (what lowering did; "warnings" a user must see)
    load(path, threads=None) -> Runner    the runtime as a device runs it (timing)
    load_for_validation(path) -> Runner   what an ARM device computes (accuracy); `validated_as` says
                                          how, when the host cannot compute it as the device does
    lint(path) -> {"fast_path", "findings"}  what will not run on the target's fast kernels
    profile(path, batch, runs, threads) -> op rows (name, ms, calls), from the runtime's own profiler
    DEVICE_RUNTIME_MB                     the runtime's resident memory on the device, where it differs
                                          from the host's (None: the same Python runtime runs there)
    OFF_FAST_PATH_IS_SCALAR               ops off the fast path run on scalar one-thread kernels (the
                                          cost model charges them so)
    ARM_KERNELS                           the kernel library its ops run on on ARM ("xnnpack", "mlas",
                                          "qnnpack"): the cost model's KERNEL_LIBRARIES key
    NATIVE_TOOLS                          native benchmark binaries that run it (deploy/native.py parses them)
    PREFERRED_NATIVE_TOOL                 the one a Linux aarch64 board gets by default, if any
    emulate(core, artifact, samples, input_names) -> (outputs, instructions, doc); or
    EMULATION_UNSUPPORTED                 why it cannot run on the emulated board
    GUEST_WHEELS                          {package: version} the emulated board's venv needs to run it
                                          (aarch64 wheels; version None: the host's own)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Protocol, Sequence

import numpy as np

from edgekit.errors import FormatUnsupported, UsageError


class Format(Protocol):
    """The interface of a format module (see the module docstring)."""

    NAME: str
    DISPLAY_NAME: str
    SUFFIX: str
    BACKEND: str
    DEVICE_RUNTIME: str
    SCHEMES: tuple[str, ...]
    CALIBRATIONS: tuple[str, ...]
    DEFAULT_CALIBRATION: str
    DEVICE_RUNTIME_MB: float | None
    OFF_FAST_PATH_IS_SCALAR: bool
    ARM_KERNELS: str
    NATIVE_TOOLS: tuple[str, ...]
    GUEST_WHEELS: dict[str, str | None]

    def available(self) -> str | None: ...
    def quantize(self, model, example: tuple, calib_batches: Iterable[tuple], cfg: "QuantConfig"): ...
    def export(self, qmodel, example: tuple, path: Path) -> dict: ...
    def load(self, path: Path, threads: int | None = None) -> "Runner": ...
    def load_for_validation(self, path: Path) -> "Runner": ...
    def lint(self, path: Path) -> dict: ...
    def profile(self, path: Path, batch: list, runs: int, threads: int) -> list[dict]: ...

# Quantization schemes a user can ask for (`--quant`).
SCHEMES = ("static", "dynamic", "fp16")
# Calibration methods (`--calibration`): how activation ranges are chosen from the
# calibration data. Each format maps the ones its toolkit has to its own
# observers/calibrators and refuses the rest by name.
CALIBRATIONS = ("minmax", "histogram", "percentile", "entropy")
# How weights reach the int8 grid: each to its nearest level (every quantizer's own), or GPTQ on
# the calibration inputs (formats/rounding.py).
WEIGHT_ROUNDINGS = ("nearest", "gptq")
# Percentile calibration keeps this share (percent) of each activation's values inside the
# range. 99.99 (not onnxruntime's 99.999) clips a glitch of one value in ~10^4,
# the rate of a single bad pixel in a few hundred small calibration images.
PERCENTILE = 99.99
# Layer types whose weights quantization (and fallback) act on.
QUANTIZABLE_LAYERS = ("Conv1d", "Conv2d", "Linear")


@dataclass(frozen=True)
class QuantConfig:
    """How to quantize.

    Static int8 with per-channel weights is the default because it is what the
    ARM int8 kernels (XNNPACK, QNNPACK, ORT's MLAS) run fastest.
    """

    scheme: str = "static"
    per_channel: bool = True
    calibration: str | None = None  # None: the format's own default
    skip_layers: tuple[str, ...] = ()  # module names kept in float (accuracy fallback)
    equalize: bool = False  # cross-layer range equalization of the float model first (formats/equalize.py)
    # SmoothQuant's migration strength alpha: the float model's Linear inputs smoothed first
    # (formats/smoothing.py); None: not smoothed
    smooth_quant: float | None = None
    # Static int8 weights rounded by GPTQ on the calibration inputs (formats/rounding.py) unless
    # "nearest": on pretrained EfficientNet-Lite0 nearest rounding is most of the int8 error.
    weight_rounding: str = "gptq"
    only_layers: tuple[str, ...] | None = None  # quantize just these (sensitivity analysis)
    # Quantization-aware training on the build's training inputs (train/qat.py) instead of
    # calibration alone; for formats with `prepare_qat` (PT2E's QAT)
    qat: bool = False
    input_names: tuple[str, ...] = field(default=(), compare=False)  # for formats that name inputs (ONNX)

    def to_json(self, fmt=None) -> dict:
        calibration = self.calibration
        if calibration is None and fmt is not None and self.scheme == "static":
            calibration = fmt.DEFAULT_CALIBRATION
        doc = {"scheme": self.scheme, "per_channel": self.per_channel, "calibration": calibration}
        if self.skip_layers:
            doc["float_layers"] = list(self.skip_layers)
        if self.equalize:
            doc["equalize"] = True
        if self.smooth_quant is not None:
            doc["smooth_quant"] = self.smooth_quant
        if self.scheme == "static":
            doc["weight_rounding"] = self.weight_rounding
        if self.qat:  # the ranges come from QAT's own observers (train/qat.py), not the calibration method
            doc.update(qat=True, calibration="qat")
        return doc


class Runner(Protocol):
    """An artifact loaded in its real runtime."""

    runtime: str  # e.g. "executorch"
    validated_as: str | None  # how it computes, when not as the device does (load_for_validation)

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Run once on one batch; returns every output as a numpy array."""
        ...


def check_supported(fmt, cfg: QuantConfig, target=None) -> None:
    """Refuse, before any work, what this format (or target) cannot do."""
    missing = fmt.available()
    if missing:
        raise UsageError(f"--format {fmt.NAME}: {missing}", hint=getattr(fmt, "INSTALL_HINT", None))
    if cfg.scheme not in fmt.SCHEMES:
        raise UsageError(
            f"--quant {cfg.scheme}: the {fmt.NAME} format has no {cfg.scheme} quantization here",
            hint=f"{fmt.NAME} supports: {', '.join(fmt.SCHEMES)}" + _why(fmt, cfg.scheme),
        )
    if cfg.calibration is not None:
        if cfg.scheme != "static":
            raise UsageError(f"--calibration applies to --quant static only (got --quant {cfg.scheme})")
        if cfg.calibration not in fmt.CALIBRATIONS:
            raise UsageError(
                f"--calibration {cfg.calibration}: {fmt.NAME} ({fmt.BACKEND}) has no such calibrator",
                hint=f"{fmt.NAME} offers: {', '.join(fmt.CALIBRATIONS)}",
            )
    if cfg.scheme == "fp16" and target is not None and not target.features.fp16:
        raise UsageError(
            f"--quant fp16: target '{target.name}' ({target.cpu}) has no fp16 arithmetic",
            hint="use --quant static or dynamic, or a target with fp16 (rpi5, android-arm64)",
        )


def _why(fmt, scheme: str) -> str:
    reason = getattr(fmt, "UNSUPPORTED_WHY", {}).get(scheme)
    return f" ({reason})" if reason else ""


def check_calibration_name(name: str | None) -> None:
    if name is not None and name not in CALIBRATIONS:
        raise UsageError(f"--calibration: unknown method '{name}'", hint=f"choose one of: {', '.join(CALIBRATIONS)}")


def quantizable_layers(model) -> list[str]:
    """Names of the Conv/Linear modules, in definition order; their subclasses too (EfficientNet's
    Conv2dStaticSamePadding is an nn.Conv2d that pads in its forward)."""
    return [name for name, m in model.named_modules()
            if name and any(c.__name__ in QUANTIZABLE_LAYERS and c.__module__.startswith("torch.nn")
                            for c in type(m).__mro__)]


def layer_selected(scopes: Sequence[str], cfg: QuantConfig) -> bool:
    """Should an op inside these module scopes be quantized under `cfg`?

    `scopes` are the dotted module paths that enclose the op ("blocks", "blocks.0").
    """
    scopes = set(scopes)
    if any(name in scopes for name in cfg.skip_layers):
        return False
    if cfg.only_layers is not None:
        return any(name in scopes for name in cfg.only_layers)
    return True


def torch_export(model, example_inputs: tuple):
    """torch.export with a message a user can act on when capture fails."""
    import torch

    try:
        return torch.export.export(model, tuple(example_inputs), strict=False)
    except Exception as e:
        raise FormatUnsupported(
            f"torch.export could not capture the model with inputs of shapes "
            f"{[tuple(t.shape) for t in example_inputs]}: {type(e).__name__}: {str(e).splitlines()[0]}",
            hint="make the forward pass traceable (no data-dependent Python control flow)",
        ) from e


def aten_name(node) -> str:
    """The op of an exported graph's node, bare: aten.conv2d.default -> conv2d (equalize.py,
    rounding.py read torch.export graphs by it)."""
    target = getattr(node, "target", None)
    return getattr(target, "__name__", str(target)).split(".")[0]


def finding(op: str, count: int, advice: str, where: str, **extra) -> dict:
    """One lint finding: an op (or input) off the target runtime's fast path, and what to do."""
    return {"op": op, "count": count, "where": where, "advice": advice, **extra}


DYNAMIC_SHAPE = "dynamic_shape"  # the lint finding for an input whose shape is not fixed in the artifact


def op_row(name: str, total_ms: float, calls: int, runs: int) -> dict:
    """One row of a per-op profile: mean ms per inference, calls per inference."""
    return {"name": name, "ms": round(total_ms / runs, 4), "calls": calls // runs if runs else calls}
