"""The Python API: anything a command can do, one function call can do.

    import edgekit.api as ek
    manifest = ek.build("sample_apps/digits", target="rpi4")
"""

from __future__ import annotations

from pathlib import Path

from edgekit.errors import UsageError
from edgekit.spec import InputSpec, resolve_inputs

DEFAULT_BUILD_ROOT = Path("build")


def build(
    app: str | Path | None = None,
    *,
    target: str = "rpi4",
    model: str | None = None,
    input_shape: str | None = None,
    inputs: tuple[str, ...] = (),
    weights: str | Path | None = None,
    calib: str | Path | None = None,
    eval: str | Path | None = None,
    out: str | Path | None = None,
    calib_samples: int | None = None,
    show_progress: bool = False,
) -> dict:
    """Quantize, export and validate a model for a target; returns the manifest.

    Give either `app` (a directory with edgekit.toml) or `model` ("module:factory")
    with `input_shape` ("1,3,32,32") or `inputs` (("ids:1x128:int64", ...)).
    The build lands in `out` (default build/<name>-<target>/).
    """
    from edgekit.app import ModelSpec, load_app
    from edgekit.pipeline import run_build
    from edgekit.progress import Steps
    from edgekit.target import load_target

    tgt = load_target(target)
    overrides = {"weights": _path(weights), "calib": _path(calib), "eval": _path(eval)}
    if app is not None and model is not None:
        raise UsageError("both an app directory and --model were given", hint="use one or the other")
    if app is not None:
        if input_shape or inputs:
            raise UsageError("--input-shape/--input apply to --model only", hint="an app dir declares [[inputs]] in edgekit.toml")
        spec = load_app(app).with_overrides(**overrides)
    elif model is not None:
        specs = resolve_inputs(input_shape, inputs)
        if not specs:
            raise UsageError("--model needs the input shape", hint="add --input-shape 1,3,32,32 (batch first) or --input NAME:SHAPE:DTYPE")
        spec = ModelSpec(name=_model_name(model), factory=model, inputs=specs, **overrides)
    else:
        raise UsageError("nothing to build", hint="pass an app directory (e.g. sample_apps/digits) or --model module:factory")
    if calib_samples is not None and calib_samples <= 0:
        raise UsageError(f"--calib-samples must be a positive number, got {calib_samples}")
    out_dir = Path(out) if out else DEFAULT_BUILD_ROOT / f"{spec.name}-{tgt.name}"
    manifest = run_build(spec, tgt, out_dir, Steps(show=show_progress), calib_samples)
    manifest["build_dir"] = str(out_dir)
    return manifest


def _path(value: str | Path | None) -> Path | None:
    return Path(value).resolve() if value is not None else None


def _model_name(model: str) -> str:
    """'pkg.nets:make_resnet' -> 'make_resnet': the build dir's name for a --model build."""
    return model.rpartition(":")[2] or model.replace(".", "_")


__all__ = ["build", "InputSpec"]
