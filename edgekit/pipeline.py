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
from edgekit.data import Dataset, batches, example_inputs, load_npz, random_dataset
from edgekit.errors import GateError, UsageError
from edgekit.manifest import MANIFEST, SCHEMA_VERSION, sha256_bytes, sha256_file, versions, write_json_atomic
from edgekit.metrics import compare
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
    float_outputs: list
    stage: Path
    steps: Steps


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
    with steps.step("load", {"factory": spec.factory, "weights": _str(spec.weights)}, "load model") as rec:
        model = build_module(spec)
        example = example_inputs(spec.inputs)
        _check_accepts(model, example, spec)
        float_bytes, rec["output"] = _state_dict_size_and_digest(model)
        calib, evaluation = _load_data(spec, steps, options.calib_samples)
        if options.max_accuracy_drop is not None and evaluation.labels is None:
            raise UsageError("--max-accuracy-drop needs labelled evaluation data", hint="pass --eval eval.npz with x and y")
        float_outputs = _float_outputs(model, evaluation, spec)
    gate_failures = []
    with staged_build_dir(out) as stage:
        if options.stages is not None and options.stages.any:
            from edgekit.stages.run import apply_stages

            # Quantization, export and parity all use the transformed model from here on.
            model = apply_stages(model, spec, example, evaluation, steps, options.stages, stage)
            float_outputs = _float_outputs(model, evaluation, spec)
        ctx = _Context(spec, model, example, calib, evaluation, float_outputs, stage, steps)
        ranking = None
        if options.sensitivity:
            ranking = _sensitivity(ctx, cfg)
        records = {}
        for backend in backends:
            record = _build_format(ctx, backend, cfg)
            if _over_budget(record, options) and options.fallback:
                ranking = ranking or _sensitivity(ctx, cfg)
                record = _fall_back(ctx, backend, cfg, ranking, options.max_accuracy_drop, record)
            if options.stages is not None and options.stages.sparsity is not None:
                from edgekit.stages.sparsity import add_compressed_size

                add_compressed_size(record, stage)  # zeros only pay off compressed: show it
            if _over_budget(record, options):
                gate_failures.append(_gate_message(record, options.max_accuracy_drop))
            records[backend.FORMAT] = record
        manifest = _manifest(spec, target, records, float_bytes, ranking, steps, options)
        manifest.update(_lint_and_predict(ctx, records, target))
        write_json_atomic(stage / MANIFEST, _public(manifest))
    if gate_failures:
        raise GateError("; ".join(gate_failures), hint=f"the best result is kept in {out}; see the manifest's 'fallback' record")
    return _public(manifest)


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


def _load_data(spec: ModelSpec, steps: Steps, calib_samples: int | None) -> tuple[Dataset, Dataset]:
    if spec.calib:
        calib = load_npz(spec.calib, spec.inputs, "--calib", need_labels=False).take(calib_samples)
    else:
        calib = random_dataset(spec.inputs, calib_samples or RANDOM_CALIB_SAMPLES)
        steps.warn(
            "no calibration data: calibrating on RANDOM inputs. int8 ranges will not match real data "
            "and accuracy may collapse; pass --calib calib.npz with real samples"
        )
    if spec.eval:
        return calib, load_npz(spec.eval, spec.inputs, "--eval", need_labels=True)
    steps.warn(
        "no evaluation data: reporting agreement with the float model (on the calibration inputs) "
        "instead of accuracy; pass --eval eval.npz (x and labels y) for accuracy"
    )
    return calib, calib


def _float_outputs(model, data: Dataset, spec: ModelSpec) -> list[np.ndarray]:
    import torch

    with torch.no_grad():
        return [first_output(model(*b)).numpy() for b in batches(data, spec.inputs)]


def first_output(out):
    """Models return a tensor, a tuple/list of tensors or a dict of them: the first is scored."""
    if isinstance(out, dict):
        out = next(iter(out.values()))
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out.detach().float()


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
        metrics = compare(ctx.float_outputs, outputs, ctx.evaluation.labels)
        if getattr(runner, "exact", False):
            metrics["validated_as"] = ("reference QDQ arithmetic: this x86 host lacks VNNI, where onnxruntime's "
                                       "fused int8 kernels saturate; ARM kernels do not")
    return {
        "format": backend.FORMAT,
        "backend": backend.BACKEND,
        "quantization": cfg.to_json(backend),
        "artifact": {"file": artifact.name, "sha256": digest, "bytes": artifact.stat().st_size},
        "metrics": metrics,
        "lowering": lowering,
        "_predictions": np.concatenate(outputs).argmax(axis=-1),  # for cross-format agreement; not written
    }


def _validation_runner(backend, artifact: Path):
    """The artifact in its runtime, as the device would compute it (a backend may
    know its host kernels differ from the device's: see onnx_qdq)."""
    load = getattr(backend, "load_for_validation", backend.load)
    return load(artifact)


def _export_atomic(backend, qmodel, example: tuple, artifact: Path) -> dict:
    """Write under a temp name, rename when complete."""
    tmp = artifact.with_name(f".{artifact.name}.tmp")
    info = backend.export(qmodel, example, tmp)
    os.replace(tmp, artifact)
    return info


def _artifact_outputs(runner, ctx: _Context) -> list[np.ndarray]:
    total = len(ctx.evaluation) // ctx.spec.inputs[0].batch
    batch_iter = ctx.steps.track(batches(ctx.evaluation, ctx.spec.inputs), total, "evaluating")
    return [runner.run([t.numpy() for t in b])[0] for b in batch_iter]


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


def _gate_message(record: dict, budget: float) -> str:
    kept = record.get("fallback", {}).get("float_layers", [])
    tail = f" even with {len(kept)} layer(s) kept float" if kept else ""
    return (f"{record['format']}: int8 accuracy drops {_drop(record):.2f} points, over the "
            f"--max-accuracy-drop {budget:g} budget{tail}")


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
    """Top-1 agreement (percent) between every pair of formats on the same samples."""
    pairs = {}
    for (a, ra), (b, rb) in itertools.combinations(records.items(), 2):
        pairs[f"{a}~{b}"] = round(100.0 * float(np.mean(ra["_predictions"] == rb["_predictions"])), 2)
    return pairs


def _manifest(spec, target: Target, records: dict, float_bytes: int, ranking, steps: Steps, options: BuildOptions) -> dict:
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
    if options.max_accuracy_drop is not None:
        doc["gate"] = {"max_accuracy_drop": options.max_accuracy_drop, "fallback": options.fallback}
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
