"""The Python API: anything a command can do, one function call can do.

    import edgekit.api as ek
    manifest = ek.build("sample_apps/digits", "rpi4")
    manifest = ek.build(ek.source(model="nets:make", input_shape="1,3,32,32", calib="c.npz"), "rpi5",
                        ek.recipe(formats=("all",), calibration="minmax", min_cosine=0.995))
"""

from __future__ import annotations

import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from edgekit.build import run_build
from edgekit.build.builddir import staged_build_dir
from edgekit.deploy.devices import device_defaults, load_devices_file, parse_device
from edgekit.deploy.records import open_build
from edgekit.deploy.serve_load import load_test
from edgekit.deploy.service import ServiceOptions
from edgekit.deploy.session import BenchOptions, DeployPlan, bench_host, deploy_all
from edgekit.deploy.session import stop_serving as stop_device_service
from edgekit.emulator.board import Board
from edgekit.emulator.check import qemu_cpu_of
from edgekit.emulator.paths import EmulatorPaths
from edgekit.emulator.setup import build as build_emulator
from edgekit.emulator.setup import require_ready
from edgekit.errors import BuildGateFailed, EdgekitError, UsageError
from edgekit.formats import all_formats
from edgekit.manifest import write_json_atomic
from edgekit.model import source as _source
from edgekit.model.app import ModelSpec, build_module
from edgekit.model.loaded import LoadedModel
from edgekit.progress import EdgekitWarning, Steps
from edgekit.recipe import BuildRecipe, GateOptions, app_recipe
from edgekit.recipe import recipe_from_options as recipe
from edgekit.report import build_report, write_html
from edgekit.search import TIMING_SECONDS
from edgekit.runtime.runner import RunnerError
from edgekit.serve import GENERATION_PACKAGES, STACK_WITH_DEPENDENCIES, Settings, install_hint, spec_doc
from edgekit.serve.server import missing_stack
from edgekit.serve.server import serve as run_server
from edgekit.stages import chain as stage_chain
from edgekit.stages.macs import count
from edgekit.stages.options import StageOptions
from edgekit.target import load_target
from edgekit.validate.run import CHECKS, ValidateOptions
from edgekit.validate.run import validate as run_validate

DEFAULT_BUILD_ROOT = Path("build")
source = _source  # what to build: an app dir, or module:factory with its inputs and data files


def build(source: str | Path | ModelSpec, target: str = "rpi4", recipe: BuildRecipe | None = None, *,
          out: str | Path | None = None, progress: bool = False,
          on_step: Callable[[dict], None] | None = None, device=None, bench=None,
          allow_arch_mismatch: bool = False) -> dict:
    """Quantize, export and judge a model for a target; returns the manifest.

    `source`: an app directory (with edgekit.toml) or a ModelSpec (`edgekit.api.source(...)`).
    `target`: a profile name ("rpi4") or a .toml path. `recipe`: how (formats, quantization,
    stages, gate; default: the app's [recipe] table, else BuildRecipe()). The build lands in
    `out` (default build/<name>-<target>/). Every artifact must pass the quality gate (see
    edgekit/compare.py); one that fails is written, marked, and BuildGateFailed (exit 3) is
    raised with the manifest. `progress`: show per-step progress on stderr; without it, the
    build's warnings (also in `manifest["warnings"]`) are raised as `EdgekitWarning`s. `on_step`:
    called with each step's record (stage, config, seconds) as it ends. `device` (a deploy Device, with
    `bench` options and `allow_arch_mismatch`): the latency budget is judged by timing the primary artifact
    there (build/budget.py `measured`), not by the cost model's prediction.
    """

    tgt = load_target(target)
    spec = _spec(source)
    if recipe is None:
        recipe = app_recipe(spec) or BuildRecipe()
    out_dir = Path(out) if out else DEFAULT_BUILD_ROOT / f"{spec.name}-{tgt.name}"
    on_device = device is not None
    if on_device and recipe.gate.latency_budget_ms is None:
        raise UsageError("--device on a build times the artifact there for --latency-budget: give the budget",
                         hint="add --latency-budget MS, or time any build with `edgekit deploy BUILD --device D --bench`")
    try:
        manifest = run_build(spec, tgt, recipe, out_dir,
                             Steps(show=progress, on_step=on_step, python_warnings=not progress),
                             latency_on_device=on_device)
        if on_device:
            from edgekit.build.budget import measured

            manifest = measured(out_dir, device, bench or BenchOptions(min_seconds=TIMING_SECONDS),
                                allow_arch_mismatch, recipe.gate.latency_budget_ms)
    except BuildGateFailed as e:
        e.manifest["build_dir"] = str(out_dir)
        raise
    manifest["build_dir"] = str(out_dir)
    return manifest


def _spec(source: str | Path | ModelSpec) -> ModelSpec:
    return source if isinstance(source, ModelSpec) else _source(source)


__all__ = ["build", "source", "recipe", "BuildRecipe", "GateOptions", "EdgekitWarning"]


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
    serve: "ServiceOptions | None" = None,
    on_done=None,
) -> list[dict]:
    """Push a build to devices (in parallel), check the runtime there, optionally benchmark.

    `devices`: "user@host[:port]", "adb[:SERIAL]" or "local"; or a `devices_file` (devices.toml).
    `format`: which of the build's artifacts to deploy (default: the primary one).
    `bench`: a BenchOptions (or True for the defaults) to run the latency benchmark.
    `timeout`: seconds the runner may take on a device for the check (default: the bench's, else 300).
    The other keywords are each device's settings (a devices.toml entry may override them).
    Returns one record per device; raises DeployFailed (exit 4) after all finished if any failed.
    `serve`: a ServiceOptions to keep the server running there as a service (`deploy --serve`).
    `on_done(record)` is called as each device finishes.
    """

    build_info = open_build(build_dir, format)
    targets = _devices(devices, devices_file, python=python, remote_dir=remote_dir, ssh_config=_str_path(ssh_config),
                       ssh_options=tuple(ssh_options), native_runner=native_runner)
    options = BenchOptions() if bench is True else (bench or None)
    check_timeout = timeout or (options.timeout if options else DeployPlan.check_timeout)
    plan = DeployPlan(bench=options, serve=serve, allow_arch_mismatch=allow_arch_mismatch, check_timeout=check_timeout)
    return deploy_all(build_info, targets, plan, on_done)


def stop_serving(build_dir: str | Path, devices: tuple[str, ...] | list[str] = (), *, port: int = Settings.port,
                 devices_file: str | Path | None = None, format: str | None = None, remote_dir: str | None = None,
                 ssh_config: str | Path | None = None, ssh_options: tuple[str, ...] = ()) -> list[dict]:
    """`deploy --serve stop`: stop and remove the server on `port` of each device; one record per device."""
    build_info = open_build(build_dir, format)
    targets = _devices(devices, devices_file, remote_dir=remote_dir, ssh_config=_str_path(ssh_config),
                       ssh_options=tuple(ssh_options))
    return [stop_device_service(build_info, d, port) for d in targets]


def _devices(devices, devices_file, **settings) -> list:
    defaults = device_defaults(**settings)
    targets = [parse_device(d, defaults) for d in devices]
    if devices_file is not None:
        targets += load_devices_file(devices_file, defaults)
    if not targets:
        raise UsageError("no device given", hint="pass --device user@host[:port] (repeatable) or --devices devices.toml")
    return targets


def serve(build_dir: str | Path, settings: Settings | None = None, *, format: str | None = None, on_ready=None) -> int:
    """Serve the build's artifact on this computer until SIGTERM/SIGINT (edgekit serve).
    `settings.threads` defaults to the target profile's thread count; `on_ready(state)` runs once it answers.
    A text-generation build answers POST /v1/generate (serve/server.py GeneratingModel)."""
    from edgekit.manifest import TEXT_GENERATION, read_manifest

    if read_manifest(build_dir).get("task") == TEXT_GENERATION:
        from edgekit.llm.generate import verified_build
        from edgekit.serve import generation_spec_doc

        manifest, artifact = verified_build(build_dir)
        threads, doc = manifest["target_profile"]["threads"], generation_spec_doc(manifest)
    else:
        build_info = open_build(build_dir, format)
        threads, artifact = build_info.threads, build_info.artifact
        doc = spec_doc(build_info.manifest, build_info.format, build_info.artifact_record, build_info.runtime)
    settings = settings or Settings(threads=threads)
    problem = settings.problem()
    if problem:
        raise UsageError(problem)
    missing = missing_stack()
    if missing:
        raise UsageError(f"cannot import {missing}, which edgekit serve needs", hint="install it: " + install_hint(sys.executable))
    try:
        return run_server(str(artifact), doc, settings, on_ready)
    except RunnerError as e:
        if e.kind == "runtime_missing":
            raise UsageError(str(e)) from None
        raise EdgekitError(f"serving {artifact}: {e}") from None


def bench_serve(build_dir: str | Path, url: str, *, concurrency=(1, 8, 32), requests: int = 2000,
                inputs: str | Path | None = None, format: str | None = None, say=None) -> dict:
    """`edgekit bench BUILD --serve URL`: a bounded load test of this build's server (this computer, or one
    `deploy --serve` started); throughput and p50/p90/p99 per concurrency level, recorded in the build."""
    return load_test(open_build(build_dir, format), url, list(concurrency), requests,
                     Path(inputs) if inputs else None, say)


def bench(build_dir: str | Path, options: "BenchOptions | None" = None, *, format: str | None = None, python: str | None = None) -> dict:
    """Run the build's artifact on this computer with the device runner; returns the run record
    (stored like a device run, device name "host"). `python` defaults to the one running edgekit."""
    return bench_host(open_build(build_dir, format), options or BenchOptions(), python or sys.executable)


def report(build_dir: str | Path, *, html: bool = True) -> dict:
    """Gather the build's report data (manifest + device runs); write BUILD/report.html unless html=False."""

    data = build_report(build_dir)
    if html:
        data["html"] = str(write_html(build_dir, data))
    return data


def _str_path(value: str | Path | None) -> str | None:
    return str(Path(value).expanduser().resolve()) if value is not None else None


__all__ += ["deploy", "stop_serving", "serve", "bench", "bench_serve", "report", "ServiceOptions", "Settings"]


# --- distill ----------------------------------------------------------------------------------


def distill(source: str | Path | ModelSpec, target: str = "rpi4", stages=None, *, student: ModelSpec | None = None,
            out: str | Path | None = None, progress: bool = False) -> dict:
    """Train a student from the teacher (`source`, with its weights); returns the record.

    `stages`: a StageOptions with `distill` set (a DistillConfig; `nproc` > 1 runs it under DDP via
    torchrun) and, without a `student`, `prune` and/or `depth` (the student is the teacher pruned,
    channel rounding from `target`, or with blocks dropped). `student`: another model's spec
    (`edgekit.api.source(model=...)`). The same stage chain as `build` runs (edgekit/stages/chain.py).
    Writes OUT/float_model.pt (+ .pt2) and OUT/distill.json, whole or not at all; OUT defaults to
    build/<name>-distilled/.
    """

    spec = _spec(source)
    stages = stages or StageOptions()
    if stages.distill is None:
        raise UsageError("nothing to distill: the stages have no distill step", hint="pass StageOptions(distill=DistillConfig())")
    cut = stages.prune is not None or stages.depth is not None
    if (student is None) == (not cut):
        raise UsageError("give the student: --student MODULE:FACTORY, or --prune RATIO / --depth KEEP to distill into "
                         "the pruned teacher")
    stages.check()
    tgt = load_target(target)
    chain = stage_chain.plan(stages, tgt)
    steps = Steps(show=progress)
    loaded = LoadedModel.load(spec, warn=lambda message: None)  # the teacher; its eval data scores the student
    stage_chain.check(chain, spec, loaded.evaluation.labels is not None)
    out_dir = Path(out) if out else DEFAULT_BUILD_ROOT / f"{spec.name}-distilled"
    with staged_build_dir(out_dir, warn=steps.console_warning) as stage:
        start = None
        if student is not None:
            import torch

            # The user's factory draws the student's first weights: seeded, so that a distill run is
            # reproducible (its accuracy moved by up to 8 points between runs of the same command).
            torch.manual_seed(stages.distill.seed)
            start = build_module(student)
        ctx = stage_chain.StageContext(loaded, steps, stages.nproc, student_spec=student)
        trained = stage_chain.run(chain, ctx, stage, start=start)
        distilled = [r for r in steps.records if r["stage"] == "distill"][-1]  # the last: after every cut
        record = {**distilled["result"], "teacher": {**count(loaded.model, loaded.example), "factory": spec.factory},
                  "student": {**count(trained, loaded.example),
                              "factory": student.factory if student else _cut_name(spec.factory, stages)},
                  "seconds": distilled["seconds"], "steps": steps.records, "out": str(out_dir),
                  "files": {"model": stage_chain.FLOAT_MODEL, "program": stage_chain.FLOAT_PROGRAM}}
        write_json_atomic(stage / "distill.json", record)
    return record


def _cut_name(factory: str, stages) -> str:
    """'nets:big pruned 0.5, keeping 0.5 of its blocks': what the student is, made from the teacher."""
    cut = [f"pruned {stages.prune.ratio:g}"] if stages.prune is not None and stages.prune.ratio is not None else []
    cut += [f"keeping {stages.depth.keep:g} of its blocks"] if stages.depth is not None else []
    return f"{factory} {', '.join(cut) or 'pruned'}"


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

    options = ValidateOptions(checks=tuple(checks) if checks else CHECKS, target=target, formats=tuple(formats),
                              app=str(app) if app else None, runs=runs, warmup=warmup, max_samples=max_samples,
                              fail_on_lint=fail_on_lint, emulate=emulate)
    return run_validate(build_dir, options, say or (lambda line: None))


__all__ += ["validate"]


# --- the numeric debugger -----------------------------------------------------------------------


def debug(build_dir: str | Path, *, format: str | None = None, app: str | Path | None = None, samples: int = 16,
          baseline: str | None = None, top: int = 8) -> dict:
    """Where a build's int8 artifact departs from float, layer by layer (edgekit/debug.py); the result
    is also kept in the manifest under `numeric_debug`. `baseline="tutorial"` adds the format's stock
    quantizer's SQNR per layer (PT2E formats). Static int8 .pte, .tflite and .onnx."""
    from edgekit.debug import debug_build

    return debug_build(build_dir, fmt=format, app=str(app) if app else None, samples=samples, baseline=baseline,
                       top=top)


__all__ += ["debug"]


# --- the emulated board -------------------------------------------------------------------------


def emulator_build(*, mirror: str | None = None, rebuild: bool = False, progress: bool = True) -> dict:
    """Build (or restore from the cache) the arm64 rootfs with every format's guest runtime, the native
    ExecuTorch runner and the qemu plugin; returns the build record (`emulator_status()`)."""
    guest_wheels = {name: version for fmt in all_formats() for name, version in fmt.GUEST_WHEELS.items()}
    # the server (deploy --serve), and what a text-generation build's server adds; host versions
    guest_wheels.update({name: None for name in (*STACK_WITH_DEPENDENCIES, *GENERATION_PACKAGES)})
    return build_emulator(EmulatorPaths.default(), Steps(show=progress), guest_wheels, mirror=mirror,
                          rebuild=rebuild)


def emulator_status() -> dict:
    """What the emulator was built with, and where (UsageError, exit 2, when it is not built)."""
    return require_ready(EmulatorPaths.default())


@contextmanager
def emulator_board(target: str = "rpi4", *, port: int = 2222, authorized_key: str, state: str | Path | None = None):
    """The emulated board's own arm64 sshd on 127.0.0.1:`port` while the block runs (a device for deploy).

    `authorized_key`: the public key text allowed to log in as root. Yields the running Board."""
    paths = EmulatorPaths.default()
    require_ready(paths)
    cpu = qemu_cpu_of(load_target(target))
    with tempfile.TemporaryDirectory(prefix="edgekit-board-") as tmp:
        with Board(paths, cpu, Path(state or tmp), port, authorized_key) as board:
            yield board


__all__ += ["emulator_build", "emulator_status", "emulator_board"]
