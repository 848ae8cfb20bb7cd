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
    formats: tuple[str, ...] = (),
    quant: str = "static",
    calibration: str | None = None,
    per_channel: bool = True,
    calib_samples: int | None = None,
    max_accuracy_drop: float | None = None,
    fallback: bool = True,
    sensitivity: bool = False,
    out: str | Path | None = None,
    show_progress: bool = False,
) -> dict:
    """Quantize, export and validate a model for a target; returns the manifest.

    Give either `app` (a directory with edgekit.toml) or `model` ("module:factory")
    with `input_shape` ("1,3,32,32") or `inputs` (("ids:1x128:int64", ...)).
    `formats`: ("executorch", "torchscript-lite", "onnx") or ("all",); default the
    target's. The build lands in `out` (default build/<name>-<target>/).
    Raises GateError (exit 3) when `max_accuracy_drop` can't be met; the build
    dir then holds the best result.
    """
    from edgekit.backends.base import QuantConfig, check_calibration_name
    from edgekit.pipeline import BuildOptions, run_build
    from edgekit.progress import Steps
    from edgekit.target import load_target

    tgt = load_target(target)
    spec = _model_spec(app, model, input_shape, inputs, weights, calib, eval)
    if calib_samples is not None and calib_samples <= 0:
        raise UsageError(f"--calib-samples must be a positive number, got {calib_samples}")
    if max_accuracy_drop is not None and max_accuracy_drop < 0:
        raise UsageError(f"--max-accuracy-drop must be 0 or more points, got {max_accuracy_drop}")
    check_calibration_name(calibration)
    options = BuildOptions(
        formats=tuple(formats), quant=QuantConfig(scheme=quant, per_channel=per_channel, calibration=calibration),
        calib_samples=calib_samples, max_accuracy_drop=max_accuracy_drop, fallback=fallback, sensitivity=sensitivity,
    )
    out_dir = Path(out) if out else DEFAULT_BUILD_ROOT / f"{spec.name}-{tgt.name}"
    manifest = run_build(spec, tgt, out_dir, Steps(show=show_progress), options)
    manifest["build_dir"] = str(out_dir)
    return manifest


def _model_spec(app, model, input_shape, inputs, weights, calib, eval):
    """An app dir, or --model with its inputs; command-line paths override the app file's."""
    from edgekit.app import ModelSpec, load_app

    overrides = {"weights": _path(weights), "calib": _path(calib), "eval": _path(eval)}
    if app is not None and model is not None:
        raise UsageError("both an app directory and --model were given", hint="use one or the other")
    if app is not None:
        if input_shape or inputs:
            raise UsageError("--input-shape/--input apply to --model only", hint="an app dir declares [[inputs]] in edgekit.toml")
        return load_app(app).with_overrides(**overrides)
    if model is not None:
        specs = resolve_inputs(input_shape, inputs)
        if not specs:
            raise UsageError("--model needs the input shape", hint="add --input-shape 1,3,32,32 (batch first) or --input NAME:SHAPE:DTYPE")
        return ModelSpec(name=_model_name(model), factory=model, inputs=specs, **overrides)
    raise UsageError("nothing to build", hint="pass an app directory (e.g. sample_apps/digits) or --model module:factory")


def _path(value: str | Path | None) -> Path | None:
    return Path(value).resolve() if value is not None else None


def _model_name(model: str) -> str:
    """'pkg.nets:make_resnet' -> 'make_resnet': the build dir's name for a --model build."""
    return model.rpartition(":")[2] or model.replace(".", "_")


__all__ = ["build", "InputSpec"]


# --- deploy, bench, report ------------------------------------------------------------------


def deploy(
    build_dir: str | Path,
    devices: tuple[str, ...] | list[str] = (),
    *,
    devices_file: str | Path | None = None,
    format: str | None = None,
    bench: "BenchOptions | bool | None" = None,
    timeout: float | None = None,
    allow_arch_mismatch: bool = False,
    python: str | None = None,
    remote_dir: str | None = None,
    ssh_config: str | Path | None = None,
    ssh_options: tuple[str, ...] = (),
    native_runner: str | None = None,
    on_done=None,
) -> list[dict]:
    """Push a build to devices (in parallel), check the runtime there, optionally benchmark.

    `devices`: "user@host[:port]", "adb[:SERIAL]" or "local"; or a `devices_file` (devices.toml).
    `format`: which of the build's artifacts to deploy (default: the primary one).
    `bench`: a BenchOptions (or True for the defaults) to run the latency benchmark.
    `timeout`: seconds the runner may take on a device for the check (default: the bench's, else 300).
    The other keywords are each device's settings (a devices.toml entry may override them).
    Returns one record per device; raises DeployFailed (exit 4) after all finished if any failed.
    `on_done(record)` is called as each device finishes.
    """
    from edgekit.deploy.devices import device_defaults, load_devices_file, parse_device
    from edgekit.deploy.records import open_build
    from edgekit.deploy.session import BenchOptions, DeployPlan, deploy_all

    build_info = open_build(build_dir, format)
    defaults = device_defaults(python=python, remote_dir=remote_dir, ssh_config=_str_path(ssh_config),
                               ssh_options=tuple(ssh_options), native_runner=native_runner)
    targets = [parse_device(d, defaults) for d in devices]
    if devices_file is not None:
        targets += load_devices_file(devices_file, defaults)
    if not targets:
        raise UsageError("no device given", hint="pass --device user@host[:port] (repeatable) or --devices devices.toml")
    options = BenchOptions() if bench is True else (bench or None)
    check_timeout = timeout or (options.timeout if options else DeployPlan.check_timeout)
    plan = DeployPlan(bench=options, allow_arch_mismatch=allow_arch_mismatch, check_timeout=check_timeout)
    return deploy_all(build_info, targets, plan, on_done)


def bench(build_dir: str | Path, options: "BenchOptions | None" = None, *, format: str | None = None, python: str | None = None) -> dict:
    """Run the build's artifact on this computer with the device runner; returns the run record
    (stored like a device run, device name "host"). `python` defaults to the one running edgekit."""
    import sys

    from edgekit.deploy.records import open_build
    from edgekit.deploy.session import BenchOptions, bench_host

    return bench_host(open_build(build_dir, format), options or BenchOptions(), python or sys.executable)


def report(build_dir: str | Path, *, html: bool = True) -> dict:
    """Gather the build's report data (manifest + device runs); write BUILD/report.html unless html=False."""
    from edgekit.report import build_report, write_html

    data = build_report(build_dir)
    if html:
        data["html"] = str(write_html(build_dir, data))
    return data


def _str_path(value: str | Path | None) -> str | None:
    return str(Path(value).expanduser().resolve()) if value is not None else None


__all__ += ["deploy", "bench", "report"]
