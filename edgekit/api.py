"""The Python API: anything a command can do, one function call can do.

    import edgekit.api as ek
    manifest = ek.build("sample_apps/digits", target="rpi4")
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from edgekit.errors import BuildGateFailed, UsageError
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
    min_cosine: float | None = None,
    min_agreement: float | None = None,
    task: str | None = None,
    fallback: bool = True,
    sensitivity: bool = False,
    train: str | Path | None = None,
    prune: float | None = None,
    prune_macs: float | None = None,
    prune_importance: str = "l2",
    prune_global: bool = False,
    distill: "bool | DistillConfig" = False,
    nproc: int = 1,
    lowrank: float | None = None,
    lowrank_energy: float | None = None,
    sparsity: float | None = None,
    out: str | Path | None = None,
    show_progress: bool = False,
) -> dict:
    """Quantize, export and validate a model for a target; returns the manifest.

    Compression stages run first, in this order: `prune` (fraction of channels
    removed) or `prune_macs` (fraction of MACs kept), then `distill` (True for the
    defaults, or a DistillConfig; teacher = the model as loaded; `train` data,
    `nproc` > 1 runs it under DDP). `lowrank` (rank fraction) or `lowrank_energy`
    SVD-factorise Linear/1x1 Conv layers; `sparsity` zeros that share of weights.
    See edgekit/stages/.

    Give either `app` (a directory with edgekit.toml) or `model` ("module:factory")
    with `input_shape` ("1,3,32,32") or `inputs` (("ids:1x128:int64", ...)).
    `formats`: ("executorch", "torchscript-lite", "onnx") or ("all",); default the
    target's. The build lands in `out` (default build/<name>-<target>/).
    Every artifact must pass the quality gate against the float model on the evaluation
    data (labels optional): mean cosine >= `min_cosine` (default 0.99) for every output,
    top-1 agreement >= `min_agreement` percent (default 95) where the output is class
    scores (`task`: auto, classification, embedding, regression), and an accuracy drop
    <= `max_accuracy_drop` points when given (needs labels). Raises GateError (exit 3)
    when an artifact fails it; the build dir then holds every artifact, marked.
    """
    from edgekit.backends.base import QuantConfig, check_calibration_name
    from edgekit.pipeline import BuildOptions, run_build
    from edgekit.progress import Steps
    from edgekit.target import load_target

    tgt = load_target(target)
    spec = _model_spec(app, model, input_shape, inputs, weights, calib, eval, train)
    stages = _stage_options(tgt, prune, prune_macs, prune_importance, prune_global, distill, nproc,
                            lowrank, lowrank_energy, sparsity)
    if stages is not None and stages.distill is not None and spec.train is None:  # before any work
        raise UsageError("--distill needs training data",
                         hint="pass --train train.npz (x and labels y), or set data.train in edgekit.toml")
    if calib_samples is not None and calib_samples <= 0:
        raise UsageError(f"--calib-samples must be a positive number, got {calib_samples}")
    if max_accuracy_drop is not None and max_accuracy_drop < 0:
        raise UsageError(f"--max-accuracy-drop must be 0 or more points, got {max_accuracy_drop}")
    _check_gate_thresholds(min_cosine, min_agreement)
    if task is not None:
        from edgekit.app import check_task

        spec = dataclasses.replace(spec, task=check_task(task, "--task"))
    check_calibration_name(calibration)
    options = BuildOptions(
        formats=tuple(formats), quant=QuantConfig(scheme=quant, per_channel=per_channel, calibration=calibration),
        calib_samples=calib_samples, max_accuracy_drop=max_accuracy_drop, min_cosine=min_cosine,
        min_agreement=min_agreement, task=spec.task, fallback=fallback, sensitivity=sensitivity, stages=stages,
    )
    out_dir = Path(out) if out else DEFAULT_BUILD_ROOT / f"{spec.name}-{tgt.name}"
    try:
        manifest = run_build(spec, tgt, out_dir, Steps(show=show_progress), options)
    except BuildGateFailed as e:
        e.manifest["build_dir"] = str(out_dir)
        raise
    manifest["build_dir"] = str(out_dir)
    return manifest


def _check_gate_thresholds(min_cosine: float | None, min_agreement: float | None) -> None:
    if min_cosine is not None and not -1.0 <= min_cosine <= 1.0:
        raise UsageError(f"--min-cosine must be between -1 and 1, got {min_cosine:g}", hint="e.g. --min-cosine 0.99")
    if min_agreement is not None and not 0.0 <= min_agreement <= 100.0:
        raise UsageError(f"--min-agreement is a percentage between 0 and 100, got {min_agreement:g}",
                         hint="e.g. --min-agreement 95")


def _stage_options(tgt, prune, prune_macs, prune_importance, prune_global, distill, nproc,
                   lowrank=None, lowrank_energy=None, sparsity=None):
    """The compression stages asked for (checked before any work), or None."""
    from edgekit.stages.distill import DistillConfig
    from edgekit.stages.prune import PruneConfig
    from edgekit.stages.run import StageOptions

    prune_cfg = None
    if prune is not None or prune_macs is not None:
        # round_to comes from the target: channel counts the target's int8 kernels tile well.
        prune_cfg = PruneConfig(ratio=prune, macs_target=prune_macs, importance=prune_importance,
                                global_pruning=prune_global, round_to=tgt.round_to)
    distill_cfg = distill if isinstance(distill, DistillConfig) else (DistillConfig() if distill else None)
    if nproc != 1 and distill_cfg is None:
        raise UsageError("--nproc applies to distillation only", hint="add --distill, or drop --nproc")
    from edgekit.stages.lowrank import LowRankConfig
    from edgekit.stages.sparsity import SparsityConfig

    lowrank_cfg = LowRankConfig(lowrank, lowrank_energy) if lowrank is not None or lowrank_energy is not None else None
    sparsity_cfg = SparsityConfig(sparsity) if sparsity is not None else None
    options = StageOptions(prune=prune_cfg, distill=distill_cfg, nproc=nproc, lowrank=lowrank_cfg, sparsity=sparsity_cfg)
    options.check()
    return options if options.any else None


def _model_spec(app, model, input_shape, inputs, weights, calib, eval, train=None):
    """An app dir, or --model with its inputs; command-line paths override the app file's."""
    from edgekit.app import ModelSpec, load_app

    overrides = {"weights": _path(weights), "calib": _path(calib), "eval": _path(eval), "train": _path(train)}
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


# --- distill ----------------------------------------------------------------------------------


def distill(
    app: str | Path | None = None,
    *,
    model: str | None = None,
    input_shape: str | None = None,
    inputs: tuple[str, ...] = (),
    weights: str | Path | None = None,
    train: str | Path | None = None,
    eval: str | Path | None = None,
    student: str | None = None,
    student_weights: str | Path | None = None,
    prune: float | None = None,
    target: str = "rpi4",
    config: "DistillConfig | None" = None,
    nproc: int = 1,
    out: str | Path | None = None,
    show_progress: bool = False,
) -> dict:
    """Train a student from the teacher (`app` or `model`, with its weights); returns the record.

    The student is `student` ("module:factory", optionally `student_weights`), or
    the teacher pruned by `prune` (channel rounding from `target`). `nproc` > 1
    runs under DDP via torchrun. Writes OUT/float_model.pt (+ .pt2) and
    OUT/distill.json; OUT defaults to build/<name>-distilled/.
    """
    import dataclasses
    import json

    from edgekit.app import build_module
    from edgekit.data import example_inputs
    from edgekit.progress import Steps
    from edgekit.stages.distill import DistillConfig
    from edgekit.stages.macs import count
    from edgekit.stages.run import FLOAT_MODEL, FLOAT_PROGRAM, load_training_data
    from edgekit.stages.saved import save_exported, save_transformed
    from edgekit.target import load_target

    spec = _model_spec(app, model, input_shape, inputs, weights, None, eval, train)
    cfg = config or DistillConfig()
    cfg.check()
    if (student is None) == (prune is None):
        raise UsageError("give the student: --student MODULE:FACTORY, or --prune RATIO to distill into the pruned teacher")
    if nproc < 1:
        raise UsageError(f"--nproc must be at least 1, got {nproc}")
    student_spec = dataclasses.replace(spec, factory=student, weights=_path(student_weights)) if student else None
    train_data, eval_data = load_training_data(spec)
    steps = Steps(show=show_progress)
    example = example_inputs(spec.inputs)
    teacher = build_module(spec)
    if student_spec is not None:
        student_model = build_module(student_spec)
    else:
        from edgekit.stages.prune import PruneConfig, prune as prune_model

        import copy

        student_model = prune_model(copy.deepcopy(teacher), example, PruneConfig(ratio=prune, round_to=load_target(target).round_to))
    with steps.step("distill", {**cfg.to_json(), "processes": nproc}, f"distill ({nproc} process{'es' if nproc > 1 else ''})") as rec:
        if nproc > 1:
            from edgekit.train.launch import distill_ddp

            student_model, result = distill_ddp(spec, cfg, nproc, student=None if student_spec else student_model,
                                                student_spec=student_spec)
        else:
            from edgekit.stages.distill import distill as run_distill

            result = run_distill(student_model, teacher, train_data, eval_data, spec.inputs, cfg, steps, example)
    out_dir = Path(out) if out else DEFAULT_BUILD_ROOT / f"{spec.name}-distilled"
    out_dir.mkdir(parents=True, exist_ok=True)
    save_transformed(student_model, out_dir / FLOAT_MODEL)
    save_exported(student_model, example, out_dir / FLOAT_PROGRAM)
    record = {**result, "teacher": {**count(teacher, example), "factory": spec.factory},
              "student": {**count(student_model, example), "factory": student or f"{spec.factory} pruned {prune:g}"},
              "seconds": rec["seconds"], "out": str(out_dir),
              "files": {"model": FLOAT_MODEL, "program": FLOAT_PROGRAM}}
    (out_dir / "distill.json").write_text(json.dumps(record, indent=2))
    return record


__all__ += ["distill"]


# --- validate ---------------------------------------------------------------------------------


def validate(
    build_dir: str | Path,
    *,
    checks: tuple[str, ...] | list[str] | None = None,
    target: str | None = None,
    formats: tuple[str, ...] | list[str] = (),
    app: str | Path | None = None,
    runs: int = 20,
    warmup: int = 3,
    max_samples: int | None = None,
    fail_on_lint: bool = False,
    emulate: bool = False,
    say=None,
) -> dict:
    """Re-check a build on this computer; returns the `validation` record also merged into its manifest.

    Verifies every artifact's sha256 first (UsageError, exit 2, on a mismatch). `checks`: any of
    parity, lint, cost, resources, profile (default all). `target`: judge against another
    profile than the build's (e.g. "pi-zero2"). Raises GateError (exit 3) when a check fails,
    after writing the results. `say(line)` receives progress lines (default: silent).
    """
    from edgekit.emulate.validate import CHECKS, ValidateOptions
    from edgekit.emulate.validate import validate as run_validate

    options = ValidateOptions(checks=tuple(checks) if checks else CHECKS, target=target, formats=tuple(formats),
                              app=str(app) if app else None, runs=runs, warmup=warmup, max_samples=max_samples,
                              fail_on_lint=fail_on_lint, emulate=emulate)
    return run_validate(build_dir, options, say or (lambda line: None))


__all__ += ["validate"]
