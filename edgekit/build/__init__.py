"""The build: recipe -> load -> stages -> per format quantize/export/judge -> manifest.

    builddir.py     build directories appear whole or not at all; device runs survive rebuilds
    artifact.py     one format's artifact (quantize + export, cached) and its judgement
    quality.py      --quality auto: recovery tries, chosen on the calibration inputs
    fallback.py     the accuracy budget: keep sensitive layers float
    sensitivity.py  each layer quantized alone, ranked

Each step is timed and recorded in the manifest, with digests of what it read
and made; the build dir appears only when every step succeeded. An artifact
that fails the quality gate is still written, marked, and the build then
raises BuildGateFailed (exit 3) with the manifest.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools

import numpy as np

from edgekit.build import budget
from edgekit.build.artifact import BuildContext
from edgekit.build.builddir import staged_build_dir
from edgekit.build.fallback import fall_back, rank
from edgekit.build.quality import build_with_quality
from edgekit.cache import StepCache
from edgekit.choose import recommend
from edgekit.compare import GATES, Gate, arithmetic
from edgekit.errors import BuildGateFailed, FormatUnsupported, UsageError
from edgekit.formats import FORMATS, get_format
from edgekit.formats.base import check_supported
from edgekit.manifest import (
    MANIFEST,
    SCHEMA_VERSION,
    read_manifest,
    versions,
    write_json_atomic,
)
from edgekit.model.app import ModelSpec
from edgekit.model.loaded import LoadedModel, model_digest, state_dict_bytes
from edgekit.recipe import BuildRecipe
from edgekit.stages import chain as stage_chain
from edgekit.stages.sparsity import add_compressed_size
from edgekit.target import Target
from edgekit.validate.run import build_checks


def resolve_formats(requested: tuple[str, ...], target: Target) -> tuple[str, ...]:
    """'all' means every format, the target's preferred one first (it becomes the primary); 'auto'
    builds the same candidates, and the build then keeps the one to ship as the primary."""
    if not requested:
        return (target.format,)
    if "all" in requested or "auto" in requested:
        return (target.format, *[f for f in FORMATS if f != target.format])
    return tuple(dict.fromkeys(requested))


def quality_gate(recipe: BuildRecipe) -> Gate:
    """The gate every artifact of this build must pass: the arithmetic's defaults, the recipe's thresholds over them."""
    g = recipe.gate
    return GATES[arithmetic(recipe.quant.scheme)].with_overrides(
        min_cosine=g.min_cosine, min_agreement=g.min_agreement, max_accuracy_drop=g.max_accuracy_drop)


def run_build(spec: ModelSpec, target: Target, recipe: BuildRecipe, out, steps, cache: StepCache | None = None,
              latency_on_device: bool = False) -> dict:
    recipe.check()
    if recipe.stages.nproc != 1 and recipe.stages.distill is None and (recipe.quality != "auto" or spec.train is None):
        raise UsageError("--nproc applies to training: --distill, or --quality auto's quantization-aware training, "
                         "which needs training inputs", hint="add --distill or --train train.npz, or drop --nproc")
    auto = "auto" in recipe.formats
    every = "all" in recipe.formats or auto
    cfg = dataclasses.replace(recipe.quant, input_names=tuple(s.name for s in spec.inputs))
    spec = dataclasses.replace(spec, task=recipe.gate.task or spec.task)
    skipped: dict[str, dict] = {}
    formats = []
    for fmt in map(get_format, resolve_formats(recipe.formats, target)):  # refuse what can't be done before any work
        if every and fmt.available() is not None:  # `all`: every format this installation has
            skipped[fmt.NAME] = {"error": f"{fmt.NAME}: {fmt.available()}", "hint": getattr(fmt, "INSTALL_HINT", None)}
            steps.warn(f"{fmt.NAME} skipped: {fmt.available()} ({skipped[fmt.NAME]['hint']})")
            continue
        try:
            check_supported(fmt, cfg, target)
        except UsageError as e:
            if not every or not formats:  # asked for by name, or the target's own format: the user must know
                raise
            skipped[fmt.NAME] = {"error": e.message, "hint": e.hint}  # `all`: every format that can build this
            steps.warn(f"{fmt.NAME} skipped: {e.message}")
            continue
        formats.append(fmt)
    gate = quality_gate(recipe)
    chain = stage_chain.plan(recipe.stages, target)
    cache = cache or StepCache()
    with steps.step("load", {"factory": spec.factory, "weights": str(spec.weights) if spec.weights else None},
                    "load model") as rec:
        loaded = LoadedModel.load(spec, recipe.calib_samples, steps.warn)
        float_bytes = len(state_dict_bytes(loaded.model))
        rec["output"] = model_digest(loaded.model)
        labelled = loaded.evaluation.labels is not None
        if recipe.gate.max_accuracy_drop is not None and not labelled:
            raise UsageError("--max-accuracy-drop needs labelled evaluation data",
                             hint="pass --eval eval.npz with the inputs and labels y; without labels the gate "
                             "judges agreement with the float model (--min-cosine, --min-agreement)")
    plan_record = None
    if budget.wanted(recipe.gate):
        with steps.step("budget", {"latency_budget_ms": recipe.gate.latency_budget_ms,
                                   "size_budget_mb": recipe.gate.size_budget_mb}, "plan for the budget") as planned:
            kernels = formats[0].ARM_KERNELS if formats else "xnnpack"  # none left: the build says so below
            recipe, plan_record = budget.plan(loaded, recipe, target, kernels, steps)
            planned.update(plan_record)
        chain = stage_chain.plan(recipe.stages, target)
    stage_chain.check(chain, spec, labelled)
    gate_failures = []
    with staged_build_dir(out, warn=steps.console_warning) as stage:
        digest = rec["output"]
        if chain:
            ctx = stage_chain.StageContext(loaded, steps, recipe.stages.nproc)
            loaded = loaded.with_model(stage_chain.run(chain, ctx, stage, cache))
            digest = model_digest(loaded.model)  # quantization and judging use the transformed model from here on
        ctx = BuildContext(loaded, stage, steps, gate, cache, digest, nproc=recipe.stages.nproc)
        ranking = rank(ctx, cfg) if recipe.sensitivity else None
        records = {}
        for fmt in formats:
            try:
                record = build_with_quality(ctx, fmt, cfg, recipe.quality, recipe.quant.calibration is not None)
            except FormatUnsupported as e:
                if not every:
                    raise
                # `--format all` means every format that can take this model: the others are built.
                skipped[fmt.NAME] = {"error": e.message, "hint": e.hint}
                steps.warn(f"{fmt.NAME} skipped: {e.message}")
                continue
            if recipe.gate.max_accuracy_drop is not None and recipe.gate.fallback:
                # decided on the calibration inputs (fallback.py), whatever the evaluation data says
                quality = record.get("quality")
                kept_cfg = dataclasses.replace(cfg, **{k: v for k, v in record["quantization"].items()
                                                     if k in ("scheme", "calibration", "equalize", "smooth_quant")},
                                               skip_layers=tuple(record["quantization"].get("float_layers", ())))
                record, ranking = fall_back(ctx, fmt, kept_cfg, ranking, recipe.gate.max_accuracy_drop)
                record["quality"] = quality
            if recipe.stages.sparsity is not None:
                add_compressed_size(record, stage)  # zeros only pay off compressed: show it
            if not record["gate"]["passed"]:
                kept = len(record.get("fallback", {}).get("float_layers", []))
                tail = f" (even with {kept} layer(s) kept float)" if kept else ""
                gate_failures += [f"{record['artifact']['file']}: {m}{tail}" for m in record["gate"]["failures"]]
            records[fmt.NAME] = record
        _say_reused(steps)
        if not records:
            first = next(iter(skipped.values()))
            raise UsageError("no format could take this model: " + "; ".join(f"{f}: {r['error']}" for f, r in skipped.items()),
                             hint=first["hint"])
        manifest = _manifest(spec, target, recipe, records, float_bytes, ranking, steps, gate, skipped)
        manifest.update(_lint_and_predict(loaded, stage, records, target, steps))
        budget_failures = budget.check(manifest, records, recipe, steps, latency_on_device)
        if plan_record is not None:
            manifest["budget"]["plan"] = plan_record
        if auto:
            manifest, gate_failures = _choose_primary(manifest, records, gate_failures, steps,
                                                      lambda rs: _manifest(spec, target, recipe, rs, float_bytes,
                                                                           ranking, steps, gate, skipped))
            chosen = manifest["format_choice"]["chosen"]
            if chosen is not None:  # what ships is the one chosen: its budget is the build's
                budget_failures = [f for f in budget_failures if f.startswith(records[chosen]["artifact"]["file"] + ":")]
        write_json_atomic(stage / MANIFEST, _public(manifest))
    manifest = read_manifest(out)  # as written, with what the swap added (device runs kept from before)
    if gate_failures:
        raise BuildGateFailed("quality gate failed: " + "; ".join(gate_failures), _gate_hint(records, out), manifest)
    if budget_failures:
        raise BuildGateFailed("budget not met: " + "; ".join(budget_failures), _budget_hint(out), manifest)
    return manifest


def _choose_primary(manifest: dict, records: dict, gate_failures: list[str], steps, remake):
    """`--format auto`: the artifact to ship (choose.py: passes the gate, all its MACs on its fast
    kernels, fastest predicted on the target) becomes the build's primary; the other candidates stay
    in the build, marked as they were judged. Their gate failures no longer fail the build once one
    passed: what was asked for is the one that passes. Returns (manifest, the failures that count)."""
    choice = recommend(manifest)
    checks = (manifest.get("validation") or {}).get("formats") or {}
    candidates = [{"format": f, "file": r["artifact"]["file"], "passed": r["gate"]["passed"],
                   "predicted_ms": (checks.get(f, {}).get("prediction") or {}).get("latency_ms")}
                  for f, r in records.items()]
    if choice["format"] is None:
        manifest["format_choice"] = {"mode": "auto", "chosen": None, "why": choice["why"], "candidates": candidates}
        return manifest, gate_failures
    ordered = {choice["format"]: records[choice["format"]], **records}
    remade = {**manifest, **remake(ordered)}  # the top-level record repeats the chosen one's
    remade["format_choice"] = {"mode": "auto", "chosen": choice["format"], "file": choice["file"],
                               "why": choice["why"], "candidates": candidates}
    steps.console.print(f"--format auto: kept [bold]{choice['file']}[/] ({choice['why']})")
    return remade, []


def _say_reused(steps) -> None:
    cached = [s for s in steps.records if s.get("cached")]
    if cached:
        saved = sum(s.get("saved_seconds") or 0 for s in cached)
        steps.console.print(f"reused {len(cached)} cached step(s) from an earlier build with the same inputs: "
                            f"{saved:.1f} s of work not redone (EDGEKIT_STEP_CACHE=off to redo it)")


def _budget_hint(out) -> str:
    return (f"the build is kept in {out} with what each artifact reached (manifest.json 'budget'); try: more "
            "training data for --distill (--train), a smaller cut (--prune-macs), or a larger budget")


def _gate_hint(records: dict, out) -> str:
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


def _lint_and_predict(loaded: LoadedModel, stage, records: dict, target: Target, steps) -> dict:
    """The cheap part of `edgekit validate` (lint + cost model) on every build, recorded under
    `validation` (with its own seconds, not as a build step); the resource run and profiling
    stay in `edgekit validate`. A failure here never fails the build: it warns."""

    try:
        return build_checks(loaded.model, loaded.example, stage, _public(records), target)
    except Exception as e:  # noqa: BLE001 - an analysis bug must not cost the user the build
        steps.warn(f"lint/latency prediction skipped ({type(e).__name__}: {e}); "
                   "please report it; `edgekit validate` retries it")
        return {}


# ---------------------------------------------------------------- manifest


def _cross_agreement(records: dict) -> dict:
    """Top-1 agreement (percent) between every pair of formats on the same samples (class scores only)."""
    pairs = {}
    for (a, ra), (b, rb) in itertools.combinations(records.items(), 2):
        if ra["_predictions"] is not None and rb["_predictions"] is not None:
            pairs[f"{a}~{b}"] = round(100.0 * float(np.mean(ra["_predictions"] == rb["_predictions"])), 2)
    return pairs


def _manifest(spec: ModelSpec, target: Target, recipe: BuildRecipe, records: dict, float_bytes: int, ranking, steps,
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
        "recipe": recipe.to_json(),  # replayable: edgekit build --recipe BUILD/manifest.json
        "artifact": primary["artifact"],
        "float": {"bytes": float_bytes},
        "metrics": primary["metrics"],
        "lowering": primary["lowering"],
        "formats": records,
        "cross_agreement": _cross_agreement(records),
        "steps": steps.records,
        "warnings": steps.warnings,
        "versions": versions(),
        # The gate every artifact was judged by (validate re-applies it); `fallback`: whether layers
        # were allowed to stay float to meet max_accuracy_drop.
        "gate": {**gate.to_json(), "task": spec.task, "fallback": recipe.gate.fallback},
    }
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
