"""`edgekit validate BUILD_DIR`: prove on the workstation that a build is right, fits and how fast it may run.

Checks, in order (each optional, all by default):

    integrity  every artifact's sha256 against the manifest (always; a mismatch is exit 2)
    parity     artifact vs float model on the evaluation data, per-format tolerances (parity.py)
    lint       ops off the fast path of the target runtime, with advice (lint.py)
    cost       predicted latency range on the target (cost.py, docs/cost_model.md)
    resources  a child process held to the target's cores and RAM: peak memory, fit,
               and host latency via the device runner (resources.py)
    profile    per-op host times from the runtime's own profiler (profile.py)

Results are merged into manifest.json (`validation`, and `prediction` for the
primary format) atomically, and the host run is recorded like a device run so
the report shows its latency and per-op table. A failed check raises GateError
(exit 3) after the results are written.

`build_checks()` is the cheap subset (lint + cost) every `edgekit build` runs at its end.

`--emulate` adds one more: each artifact on the target's emulated ARM core
(qemu-user, `make emulator`), its outputs against the host run's, and its guest
instruction count (emulated.py, edgekit/emulator/).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.compare import GATES, Gate, all_outputs, arithmetic, compare_runs
from edgekit.deploy.records import (
    add_to_manifest,
    open_build,
    summarize_run,
    timestamp,
    write_run,
)
from edgekit.emulator.check import emulated_core
from edgekit.errors import GateError, UsageError
from edgekit.formats import for_artifact, get_format
from edgekit.manifest import (
    MANIFEST,
    format_records,
    inside,
    read_manifest,
    refuse_text_generation,
    sha256_file,
    update_manifest,
)
from edgekit.model.app import ModelSpec, build_module, load_app
from edgekit.model.data import batches, example_inputs, load_npz, random_dataset
from edgekit.model.saved import load_transformed
from edgekit.model.spec import InputSpec
from edgekit.target import load_target
from edgekit.validate.cost import predict
from edgekit.validate.emulated import describe, emulate_artifact
from edgekit.validate.graph import model_work
from edgekit.validate.lint import graph_names, lint
from edgekit.validate.profile import profile
from edgekit.validate.resources import measure, memory_plan_line, verdict

CHECKS = ("parity", "lint", "cost", "resources", "profile")
BUILD_CHECKS = ("lint", "cost")


@dataclass(frozen=True)
class ValidateOptions:
    checks: tuple[str, ...] = CHECKS
    target: str | None = None  # validate against another target's profile (e.g. "will it fit a pi-zero2?")
    formats: tuple[str, ...] = ()  # default: every format of the build
    app: str | None = None  # the app dir, when the manifest's model source moved
    runs: int = 20
    warmup: int = 3
    max_samples: int | None = None  # parity on the first N evaluation samples
    fail_on_lint: bool = False
    emulate: bool = False  # also run each artifact on the target's emulated ARM core


# ---------------------------------------------------------------- integrity


def read_verified(build_dir: Path) -> dict:
    """The manifest, after checking every artifact it names against its sha256 (exit 2 otherwise).
    read_manifest has already refused a wrong shape and any path leaving the build dir."""
    path = build_dir / MANIFEST
    manifest = read_manifest(build_dir)
    refuse_text_generation(manifest, build_dir)
    for fmt, record in format_records(manifest).items():
        art = record["artifact"]
        file = inside(build_dir, art["file"], f"{path}: the {fmt} artifact")
        if not file.is_file():
            raise UsageError(f"{file} is missing ({fmt} artifact named in {path})", hint="copy the whole build directory, or rebuild")
        found = sha256_file(file)
        if found != art["sha256"]:
            raise UsageError(
                f"{file} does not match its sha256 in {path}: expected {art['sha256'][:16]}…, found {found[:16]}… "
                "(the file was changed, corrupted in transfer or swapped after the build)",
                hint="copy the build again from where it was made, or rebuild with `edgekit build`; never edit an artifact")
    return manifest


# ---------------------------------------------------------------- the float model and its data


def _spec(manifest: dict, app: str | None, build_dir: Path | None = None):
    """The build's model spec, rebuilt from the manifest (or from `app` when the source moved).

    The float model is the user's code: from `--app`, or the app the manifest records. Code inside
    the build directory itself is never run: a build dir may come from someone else."""

    model = manifest["model"]
    source = Path(app) / "edgekit.toml" if app else Path(model.get("source") or "")
    if not app and build_dir is not None and source.name and source.resolve().is_relative_to(Path(build_dir).resolve()):
        raise UsageError(f"the manifest names model code inside the build directory ({source}); edgekit does not run "
                         "code that comes with a build", hint="pass --app APP_DIR with your own copy of the app")
    if source.name == "edgekit.toml":
        if not source.is_file():
            source = _app_file_near(model) or source
        if not source.is_file():
            raise UsageError(f"the build's app file {source} is not here (the build was made elsewhere)",
                             hint="pass --app APP_DIR (the directory with edgekit.toml), or skip parity: "
                             "--check lint --check cost --check resources --check profile")
        spec = load_app(source.parent)
    else:
        inputs = tuple(InputSpec(i["name"], tuple(i["shape"]), i["dtype"]) for i in model["inputs"])
        spec = ModelSpec(name=model["name"], factory=model["factory"], inputs=inputs)
    data = model.get("data") or {}
    paths = {"weights": model.get("weights"), "calib": data.get("calib"), "eval": data.get("eval")}
    return spec.with_overrides(**{k: Path(v) for k, v in paths.items() if v and Path(v).is_file()})


def _app_file_near(model: dict) -> Path | None:
    """The app's edgekit.toml beside the (absolute) weights or data paths the manifest recorded:
    `source` is as the user typed it, often relative to the directory the build ran in."""
    data = model.get("data") or {}
    for p in (model.get("weights"), *data.values()):
        if p and (Path(p).parent / "edgekit.toml").is_file():
            return Path(p).parent / "edgekit.toml"
    return None


class FloatReference:
    """The float model, its example inputs and evaluation batches, built once on first use."""

    # A build with compression stages (prune, distill, low-rank) keeps the transformed float model
    # beside the artifact (edgekit/stages/chain.py): that, not the user's original, is the reference.
    # Its weights_only-safe form: the factory's model, resized and loaded (never the .pt2 beside it,
    # which torch.export.load would unpickle from a build dir someone else may have made).
    TRANSFORMED = "float_model.pt"

    def __init__(self, manifest: dict, app: str | None, max_samples: int | None, build_dir: Path | None = None):
        self._manifest, self._app, self._max, self._dir = manifest, app, max_samples, build_dir
        self._loaded = None
        self._artifact: dict[str, list[list[np.ndarray]]] = {}  # per format: artifact_outputs

    def get(self):
        if self._loaded is None:
            spec = _spec(self._manifest, self._app, self._dir)
            model = build_module(spec)
            transformed = self._dir / self.TRANSFORMED if self._dir else None
            if transformed is not None and transformed.is_file():
                model = load_transformed(model, inside(self._dir, self.TRANSFORMED, "the transformed float model"))
            if spec.eval:
                data, source = load_npz(spec.eval, spec.inputs, "eval", need_labels=False), "evaluation data"
            elif spec.calib:
                data, source = (load_npz(spec.calib, spec.inputs, "calib", need_labels=False),
                                "calibration data (not held out: no eval set)")
            else:
                data, source = random_dataset(spec.inputs, 32), "random inputs (no data files)"
            data = data.take(self._max) if self._max else data
            self._loaded = (spec, model, example_inputs(spec.inputs), data, source)
        return self._loaded

    def artifact_outputs(self, fmt: str, artifact: Path) -> list[list[np.ndarray]]:
        """The artifact's outputs per batch in its host runtime, computed once per format
        (parity and the emulated comparison both use them)."""
        if fmt not in self._artifact:
            spec, _, _, data, _ = self.get()
            runner = get_format(fmt).load_for_validation(artifact)
            self._artifact[fmt] = [[np.asarray(o) for o in runner.run([t.numpy() for t in b])]
                                   for b in batches(data, spec.inputs)]
        return self._artifact[fmt]

    def float_outputs(self, flatten) -> list[list[np.ndarray]]:
        """The float model's outputs per batch, computed once for every format."""
        if getattr(self, "_float", None) is None:
            import torch

            spec, model, _, data, _ = self.get()
            # One intra-op thread: batches are single samples, and on a loaded 2-core host OpenMP's
            # spinning workers made each small conv ~100x slower (measured: 23 ms vs 0.2 ms).
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                with torch.no_grad():
                    self._float = [flatten(model(*b)) for b in batches(data, spec.inputs)]
            finally:
                torch.set_num_threads(threads)
        return self._float


# ---------------------------------------------------------------- checks per format


def _parity(artifact: Path, fmt: str, record: dict, ref: FloatReference, gate: dict | None) -> dict:
    """The artifact against the float model, judged by the gate the build recorded (its defaults
    for builds made before there was one): the same code and thresholds as the build's."""

    _, _, _, data, source = ref.get()
    float_out = ref.float_outputs(all_outputs)
    # The artifact runs after the float pass: a runtime's worker threads (XNNPACK's pool) running
    # beside torch's intra-op threads on a small host made each float conv ~100x slower.
    art_out = ref.artifact_outputs(fmt, artifact)
    kind = arithmetic((record.get("quantization") or {}).get("scheme", "static"))
    judged_by = Gate.from_json(gate) if gate and "min_cosine" in gate else GATES[kind].with_overrides(
        max_accuracy_drop=(gate or {}).get("max_accuracy_drop"))
    doc = compare_runs(float_out, art_out, judged_by, kind, data.labels, task=(gate or {}).get("task", "auto"))
    doc["data"] = source
    doc["gate"] = judged_by.to_json()
    first = doc["outputs"][0] if doc["outputs"] else {}
    if first.get("accuracy_float") is not None:
        doc["accuracy_drop"] = round(first["accuracy_float"] - first["accuracy_artifact"], 2)
    return doc


def _dtype(record: dict) -> str:
    scheme = (record.get("quantization") or {}).get("scheme", "static")
    return "fp32" if scheme == "fp16" else "int8"  # fp16 kernels: not calibrated, fp32 is the conservative bound


def format_checks(artifact: Path, record: dict, target, checks: tuple[str, ...], work: list[dict] | None) -> dict:
    """lint + cost for one artifact: what `build` runs too. `work`: the float graph's per-op rows."""

    out = {}
    if "lint" in checks or "cost" in checks:
        out["lint"] = lint(artifact, work)
    if "cost" in checks and work is not None:
        outside = graph_names(out["lint"].get("ops_outside") or [])
        fmt = for_artifact(artifact)
        if not fmt.OFF_FAST_PATH_IS_SCALAR:
            outside = set()  # float leftovers there still run on vectorized kernels
        out["prediction"] = predict(work, _dtype(record), target, outside, kernels=fmt.ARM_KERNELS)
    if "lint" not in checks:
        out.pop("lint", None)
    return out


def build_checks(model, example: tuple, build_dir: Path, records: dict, target) -> dict:
    """The cheap checks at the end of every build: {"validation": ...} for the manifest.

    Each format's prediction stays under validation.formats.<format>.prediction (the report
    shows every format's own); the top-level `prediction` is written by `edgekit validate`,
    and until it runs the report compares device runs with the primary format's from here.
    """
    import time


    start = time.perf_counter()
    work = [r.to_json() for r in model_work(model, example)]
    formats = {fmt: format_checks(build_dir / rec["artifact"]["file"], rec, target, BUILD_CHECKS, work)
               for fmt, rec in records.items()}
    return {"validation": {"time": _now(), "target": target.name, "checks": list(BUILD_CHECKS), "by": "build",
                           "formats": formats, "failures": [], "ok": True,
                           "seconds": round(time.perf_counter() - start, 3)}}


# ---------------------------------------------------------------- the command


def validate(build_dir: str | Path, options: ValidateOptions = ValidateOptions(), say=print) -> dict:
    build_dir = Path(build_dir)
    unknown = [c for c in options.checks if c not in CHECKS]
    if unknown:
        raise UsageError(f"--check {', '.join(unknown)}: no such check", hint=f"choose from: {', '.join(CHECKS)}")
    manifest = read_verified(build_dir)
    say(f"✓ sha256 of every artifact matches {MANIFEST}")
    target = load_target(options.target or manifest["target"])
    records = format_records(manifest)
    formats = options.formats or tuple(records)
    missing = [f for f in formats if f not in records]
    if missing:
        raise UsageError(f"--format {missing[0]}: this build has no such artifact", hint="choose from: " + ", ".join(records))
    ref = FloatReference(manifest, options.app, options.max_samples, build_dir)
    with contextlib.ExitStack() as stack:
        core = None
        if options.emulate:  # before the slow checks: a missing emulator is a usage error (exit 2)

            core = stack.enter_context(emulated_core(target))
        work = _work(ref) if "cost" in options.checks or "lint" in options.checks else None
        results, failures, host_runs = {}, [], {}
        for fmt in formats:
            res, failed = _check_format(build_dir, manifest, fmt, records[fmt], target, options, ref, work, say)
            if core is not None:
                failed += _emulate(core, build_dir / records[fmt]["artifact"]["file"], fmt, ref, options, res, say)
            results[fmt] = res
            failures += failed
            if res.get("resources", {}).get("ok"):
                host_runs[fmt] = res
    checks = list(options.checks) + (["emulate"] if options.emulate else [])
    doc = {"time": _now(), "target": target.name, "checks": checks, "by": "validate",
           "formats": results, "failures": failures, "ok": not failures}
    _merge(build_dir, manifest, doc, target)
    for fmt, res in host_runs.items():
        _record_host_run(build_dir, manifest, fmt, res, target)
    if failures:
        raise GateError("validation failed: " + "; ".join(failures),
                        hint=f"details in {build_dir / MANIFEST} under 'validation'")
    return doc


def _check_format(build_dir: Path, manifest: dict, fmt: str, rec: dict, target, options: ValidateOptions,
                  ref: FloatReference, work, say) -> tuple[dict, list[str]]:
    """Every requested check on one artifact; returns its results and the failure messages."""
    artifact = build_dir / rec["artifact"]["file"]
    failures = []
    res = format_checks(artifact, rec, target, options.checks, work)
    if "parity" in options.checks:
        res["parity"] = _parity(artifact, fmt, rec, ref, manifest.get("gate"))
        failures += [f"{fmt} parity: {m}" for m in res["parity"]["failures"]]
        say(_line(res["parity"]["ok"], f"{fmt}: parity on {res['parity']['samples']} samples ({res['parity']['data']})"))
    if "lint" in res:
        _say_lint(fmt, res["lint"], say)
        if res["lint"]["findings"] and options.fail_on_lint:
            failures.append(f"{fmt} lint: " + ", ".join(f"{f['op']} ({f['where']})" for f in res["lint"]["findings"]))
    if res.get("prediction"):
        p = res["prediction"]
        say(f"  {fmt}: predicted on {p['target']}: {p['low_ms']:.3g}–{p['high_ms']:.3g} ms "
            f"(point {p['latency_ms']:.3g} ms, {p['dtype']}, {p['threads']} threads, "
            f"{p.get('kernels') or 'XNNPACK'} kernels, cost model)")
    if "resources" in options.checks:
        res["resources"] = _resources(artifact, manifest, target, options)
        planned = (rec.get("lowering") or {}).get("planned_memory_bytes")  # recorded by the export
        if planned is not None:
            res["resources"]["planned_memory_bytes"] = planned
        why = verdict(res["resources"])
        if why:
            failures.append(f"{fmt} on {target.name}: {why}")
        _say_resources(fmt, res["resources"], why, target, say)
    if "profile" in options.checks:
        threads = min(target.threads, len(os.sched_getaffinity(0)))
        res["profile"] = profile(artifact, _one_batch(manifest), runs=options.runs, threads=threads)
        top = ", ".join(f"{o['name']} {o['ms']:.3g} ms" for o in res["profile"]["ops"][:3])
        say(f"  {fmt}: slowest ops on the host: {top or res['profile'].get('why')}")
    return res, failures


def _emulate(core, artifact: Path, fmt: str, ref: FloatReference, options: ValidateOptions, res: dict, say) -> list[str]:
    res["emulated"] = emulate_artifact(core, artifact, fmt, ref, options.max_samples)
    for line in describe(fmt, res["emulated"]):
        say(line)
    return [f"{fmt} emulated on {core.qemu_cpu}: {m}" for m in res["emulated"]["failures"]]


def _say_lint(fmt: str, doc: dict, say) -> None:
    ops = [f for f in doc["findings"] if f["op"] != "dynamic_shape"]
    dynamic = len(doc["findings"]) - len(ops)
    text = f"{fmt}: lint, {len(ops)} op type(s) off the {doc.get('fast_path', 'fast path')}"
    say(_line(not doc["findings"], text + (f", {dynamic} input(s) with a dynamic shape" if dynamic else "")))
    for f in doc["findings"]:
        say(f"    {f['op']} (x{f['count']}, {f['where']}): {f['advice']}")
    if doc.get("macs_fast_share") is not None:
        say(f"    {100 * doc['macs_fast_share']:.1f} % of MACs on the {doc['fast_path']}")


def _say_resources(fmt: str, r: dict, why: str | None, target, say) -> None:
    say(_line(not why, f"{fmt}: {'fits' if not why else 'does NOT fit'} {target.name} "
              f"({r['budget_mb']} MB for the model + runtime): " + (why or f"needs {r['needed_mb']} MB")))
    if r.get("latency"):
        lat = r["latency"]
        say(f"    host latency on {len(r['cores'])} core(s), {r['threads']} thread(s): p50 {lat['p50']} ms, "
            f"p90 {lat['p90']} ms, p99 {lat['p99']} ms, load {lat['load_ms']} ms (this computer, not the target)")
    if r.get("planned_memory_bytes") is not None:
        say("    " + memory_plan_line(r["planned_memory_bytes"]))


def _line(ok: bool, text: str) -> str:
    return f"{'✓' if ok else '✗'} {text}"


def _work(ref: FloatReference) -> list[dict] | None:
    try:
        _, model, example, _, _ = ref.get()
    except UsageError:
        return None  # no float model here: lint still runs, without MAC shares; no prediction
    return [r.to_json() for r in model_work(model, example)]


def _one_batch(manifest: dict) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = []
    for i in manifest["model"]["inputs"]:
        if i["dtype"].startswith("float"):
            out.append(rng.random(i["shape"], dtype=np.float32).astype(i["dtype"]))
        else:
            out.append(np.zeros(i["shape"], dtype=i["dtype"]))
    return out


def _resources(artifact: Path, manifest: dict, target, options: ValidateOptions) -> dict:
    return measure(artifact, manifest["model"]["inputs"], target, runs=options.runs, warmup=options.warmup)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _merge(build_dir: Path, manifest: dict, doc: dict, target) -> None:
    """validation + prediction into manifest.json, atomically, under the build's lock (deploys append runs)."""
    primary = manifest["format"]

    def merge(current: dict) -> None:
        _keep_earlier_checks(current.get("validation") or {}, doc)
        current["validation"] = doc
        pred = (doc["formats"].get(primary) or {}).get("prediction")
        if pred is not None and target.name == current.get("target"):
            current["prediction"] = pred  # the report compares it with runs on the build's target

    update_manifest(build_dir, merge)


def _keep_earlier_checks(previous: dict, doc: dict) -> None:
    """A validate that ran fewer checks (`--check parity`) keeps, per format, the results of the
    checks it did not redo from the last validation on the same target (the build's lint and
    prediction, which the report reads), and says where they came from under `kept`."""
    if previous.get("target") != doc["target"]:
        return
    kept = {}
    for fmt, checks in (previous.get("formats") or {}).items():
        earlier = {k: v for k, v in checks.items() if k not in (doc["formats"].get(fmt) or {})}
        if earlier:
            doc["formats"][fmt] = {**earlier, **(doc["formats"].get(fmt) or {})}
            kept[fmt] = sorted(earlier)
    if kept:
        doc["kept"] = {"by": previous.get("by", "validate"), "time": previous.get("time"), "checks": kept}


def _record_host_run(build_dir: Path, manifest: dict, fmt: str, res: dict, target) -> None:
    """The resource run's latency (and profile) as a device run named host-validate, so reports show it."""

    build = open_build(build_dir, fmt)
    run = dict(res["resources"]["runner"])
    run["ops"] = (res.get("profile") or {}).get("ops") or []
    record = {
        "ok": True, "stage": "done", "kind": "bench", "device": "host-validate", "transport": "local",
        "address": None, "time": _now(), "stamp": timestamp(),
        "build": {"name": manifest["name"], "target": manifest["target"], "format": fmt,
                  "artifact": build.artifact.name, "sha256": build.sha256},
        "runner": "python", "arch": {"device": platform.machine(), "target": target.arch,
                                     "mismatch": platform.machine() != target.arch, "allowed": True},
        "remote_dir": None, "pushed": [], "check": None, "bench": run,
        "settings": {"validate": True, "cores": res["resources"]["cores"], "threads": res["resources"]["threads"],
                     "ram_limit_mb": res["resources"]["budget_mb"]},
        "warnings": ["measured on the host inside the target's core and memory limits: not the target's latency"],
        "error": None, "hint": None, "detail": None,
    }
    file = write_run(build, "host-validate", record)
    add_to_manifest(build, summarize_run(record, file, build_dir))
