"""Pretrained models nobody here wrote: edgekit's artifacts beside the hand-made int8 paths.

EfficientNet-Lite0 with its ImageNet weights on photo crops, and all-MiniLM-L6-v2 on
real sentences (sample_apps/efficientnet_lite0, sample_apps/minilm: weights from
registry packages, data from their data.py). For each model, in one run:

    edgekit           `edgekit build APP --format all`: .pte, .onnx (and .ptl, .tflite where
                      it can), with the quality gate's verdict
    tutorial          ExecuTorch's PT2E + XNNPACK flow as its tutorial writes it
    ort static        onnxruntime quantize_static with only its required arguments
    ort dynamic       onnxruntime quantize_dynamic defaults (the transformer recipe)

and every artifact is judged by the same code on the same held-out inputs
(edgekit.compare, the gate's own): top-1 agreement with float for class scores,
mean cosine of the outputs, size, host latency at 1 thread. A path that fails
keeps its row with its error. `bench/compare.py` runs this and writes the table
into RESULTS.md.
"""

from __future__ import annotations

import contextlib
import io
import logging
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from baselines import tutorial_edge
from measure import latency_ms, short_error
from models import REPO

APPS = REPO / "sample_apps"


@dataclass(frozen=True)
class RealModel:
    name: str
    app: str  # the sample app's directory name
    inputs: tuple[str, ...]  # the input names, in the model's order
    transformer: bool  # onnxruntime's dynamic int8 is the published recipe for these


REAL_MODELS = {
    "efficientnet_lite0": RealModel("efficientnet_lite0", "efficientnet_lite0", ("x",), False),
    "minilm": RealModel("minilm", "minilm", ("input_ids", "attention_mask"), True),
}


@dataclass
class Candidate:
    key: str
    label: str
    artifact: Path | None = None
    run_factory: object = None  # threads -> run(list of arrays) -> list of arrays
    seconds: float | None = None  # build wall time
    gate: str | None = None  # edgekit's own verdict, for edgekit's artifacts
    error: str | None = None
    extra: dict = field(default_factory=dict)


def _timed(path: Candidate, build) -> Candidate:
    start = time.perf_counter()
    try:
        build(path)
    except Exception as e:  # noqa: BLE001 - a failing path is a result
        path.error = short_error(e)
    path.seconds = round(time.perf_counter() - start, 1)
    return path


def _ort_runner(artifact: Path):
    from edgekit.formats import onnx as onnx_format

    def factory(threads: int):
        session = onnx_format.load(artifact, threads=threads)
        return lambda arrays: session.run(arrays)

    return factory


def _judging_runner(artifact: Path, timed):
    """What the outputs are judged with: for .onnx, the arithmetic an ARM board computes (on an x86
    host without VNNI, onnxruntime's fused int8 kernels saturate where ARM's do not: edgekit's own
    validation runs the reference QDQ arithmetic there, and so does every .onnx row here); the
    timed session otherwise."""
    if artifact.suffix != ".onnx":
        return timed
    from edgekit.formats import onnx as onnx_format

    return onnx_format.load_for_validation(artifact).run


def _pte_runner(artifact: Path):
    from edgekit.formats import executorch as executorch_format

    def factory(threads: int):
        method = executorch_format.load(artifact, threads=threads)
        return lambda arrays: method.run(arrays)

    return factory


def _edgekit(model: RealModel, calib: Path, evaluation: Path, work: Path) -> list[Candidate]:
    from edgekit import api
    from edgekit.formats import get_format
    from edgekit.errors import BuildGateFailed

    out = work / "edgekit"
    start = time.perf_counter()
    try:
        manifest = api.build(api.source(APPS / model.app, calib=calib, eval=evaluation), "rpi5",
                             api.recipe(formats=("all",)), out=out)
    except BuildGateFailed as e:  # the artifacts are written, marked: measured like the others
        manifest = e.manifest
    except Exception as e:  # noqa: BLE001
        return [Candidate("edgekit", "edgekit (every format)", error=short_error(e))]
    seconds = round(time.perf_counter() - start, 1)
    paths = []
    for fmt, record in manifest["formats"].items():
        artifact = out / record["artifact"]["file"]
        p = Candidate(f"edgekit_{fmt}", f"edgekit {artifact.suffix}", artifact, seconds=seconds,
                      gate="✓" if record["gate"]["passed"] else "✗",
                      extra={"quality": (record.get("quality") or {}).get("chosen")})
        backend = get_format(fmt)
        p.run_factory = lambda threads, b=backend, a=artifact: b.load(a, threads=threads).run
        paths.append(p)
    for fmt, why in (manifest.get("skipped_formats") or {}).items():
        paths.append(Candidate(f"edgekit_{fmt}", f"edgekit ({fmt})", error=f"skipped: {why['error'][:160]}"))
    return paths


def _tutorial(model, example: tuple, calib: list[tuple], work: Path) -> Candidate:
    """https://docs.pytorch.org/executorch/stable/tutorial-xnnpack-delegate-lowering.html, as written."""

    def build(p: Candidate) -> None:
        edge = tutorial_edge(model, example, calib)
        p.artifact = work / "tutorial" / "model.pte"
        p.artifact.parent.mkdir(parents=True, exist_ok=True)
        p.artifact.write_bytes(edge.to_executorch().buffer)
        p.run_factory = _pte_runner(p.artifact)

    return _timed(Candidate("tutorial", "ExecuTorch tutorial (PT2E + XNNPACK)"), build)


def _float_onnx(model, example: tuple, names: tuple[str, ...], work: Path) -> Path:
    import torch

    path = work / "ort-fp32" / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(model, example, str(path), dynamo=True, input_names=list(names), external_data=False)
    return path


class _Reader:
    def __init__(self, names, batches):
        self._feeds = iter([{n: t.numpy() for n, t in zip(names, b)} for b in batches])

    def get_next(self):
        return next(self._feeds, None)


def _ort_static(float_onnx: Path | None, names, calib, work: Path, error: str | None) -> Candidate:
    def build(p: Candidate) -> None:
        from onnxruntime.quantization import quantize_static

        if float_onnx is None:
            raise RuntimeError(f"needs the fp32 ONNX export, which failed ({error})")
        p.artifact = work / "ort-static" / "model.onnx"
        p.artifact.parent.mkdir(parents=True, exist_ok=True)
        with _root_quiet():
            quantize_static(str(float_onnx), str(p.artifact), _Reader(names, calib))
        p.run_factory = _ort_runner(p.artifact)

    return _timed(Candidate("ort_static", "onnxruntime quantize_static defaults"), build)


def _ort_dynamic(float_onnx: Path | None, work: Path, error: str | None) -> Candidate:
    def build(p: Candidate) -> None:
        from onnxruntime.quantization import quantize_dynamic

        if float_onnx is None:
            raise RuntimeError(f"needs the fp32 ONNX export, which failed ({error})")
        p.artifact = work / "ort-dynamic" / "model.onnx"
        p.artifact.parent.mkdir(parents=True, exist_ok=True)
        with _root_quiet():
            quantize_dynamic(str(float_onnx), str(p.artifact))
        p.run_factory = _ort_runner(p.artifact)

    return _timed(Candidate("ort_dynamic", "onnxruntime quantize_dynamic defaults"), build)


@contextlib.contextmanager
def _root_quiet():
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _load_data(model: RealModel, work: Path) -> tuple[Path, Path]:
    data = work / "data"
    subprocess.run([sys.executable, str(APPS / model.app / "data.py"), "--out", str(data)], check=True,
                   capture_output=True)
    return data / "calib.npz", data / "eval.npz"


def _batches(path: Path, names) -> list[tuple]:
    import torch

    with np.load(path) as z:
        arrays = [z[n] for n in names]
    return [tuple(torch.from_numpy(a[i:i + 1]) for a in arrays) for i in range(len(arrays[0]))]


def _model_work(float_model, example: tuple) -> list[dict] | None:
    from edgekit.validate.graph import model_work

    try:
        return [r.to_json() for r in model_work(float_model, example)]
    except Exception:  # noqa: BLE001 - the column is then empty, the row stays
        return None


def _int8_share(artifact: Path | None, work: list[dict] | None) -> float | None:
    """The share of the model's MACs on the format's int8 fast path, by edgekit's lint of the artifact
    (the same for every path: what the artifact itself contains)."""
    if artifact is None or work is None or not artifact.is_file():
        return None
    from edgekit.validate.lint import lint

    try:
        return lint(artifact, work).get("macs_fast_share")
    except Exception:  # noqa: BLE001
        return None


def bench_real(model: RealModel, work: Path, runs: int, warmup: int, say) -> list[dict]:
    import torch

    from edgekit.model.app import build_module, load_app
    from edgekit.compare import GATES, all_outputs, compare_runs, summary

    work.mkdir(parents=True, exist_ok=True)
    calib_path, eval_path = _load_data(model, work)
    spec = load_app(APPS / model.app)
    float_model = build_module(spec)
    calib, evaluation = _batches(calib_path, model.inputs), _batches(eval_path, model.inputs)
    with torch.no_grad():
        reference = [all_outputs(float_model(*b)) for b in evaluation]
    say("edgekit build --format all")
    paths = _edgekit(model, calib_path, eval_path, work)
    say("the ExecuTorch tutorial path")
    paths.append(_tutorial(float_model, calib[0], calib, work))
    float_onnx, error = None, None
    try:
        float_onnx = _float_onnx(float_model, calib[0], model.inputs, work)
    except Exception as e:  # noqa: BLE001
        error = short_error(e)
    say("onnxruntime quantize_static / quantize_dynamic defaults")
    paths.append(_ort_static(float_onnx, model.inputs, calib, work, error))
    if model.transformer:
        paths.append(_ort_dynamic(float_onnx, work, error))

    work = _model_work(float_model, calib[0])
    rows = []
    for p in paths:
        row = {"model": model.name, "path": p.key, "label": p.label, "gate": p.gate, "build_s": p.seconds,
               "size_bytes": p.artifact.stat().st_size if p.artifact and p.artifact.is_file() else None,
               "top1_agreement": None, "cosine": None, "median_ms": None, "error": p.error,
               "int8_macs_share": _int8_share(p.artifact, work) if p.error is None else None,
               "quality": p.extra.get("quality")}
        if p.run_factory is not None and p.error is None:
            try:
                run = p.run_factory(1)
                judge = _judging_runner(p.artifact, run)
                outputs = [[np.asarray(o) for o in judge([t.numpy() for t in b])] for b in evaluation]
                judged = summary(compare_runs(reference, outputs, GATES["int8"], task=spec.task))
                row.update(top1_agreement=judged["top1_agreement"], cosine=judged["cosine"])
                sample = [t.numpy() for t in evaluation[0]]
                row.update(median_ms=latency_ms(lambda x: run(x), sample, warmup, runs)["median_ms"])
            except Exception as e:  # noqa: BLE001
                row["error"] = short_error(e)
        say(f"  {p.label}: " + (row["error"] or f"cosine {row['cosine']:.4f}, {row['median_ms']:.2f} ms"))
        rows.append(row)
    return rows
