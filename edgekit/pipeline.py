"""The build: load -> (per format) quantize -> export -> validate -> manifest.json.

Each stage is timed and recorded in the manifest; the build dir appears only
when every stage succeeded (see builddir.py). A quality gate that fails
(`--max-accuracy-drop`) still leaves the finished build dir with the best
result, then exits 3 with the reason.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit.app import ModelSpec, build_module
from edgekit.backends import FORMATS, get_backend
from edgekit.backends.base import QuantConfig, check_supported
from edgekit.builddir import staged_build_dir
from edgekit.compare import GATES, Gate, all_outputs, arithmetic, compare_runs, is_class_scores, summary
from edgekit.data import Dataset, batches, check_labels, example_inputs, load_npz, random_dataset
from edgekit.errors import BuildGateFailed, FormatUnsupported, UsageError
from edgekit.manifest import MANIFEST, SCHEMA_VERSION, read_manifest, sha256_bytes, sha256_file, versions, write_json_atomic
from edgekit.progress import Steps
from edgekit.target import Target

# With no calibration file, this many random samples stand in (and the build warns).
RANDOM_CALIB_SAMPLES = 32


@dataclass(frozen=True)
class BuildOptions:
    formats: tuple[str, ...] = ()  # empty: the target's preferred format
    quant: QuantConfig = field(default_factory=QuantConfig)
    calib_samples: int | None = None
    max_accuracy_drop: float | None = None  # points; None: no gate
    min_cosine: float | None = None  # None: the gate's default for the arithmetic (compare.GATES)
    min_agreement: float | None = None  # percent; None: the default
    task: str = "auto"  # which outputs are class scores (compare.TASKS)
    fallback: bool = True  # keep sensitive layers float to meet max_accuracy_drop
    sensitivity: bool = False  # rank layers and store the table
    stages: object = None  # edgekit.stages.run.StageOptions: prune/distill between load and quantize


@dataclass
class _Context:
    """What every format's build reads: the float model, its data and where to write."""

    spec: ModelSpec
    model: object
    example: tuple
    calib: Dataset
    evaluation: Dataset
    held_out: bool  # False: the comparison runs on the calibration inputs (no --eval given)
    float_outputs: list  # [batch][output] numpy arrays
    stage: Path
    steps: Steps
    gate: Gate
    task: str


def resolve_formats(requested: tuple[str, ...], target: Target) -> tuple[str, ...]:
    """'all' means every format, the target's preferred one first (it becomes the primary)."""
    if not requested:
        return (target.format,)
    if "all" in requested:
        return (target.format, *[f for f in FORMATS if f != target.format])
    return tuple(dict.fromkeys(requested))


def run_build(spec: ModelSpec, target: Target, out: Path, steps: Steps, options: BuildOptions = BuildOptions()) -> dict:
    formats = resolve_formats(options.formats, target)
    cfg = dataclasses.replace(options.quant, input_names=tuple(s.name for s in spec.inputs))
    backends = [get_backend(f) for f in formats]
    for backend in backends:  # refuse what can't be done before any work
        check_supported(backend, cfg, target)
    gate = quality_gate(options, cfg)
    with steps.step("load", {"factory": spec.factory, "weights": _str(spec.weights)}, "load model") as rec:
        model = build_module(spec)
        example = example_inputs(spec.inputs)
        _check_accepts(model, example, spec)
        float_bytes, rec["output"] = _state_dict_size_and_digest(model)
        calib, evaluation, held_out = _load_data(spec, steps, options.calib_samples)
        if options.max_accuracy_drop is not None and evaluation.labels is None:
            raise UsageError("--max-accuracy-drop needs labelled evaluation data",
                             hint="pass --eval eval.npz with the inputs and labels y; without labels the gate "
                             "judges agreement with the float model (--min-cosine, --min-agreement)")
        float_outputs = _float_outputs(model, evaluation, spec)
        _check_finite(float_outputs, spec, evaluation)
        _check_labels_fit(evaluation, float_outputs, options.task)
    gate_failures, skipped = [], {}
    with staged_build_dir(out, warn=steps.console_warning) as stage:
        if options.stages is not None and options.stages.any:
            from edgekit.stages.run import apply_stages

            # Quantization, export and parity all use the transformed model from here on.
            model = apply_stages(model, spec, example, evaluation, steps, options.stages, stage)
            float_outputs = _float_outputs(model, evaluation, spec)
        ctx = _Context(spec, model, example, calib, evaluation, held_out, float_outputs, stage, steps, gate, options.task)
        ranking = None
        if options.sensitivity:
            ranking = _sensitivity(ctx, cfg)
        records = {}
        for backend in backends:
            try:
                record = _build_format(ctx, backend, cfg)
            except FormatUnsupported as e:
                if "all" not in options.formats:
                    raise
                # `--format all` means every format that can take this model: the others are built.
                skipped[backend.FORMAT] = {"error": e.message, "hint": e.hint}
                steps.warn(f"{backend.FORMAT} skipped: {e.message}")
                continue
            if _over_budget(record, options) and options.fallback:
                ranking = ranking or _sensitivity(ctx, cfg)
                record = _fall_back(ctx, backend, cfg, ranking, options.max_accuracy_drop, record)
            if options.stages is not None and options.stages.sparsity is not None:
                from edgekit.stages.sparsity import add_compressed_size

                add_compressed_size(record, stage)  # zeros only pay off compressed: show it
            if not record["gate"]["passed"]:
                kept = len(record.get("fallback", {}).get("float_layers", []))
                tail = f" (even with {kept} layer(s) kept float)" if kept else ""
                gate_failures += [f"{record['artifact']['file']}: {m}{tail}" for m in record["gate"]["failures"]]
            records[backend.FORMAT] = record
        if not records:
            first = next(iter(skipped.values()))
            raise UsageError("no format could take this model: " + "; ".join(f"{f}: {r['error']}" for f, r in skipped.items()),
                             hint=first["hint"])
        manifest = _manifest(spec, target, records, float_bytes, ranking, steps, options, gate, skipped)
        manifest.update(_lint_and_predict(ctx, records, target))
        write_json_atomic(stage / MANIFEST, _public(manifest))
    manifest = read_manifest(out)  # as written, with what the swap added (device runs kept from before)
    if gate_failures:
        raise BuildGateFailed("quality gate failed: " + "; ".join(gate_failures), _gate_hint(records, out), manifest)
    return manifest


def quality_gate(options: BuildOptions, cfg: QuantConfig) -> Gate:
    """The gate every artifact of this build must pass: the arithmetic's defaults, the user's thresholds over them."""
    return GATES[arithmetic(cfg.scheme)].with_overrides(
        min_cosine=options.min_cosine, min_agreement=options.min_agreement, max_accuracy_drop=options.max_accuracy_drop)


def _gate_hint(records: dict, out: Path) -> str:
    passed = [r["artifact"]["file"] for r in records.values() if r["gate"]["passed"]]
    tries = ["calibrate on more real samples (--calib, --calib-samples)",
             "another calibration (--calibration)",
             "keep the layers that carry the error in float (--max-accuracy-drop with labelled --eval)"]
    if passed:
        tries.insert(0, f"ship {', '.join(passed)}, which passed")
    else:
        tries.append("another format (--format onnx, --format executorch)")
    return (f"the build is kept in {out} with every artifact marked; try: " + "; ".join(tries) +
            "; thresholds: --min-cosine, --min-agreement")


def _check_finite(float_outputs: list, spec: ModelSpec, data: Dataset) -> None:
    """A float model that computes NaN or infinity on real inputs has nothing to compare against."""
    for b, batch in enumerate(float_outputs):
        for i, out in enumerate(batch):
            if not np.isfinite(out).all():
                raise UsageError(f"model '{spec.factory}' output {i} holds non-finite values on sample {b} of "
                                 f"'{data.source}'", hint="check the weights and the inputs' scale; edgekit needs a "
                                 "float model that computes finite outputs on its data")


def _check_labels_fit(evaluation: Dataset, float_outputs: list, task: str) -> None:
    """Labels index the first output's class scores: check them once the output's width is known."""
    first = float_outputs[0][0]
    if evaluation.labels is not None and is_class_scores(first.shape, task):
        check_labels(evaluation, first.shape[-1], evaluation.origin)


def _str(path: Path | None) -> str | None:
    return str(path) if path else None


# ---------------------------------------------------------------- loading


def _check_accepts(model, example: tuple, spec: ModelSpec) -> None:
    """Run the float model once so a wrong input shape fails here, clearly."""
    import torch

    try:
        with torch.no_grad():
            model(*example)
    except Exception as e:
        shapes = ", ".join(f"{s.name}: {s.shape} {s.dtype}" for s in spec.inputs)
        raise UsageError(
            f"model '{spec.factory}' rejected inputs ({shapes}): {type(e).__name__}: {str(e).splitlines()[0]}",
            hint="pass the shape the model takes, batch first: --input-shape 1,3,32,32 "
            "(or --input NAME:SHAPE:DTYPE per input, or fix [[inputs]] in edgekit.toml)",
        ) from None


def _state_dict_size_and_digest(model) -> tuple[int, str]:
    """Bytes of the float state_dict as torch.save writes it: the size users compare against."""
    import torch

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    data = buf.getvalue()
    return len(data), sha256_bytes(data)


def _load_data(spec: ModelSpec, steps: Steps, calib_samples: int | None) -> tuple[Dataset, Dataset, bool]:
    """(calibration, evaluation, held_out): without --eval the artifact is compared with the
    float model on the calibration inputs, which are then not held out (and the build says so)."""
    if spec.calib:
        calib = load_npz(spec.calib, spec.inputs, spec.origin("calib"), need_labels=False).take(calib_samples)
    else:
        calib = random_dataset(spec.inputs, calib_samples or RANDOM_CALIB_SAMPLES)
        steps.warn(
            "no calibration data: calibrating on RANDOM inputs. int8 ranges will not match real data "
            "and accuracy may collapse; pass --calib calib.npz with real samples"
        )
    if spec.eval:
        return calib, load_npz(spec.eval, spec.inputs, spec.origin("eval"), need_labels=False), True
    steps.warn(
        "no evaluation data: the artifact is compared with the float model on the calibration inputs "
        "(not held out); pass --eval eval.npz (real inputs, labels y optional) to judge it on unseen data"
    )
    return calib, calib, False


def _float_outputs(model, data: Dataset, spec: ModelSpec) -> list[list[np.ndarray]]:
    """Every output of the float model, per batch of `data`."""
    import torch

    with torch.no_grad():
        return [all_outputs(model(*b)) for b in batches(data, spec.inputs)]


# ---------------------------------------------------------------- one format


def _build_format(ctx: _Context, backend, cfg: QuantConfig) -> dict:
    """quantize -> export -> validate for one format; returns its manifest record."""
    steps, spec = ctx.steps, ctx.spec
    fmt = {"format": backend.FORMAT}
    scheme = "int8" if cfg.scheme != "fp16" else "fp16"
    with steps.step("quantize", {**fmt, **cfg.to_json(backend), "calibration_data": ctx.calib.source,
                                 "samples": len(ctx.calib)}, f"quantize {cfg.scheme} {scheme} ({backend.BACKEND})"):
        total = len(ctx.calib) // spec.inputs[0].batch
        calib_iter = steps.track(batches(ctx.calib, spec.inputs), total, "calibrating")
        qmodel = backend.quantize(ctx.model, ctx.example, calib_iter, cfg)
    artifact = ctx.stage / f"model{backend.SUFFIX}"
    with steps.step("export", fmt, f"export {artifact.name}") as rec:
        lowering = _export_atomic(backend, qmodel, ctx.example, artifact)
        rec["output"] = digest = sha256_file(artifact)
    if lowering.get("xnnpack_delegated") is False:
        steps.warn(f"nothing was delegated to {backend.BACKEND}: the artifact runs on portable CPU kernels")
    with steps.step("validate", {**fmt, "data": ctx.evaluation.source, "samples": len(ctx.evaluation)},
                    f"validate {artifact.name} in {backend.BACKEND}"):
        runner = _validation_runner(backend, artifact)
        outputs = _artifact_outputs(runner, ctx)
        result = compare_runs(ctx.float_outputs, outputs, ctx.gate, arithmetic(cfg.scheme), ctx.evaluation.labels,
                              task=ctx.task)
        metrics = {**summary(result), "data": _data_record(ctx), "outputs": [_row(o) for o in result["outputs"]]}
        if getattr(runner, "exact", False):
            metrics["validated_as"] = ("reference QDQ arithmetic: this x86 host lacks VNNI, where onnxruntime's "
                                       "fused int8 kernels saturate; ARM kernels do not")
    first = np.nan_to_num(np.concatenate([b[0] for b in outputs]))
    return {
        "format": backend.FORMAT,
        "backend": backend.BACKEND,
        "quantization": cfg.to_json(backend),
        "artifact": {"file": artifact.name, "sha256": digest, "bytes": artifact.stat().st_size},
        "metrics": metrics,
        "gate": {"passed": result["ok"], "failures": result["failures"]},
        "lowering": lowering,
        # for cross-format agreement; not written
        "_predictions": first.argmax(axis=-1) if is_class_scores(first.shape, ctx.task) else None,
    }


def _data_record(ctx: _Context) -> dict:
    """What the artifact was judged on, said plainly: held-out data, or the calibration inputs."""
    return {"source": ctx.evaluation.source, "samples": len(ctx.evaluation), "held_out": ctx.held_out,
            "labels": ctx.evaluation.labels is not None}


def _row(output: dict) -> dict:
    """One output's comparison for the manifest (its failures are in the gate record)."""
    return {k: v for k, v in output.items() if k != "failures"}


def _validation_runner(backend, artifact: Path):
    """The artifact in its runtime, as the device would compute it (a backend may
    know its host kernels differ from the device's: see onnx_qdq)."""
    load = getattr(backend, "load_for_validation", backend.load)
    return load(artifact)


def _export_atomic(backend, qmodel, example: tuple, artifact: Path) -> dict:
    """Write under a temp name, rename when complete."""
    tmp = artifact.with_name(f".{artifact.name}.tmp")
    try:
        info = backend.export(qmodel, example, tmp)
        os.replace(tmp, artifact)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return info


def _artifact_outputs(runner, ctx: _Context) -> list[list[np.ndarray]]:
    total = len(ctx.evaluation) // ctx.spec.inputs[0].batch
    batch_iter = ctx.steps.track(batches(ctx.evaluation, ctx.spec.inputs), total, "evaluating")
    return [[np.asarray(o) for o in runner.run([t.numpy() for t in b])] for b in batch_iter]


def _lint_and_predict(ctx: _Context, records: dict, target: Target) -> dict:
    """The cheap part of `edgekit validate` (lint + cost model) on every build, recorded under
    `validation` (with its own seconds, not as a build step); the resource run and profiling
    stay in `edgekit validate`. A failure here never fails the build: it warns."""
    from edgekit.emulate.validate import build_checks

    try:
        return build_checks(ctx.model, ctx.example, ctx.stage, _public(records), target)
    except Exception as e:  # noqa: BLE001 - an analysis bug must not cost the user the build
        ctx.steps.warn(f"lint/latency prediction skipped ({type(e).__name__}: {e}); "
                       "please report it; `edgekit validate` retries it")
        return {}


# ---------------------------------------------------------------- accuracy budget


def _drop(record: dict) -> float | None:
    m = record["metrics"]
    if m["accuracy_float"] is None:
        return None
    return round(m["accuracy_float"] - m["accuracy_artifact"], 2)


def _over_budget(record: dict, options: BuildOptions) -> bool:
    drop = _drop(record)
    return options.max_accuracy_drop is not None and drop is not None and drop > options.max_accuracy_drop


def _sensitivity(ctx: _Context, cfg: QuantConfig) -> list[dict]:
    from edgekit.sensitivity import rank_layers

    with ctx.steps.step("sensitivity", {"method": "pt2e-simulation", "layers": "Conv/Linear"}, "rank layer sensitivity"):
        return rank_layers(ctx.model, ctx.example, ctx.calib, ctx.evaluation, ctx.spec.inputs, cfg, ctx.steps)


def _fall_back(ctx: _Context, backend, cfg: QuantConfig, ranking: list[dict], budget: float, first: dict) -> dict:
    """Keep the most sensitive layers float, one more at a time, until the drop fits the budget.

    Returns the record that met the budget, or the best one tried.
    """
    tries = [{"float_layers": [], "accuracy_drop": _drop(first)}]
    best = last = first
    float_layers: list[str] = []
    for row in ranking:
        float_layers.append(row["layer"])
        ctx.steps.console.print(f"  accuracy drop over budget: keeping [bold]{row['layer']}[/] in float")
        last = _build_format(ctx, backend, dataclasses.replace(cfg, skip_layers=tuple(float_layers)))
        tries.append({"float_layers": list(float_layers), "accuracy_drop": _drop(last)})
        if _drop(last) < _drop(best):
            best = last
        if _drop(last) <= budget:
            break
    if best is not last:
        # Every try writes the same file: put the best one back on disk.
        best = _build_format(ctx, backend, dataclasses.replace(cfg, skip_layers=tuple(best["quantization"].get("float_layers", []))))
    reasons = {r["layer"]: f"output SQNR {r['output_sqnr_db']} dB when quantized alone" for r in ranking}
    kept = best["quantization"].get("float_layers", [])
    best["fallback"] = {
        "budget_points": budget,
        "float_layers": [{"layer": name, "why": reasons[name]} for name in kept],
        "tries": tries,
        "met": _drop(best) <= budget,
    }
    return best


# ---------------------------------------------------------------- manifest


def _cross_agreement(records: dict) -> dict:
    """Top-1 agreement (percent) between every pair of formats on the same samples (class scores only)."""
    pairs = {}
    for (a, ra), (b, rb) in itertools.combinations(records.items(), 2):
        if ra["_predictions"] is not None and rb["_predictions"] is not None:
            pairs[f"{a}~{b}"] = round(100.0 * float(np.mean(ra["_predictions"] == rb["_predictions"])), 2)
    return pairs


def _manifest(spec, target: Target, records: dict, float_bytes: int, ranking, steps: Steps, options: BuildOptions,
              gate: Gate, skipped: dict) -> dict:
    primary = next(iter(records.values()))
    doc = {
        "schema": SCHEMA_VERSION,
        "name": spec.name,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "target": target.name,
        "target_profile": _target_json(target),
        # The primary format's record is repeated at the top level: tools that
        # handle one artifact read these keys; `formats` has them all.
        "format": primary["format"],
        "backend": primary["backend"],
        "quantization": primary["quantization"],
        "model": spec.to_json(),
        "artifact": primary["artifact"],
        "float": {"bytes": float_bytes},
        "metrics": primary["metrics"],
        "lowering": primary["lowering"],
        "formats": records,
        "cross_agreement": _cross_agreement(records),
        "steps": steps.records,
        "warnings": steps.warnings,
        "versions": versions(),
    }
    # The gate every artifact was judged by (validate re-applies it); `fallback`: whether layers
    # were allowed to stay float to meet max_accuracy_drop.
    doc["gate"] = {**gate.to_json(), "task": options.task, "fallback": options.fallback}
    if skipped:
        doc["skipped_formats"] = skipped
    if ranking is not None:
        doc["sensitivity"] = ranking
    return doc


def _public(doc):
    """The manifest without in-memory helpers (keys starting with '_')."""
    if isinstance(doc, dict):
        return {k: _public(v) for k, v in doc.items() if not k.startswith("_")}
    if isinstance(doc, list):
        return [_public(v) for v in doc]
    return doc


def _target_json(target: Target) -> dict:
    doc = dataclasses.asdict(target)
    doc["path"] = str(target.path)
    return doc
