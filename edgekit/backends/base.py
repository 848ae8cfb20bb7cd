"""What every backend shares: the quantization config, the runner interface,
and the checks that say clearly what a backend can't do."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np

from edgekit.errors import FormatUnsupported, UsageError

# Quantization schemes a user can ask for (`--quant`).
SCHEMES = ("static", "dynamic", "fp16")
# Calibration methods (`--calibration`): how activation ranges are chosen from the
# calibration data. Each backend maps the ones its toolkit has to its own
# observers/calibrators and refuses the rest by name.
CALIBRATIONS = ("minmax", "histogram", "percentile", "entropy")
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
    calibration: str | None = None  # None: the backend's own default
    skip_layers: tuple[str, ...] = ()  # module names kept in float (accuracy fallback)
    only_layers: tuple[str, ...] | None = None  # quantize just these (sensitivity analysis)
    input_names: tuple[str, ...] = field(default=(), compare=False)  # for formats that name inputs (ONNX)

    def to_json(self, backend=None) -> dict:
        calibration = self.calibration
        if calibration is None and backend is not None and self.scheme == "static":
            calibration = backend.DEFAULT_CALIBRATION
        doc = {"scheme": self.scheme, "per_channel": self.per_channel, "calibration": calibration}
        if self.skip_layers:
            doc["float_layers"] = list(self.skip_layers)
        return doc


class Runner(Protocol):
    """An artifact loaded in its real runtime."""

    runtime: str  # e.g. "executorch"

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Run once on one batch; returns every output as a numpy array."""
        ...


def check_supported(backend, cfg: QuantConfig, target=None) -> None:
    """Refuse, before any work, what this backend (or target) cannot do."""
    if cfg.scheme not in backend.SCHEMES:
        raise UsageError(
            f"--quant {cfg.scheme}: the {backend.FORMAT} format has no {cfg.scheme} quantization here",
            hint=f"{backend.FORMAT} supports: {', '.join(backend.SCHEMES)}" + _why(backend, cfg.scheme),
        )
    if cfg.calibration is not None:
        if cfg.scheme != "static":
            raise UsageError(f"--calibration applies to --quant static only (got --quant {cfg.scheme})")
        if cfg.calibration not in backend.CALIBRATIONS:
            raise UsageError(
                f"--calibration {cfg.calibration}: {backend.FORMAT} ({backend.BACKEND}) has no such calibrator",
                hint=f"{backend.FORMAT} offers: {', '.join(backend.CALIBRATIONS)}",
            )
    if cfg.scheme == "fp16" and target is not None and not target.features.fp16:
        raise UsageError(
            f"--quant fp16: target '{target.name}' ({target.cpu}) has no fp16 arithmetic",
            hint="use --quant static or dynamic, or a target with fp16 (rpi5, android-arm64)",
        )


def _why(backend, scheme: str) -> str:
    reason = getattr(backend, "UNSUPPORTED_WHY", {}).get(scheme)
    return f" ({reason})" if reason else ""


def check_calibration_name(name: str | None) -> None:
    if name is not None and name not in CALIBRATIONS:
        raise UsageError(f"--calibration: unknown method '{name}'", hint=f"choose one of: {', '.join(CALIBRATIONS)}")


def quantizable_layers(model) -> list[str]:
    """Names of the leaf Conv/Linear modules, in definition order."""
    return [name for name, m in model.named_modules() if name and type(m).__name__ in QUANTIZABLE_LAYERS]


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
