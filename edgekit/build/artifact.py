"""One format's artifact: quantize -> export -> judge, with the step cache.

Quantization and export are one cached step: its key is (format, quantization
config, the float model's digest, the calibration data's digest, the example
shapes, the versions). A rebuild of an unchanged recipe copies the cached
artifact back (byte for byte the same file) instead of calibrating and
lowering again. Judging the artifact against the float model always runs.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit.cache import StepCache, step_key
from edgekit.compare import Gate, arithmetic, compare_runs, is_class_scores, summary
from edgekit.formats.base import QuantConfig
from edgekit.formats.equalize import equalize
from edgekit.formats.rounding import round_weights
from edgekit.formats.smoothing import smooth
from edgekit.manifest import sha256_file
from edgekit.model.data import batches
from edgekit.model.loaded import LoadedModel, data_digest


@dataclass
class BuildContext:
    """What every format's build reads: the float reference, where to write, the gate, the cache."""

    loaded: LoadedModel
    stage: Path  # the staging build directory
    steps: object  # edgekit.progress.Steps
    gate: Gate
    cache: StepCache
    model_digest: str  # of loaded.model: the cache key's input
    # What is made once per build (float_model_for's models and records, the layer ranking): the
    # contexts derived with dataclasses.replace (judging on the calibration inputs) share this dict,
    # and so every format and every --quality auto try.
    made: dict = field(default_factory=dict, repr=False, compare=False)
    nproc: int = 1  # processes for training work (quantization-aware training), as for distillation

    @property
    def spec(self):
        return self.loaded.spec


def build_format(ctx: BuildContext, fmt, cfg: QuantConfig, stage: str = "validate") -> dict:
    """The artifact of one format (quantized, exported, judged); returns its manifest record.
    `stage`: the judging step's name ("select" where a choice is judged on the calibration inputs)."""
    steps, loaded = ctx.steps, ctx.loaded
    artifact = ctx.stage / f"model{fmt.SUFFIX}"
    config = {"format": fmt.NAME, **cfg.to_json(fmt)}
    inputs = {"model": ctx.model_digest, "calib": data_digest(loaded.calib),
              "example": [list(t.shape) for t in loaded.example]}
    if cfg.qat:
        inputs["train"] = data_digest(qat_train_data(ctx))
    key = step_key("quantize+export", config, inputs)
    hit = ctx.cache.get(key)
    if hit is not None:
        lowering = _from_cache(ctx, fmt, config, artifact, hit)
    else:
        lowering = _quantize_and_export(ctx, fmt, cfg, config, artifact, key)
    for warning in lowering.pop("warnings", []):
        steps.warn(warning)
    record = judge(ctx, fmt, cfg, artifact, stage)
    for key in PREPARED:
        if key in lowering:
            record["quantization"][key] = lowering.pop(key)
    record["lowering"] = lowering
    return record


def _quantize_and_export(ctx: BuildContext, fmt, cfg: QuantConfig, config: dict, artifact: Path, key: str) -> dict:
    steps, loaded = ctx.steps, ctx.loaded
    start = time.perf_counter()
    scheme = "int8" if cfg.scheme != "fp16" else "fp16"
    with steps.step("quantize", {**config, "calibration_data": loaded.calib.source, "samples": len(loaded.calib)},
                    f"quantize {cfg.scheme} {scheme} ({fmt.BACKEND})"):
        total = len(loaded.calib) // ctx.spec.inputs[0].batch
        calib_iter = steps.track(batches(loaded.calib, ctx.spec.inputs), total, "calibrating")
        qmodel, prepared = quantized_model(ctx, fmt, cfg, calib_iter)
    with steps.step("export", {"format": fmt.NAME}, f"export {artifact.name}") as rec:
        lowering = export_atomic(fmt, qmodel, loaded.example, artifact)
        rec["output"] = sha256_file(artifact)
    lowering.update(prepared)
    seconds = round(time.perf_counter() - start, 3)
    with tempfile.TemporaryDirectory(prefix="edgekit-step-") as tmp:
        meta = Path(tmp) / "lowering.json"
        meta.write_text(json.dumps(lowering))
        ctx.cache.put(key, {artifact.name: artifact, "lowering.json": meta}, {"stage": "quantize+export",
                                                                             "seconds": seconds})
    return lowering


def quantized_model(ctx: BuildContext, fmt, cfg: QuantConfig, calib_batches):
    """(what the format exports, float_model_for's records plus `qat` when it trained): calibrated
    on `calib_batches`, or with `cfg.qat` fine-tuned on the training inputs (train/qat.py: once per
    build and config; the try screened is the one exported)."""
    import copy

    model, done = float_model_for(ctx, cfg)
    if not cfg.qat:
        return fmt.quantize(model, ctx.loaded.example, calib_batches, cfg), done
    qmodel, done["qat"] = made_once(ctx, ("qat", fmt.NAME, cfg), lambda: _trained(ctx, fmt, model, cfg))
    return copy.deepcopy(qmodel), done


def qat_train_data(ctx: BuildContext):
    from edgekit.train.qat import train_data

    return made_once(ctx, ("train data",), lambda: train_data(ctx.spec))


def _trained(ctx: BuildContext, fmt, model, cfg: QuantConfig):
    from edgekit.train.qat import QatConfig, converted, finetune, finetune_ddp

    loaded, train = ctx.loaded, qat_train_data(ctx)
    if ctx.nproc > 1:
        state, record = finetune_ddp(fmt, model, loaded.calib, train, ctx.spec, cfg, QatConfig(), ctx.nproc)
    else:
        state, record = finetune(fmt, model, loaded.calib, train, ctx.spec.inputs, cfg, QatConfig(), ctx.steps)
    return converted(fmt, model, loaded.example, cfg, state), record


def float_model_for(ctx: BuildContext, cfg: QuantConfig):
    """The float model the quantizer gets, and what was done to it first: (model, {"equalization":
    record, "smoothing": record, "rounding": record}, only the keys of what ran). The same for every
    format: `--equalize`, cross-layer range equalization (formats/equalize.py), then `--smooth-quant`,
    SmoothQuant's smoothing of the Linear inputs (formats/smoothing.py), then `--weight-rounding
    gptq`, weights rounded on the calibration inputs (formats/rounding.py), on the model so far."""
    loaded = ctx.loaded
    done: dict = {}
    model = loaded.model
    if cfg.equalize and cfg.per_channel:
        model, done["equalization"] = equalized(ctx)
    elif cfg.equalize:
        done["equalization"] = {"pairs": 0, "note": "per-tensor weights: equalizing would cost the producers' "
                                                    "weights what it gives the activations; left as it is"}
    if cfg.smooth_quant is not None and cfg.scheme == "static":
        model, done["smoothing"] = smoothed(ctx, cfg)
    if cfg.weight_rounding == "gptq" and cfg.scheme == "static":
        if cfg.per_channel:
            source = model
            model, done["rounding"] = made_once(ctx, ("gptq", cfg.equalize, cfg.smooth_quant, cfg.skip_layers),
                                                lambda: round_weights(source, loaded.example,
                                                                      batches(loaded.calib, ctx.spec.inputs),
                                                                      cfg.skip_layers))
        else:
            done["rounding"] = {"layers": 0, "note": "per-tensor weights: one scale per tensor, which the "
                                                            "per-row grid of formats/rounding.py does not hold"}
    return model, done


def equalized(ctx: BuildContext):
    """(the equalized float model, its record), made once per build: what --equalize gives the
    quantizer before any weight rounding, and what --quality auto reads the pair count from."""
    loaded = ctx.loaded
    return made_once(ctx, ("equalize",), lambda: equalize(loaded.model, loaded.example,
                                                       batches(loaded.calib, ctx.spec.inputs)))


def smoothed(ctx: BuildContext, cfg: QuantConfig):
    """(the float model smoothed with `cfg.smooth_quant`, after equalization when `cfg` asks for it,
    and its record), made once per build: what --smooth-quant gives the quantizer before any weight
    rounding, and what --quality auto reads the pair count from."""
    loaded = ctx.loaded
    equalize_first = cfg.equalize and cfg.per_channel
    source = equalized(ctx)[0] if equalize_first else loaded.model
    return made_once(ctx, ("smooth", equalize_first, cfg.smooth_quant), lambda: smooth(
        source, loaded.example, batches(loaded.calib, ctx.spec.inputs), cfg.smooth_quant))


PREPARED = ("equalization", "smoothing", "rounding", "qat")  # quantized_model's records, kept under the record's `quantization`


def made_once(ctx: BuildContext, key: tuple, make):
    """make() once per build (inside the step that first needs it: the quantize or screen step)."""
    if key not in ctx.made:
        ctx.made[key] = make()
    return ctx.made[key]


def _from_cache(ctx: BuildContext, fmt, config: dict, artifact: Path, hit) -> dict:
    entry, stored = hit
    with ctx.steps.step("quantize+export", {**config, "cached": True}, f"{artifact.name} from the step cache") as rec:
        try:
            shutil.copy2(entry / artifact.name, artifact)
        except OSError as e:  # the error is the destination's (a full build disk), whatever path copy2 names
            raise OSError(e.errno, e.strerror, str(artifact)) from e
        rec.update(cached=True, saved_seconds=stored["seconds"], output=sha256_file(artifact))
    return json.loads((entry / "lowering.json").read_text())


def export_atomic(fmt, qmodel, example: tuple, artifact: Path) -> dict:
    """Write under a temp name, rename when complete."""
    tmp = artifact.with_name(f".{artifact.name}.tmp")
    try:
        info = fmt.export(qmodel, example, tmp)
        os.replace(tmp, artifact)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return info


def judge(ctx: BuildContext, fmt, cfg: QuantConfig, artifact: Path, stage: str = "validate") -> dict:
    """The artifact in its runtime, as the device computes it, against the float model: its record."""
    steps, loaded = ctx.steps, ctx.loaded
    label = f"validate {artifact.name} in {fmt.BACKEND}" if stage == "validate" else \
        f"check {artifact.name} in {fmt.BACKEND} on the calibration inputs"
    with steps.step(stage, {"format": fmt.NAME, "data": loaded.evaluation.source, "samples": len(loaded.evaluation)},
                    label):
        runner = fmt.load_for_validation(artifact)
        total = len(loaded.evaluation) // ctx.spec.inputs[0].batch
        outputs = [[np.asarray(o) for o in runner.run([t.numpy() for t in b])]
                   for b in steps.track(batches(loaded.evaluation, ctx.spec.inputs), total, "evaluating")]
        result = compare_runs(loaded.float_outputs(), outputs, ctx.gate, arithmetic(cfg.scheme),
                              loaded.evaluation.labels, task=ctx.spec.task)
        metrics = {**summary(result), "data": _data_record(loaded), "outputs": [_row(o) for o in result["outputs"]]}
        if runner.validated_as:
            metrics["validated_as"] = runner.validated_as
    first = np.nan_to_num(np.concatenate([b[0] for b in outputs]))
    return {
        "format": fmt.NAME,
        "display_name": fmt.DISPLAY_NAME,
        "backend": fmt.BACKEND,
        "runtime": fmt.DEVICE_RUNTIME,
        "quantization": cfg.to_json(fmt),
        "artifact": {"file": artifact.name, "sha256": sha256_file(artifact), "bytes": artifact.stat().st_size},
        "metrics": metrics,
        "gate": {"passed": result["ok"], "failures": result["failures"]},
        # for cross-format agreement; not written
        "_predictions": first.argmax(axis=-1) if is_class_scores(first.shape, ctx.spec.task) else None,
    }


def _data_record(loaded: LoadedModel) -> dict:
    """What the artifact was judged on, said plainly: held-out data, or the calibration inputs."""
    return {"source": loaded.evaluation.source, "samples": len(loaded.evaluation), "held_out": loaded.held_out,
            "labels": loaded.evaluation.labels is not None}


def _row(output: dict) -> dict:
    """One output's comparison for the manifest (its failures are in the gate record)."""
    return {k: v for k, v in output.items() if k != "failures"}
