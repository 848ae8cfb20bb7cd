"""The build: load -> quantize -> export -> validate -> build dir with manifest.json.

Each stage is timed and recorded in the manifest; the build dir appears only
when every stage succeeded (see builddir.py).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import os
from pathlib import Path

from edgekit.app import ModelSpec, build_module
from edgekit.backends import get_backend
from edgekit.backends.base import QuantConfig
from edgekit.builddir import staged_build_dir
from edgekit.data import Dataset, batches, example_inputs, load_npz, random_dataset
from edgekit.errors import UsageError
from edgekit.manifest import MANIFEST, SCHEMA_VERSION, sha256_bytes, sha256_file, versions, write_json_atomic
from edgekit.metrics import compare
from edgekit.progress import Steps
from edgekit.target import Target

# With no calibration file, this many random samples stand in (and the build warns).
RANDOM_CALIB_SAMPLES = 32


def run_build(spec: ModelSpec, target: Target, out: Path, steps: Steps, calib_samples: int | None = None) -> dict:
    backend = get_backend(target.format)
    cfg = QuantConfig()
    with steps.step("load", {"factory": spec.factory, "weights": _str(spec.weights)}, "load model") as rec:
        model = build_module(spec)
        example = example_inputs(spec.inputs)
        _check_accepts(model, example, spec)
        float_bytes, rec["output"] = _state_dict_size_and_digest(model)
        calib, evaluation = _load_data(spec, steps, calib_samples)
    with staged_build_dir(out) as stage:
        with steps.step("quantize", {**cfg.to_json(), "calibration": calib.source, "samples": len(calib)},
                        f"quantize int8 ({backend.BACKEND})"):
            calib_iter = steps.track(batches(calib, spec.inputs), len(calib) // spec.inputs[0].batch, "calibrating")
            qmodel = backend.quantize(model, example, calib_iter, cfg)
        artifact = stage / f"model{backend.SUFFIX}"
        with steps.step("export", {"format": backend.FORMAT, "backend": backend.BACKEND}, f"export {artifact.name}") as rec:
            lowering = _export_atomic(backend, qmodel, example, artifact)
            rec["output"] = sha256_file(artifact)
        if not lowering.get("xnnpack_delegated", True):
            steps.warn(f"nothing was delegated to {backend.BACKEND}: the artifact runs on portable CPU kernels")
        with steps.step("validate", {"data": evaluation.source, "samples": len(evaluation)}, "validate on host"):
            metrics = _validate(model, backend.load(artifact), evaluation, spec, steps)
        manifest = _manifest(spec, target, backend, artifact, float_bytes, metrics, lowering, steps)
        write_json_atomic(stage / MANIFEST, manifest)
    return manifest


def _str(path: Path | None) -> str | None:
    return str(path) if path else None


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


def _export_atomic(backend, qmodel, example: tuple, artifact: Path) -> dict:
    """Write under a temp name, rename when complete."""
    tmp = artifact.with_name(f".{artifact.name}.tmp")
    info = backend.export(qmodel, example, tmp)
    os.replace(tmp, artifact)
    return info


def _validate(model, runner, data: Dataset, spec: ModelSpec, steps: Steps) -> dict:
    """The float model and the artifact in its real runtime, on the same samples."""
    import torch

    float_out, artifact_out = [], []
    total = len(data) // spec.inputs[0].batch
    with torch.no_grad():
        for batch in steps.track(batches(data, spec.inputs), total, "evaluating"):
            float_out.append(_first_output(model(*batch)).numpy())
            artifact_out.append(runner.run([t.numpy() for t in batch])[0])
    return compare(float_out, artifact_out, data.labels)


def _first_output(out):
    """Models return a tensor, a tuple/list of tensors or a dict of them: the first is scored."""
    if isinstance(out, dict):
        out = next(iter(out.values()))
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out.detach().float()


def _manifest(spec, target: Target, backend, artifact: Path, float_bytes: int, metrics: dict, lowering: dict, steps: Steps) -> dict:
    return {
        "schema": SCHEMA_VERSION,
        "name": spec.name,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "target": target.name,
        "target_profile": _target_json(target),
        "format": backend.FORMAT,
        "backend": backend.BACKEND,
        "model": spec.to_json(),
        "artifact": {"file": artifact.name, "sha256": sha256_file(artifact), "bytes": artifact.stat().st_size},
        "float": {"bytes": float_bytes},
        "metrics": metrics,
        "lowering": lowering,
        "steps": steps.records,
        "warnings": steps.warnings,
        "versions": versions(),
    }


def _target_json(target: Target) -> dict:
    doc = dataclasses.asdict(target)
    doc["path"] = str(target.path)
    return doc
