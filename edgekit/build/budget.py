"""Budgets for the whole build: `--max-accuracy-drop`, `--latency-budget`, `--size-budget`.

A budget is what the user wants of the artifact they ship, measured from the model
as they loaded it: "at most 1 point below my model, under 0.5 ms on rpi4, under
1 MB". Pruning, distillation and quantization each take a share of it; the build
is judged on the sum.

1. Planning, before any stage runs, where the recipe names no pruning amount of
   its own (`--prune`/`--prune-macs` stay direct knobs): the least pruning whose
   predicted int8 latency on the target (validate/cost.py, the primary format's
   kernels) and int8 weight bytes meet the budgets. Candidates keep a fraction
   of the MACs (PLAN_FRACTIONS, most first); each is a pruned copy of the model,
   counted and predicted, nothing trained or run, so the choice is made on the
   cost model and no data. Pruning without `--distill` is refused: the budget
   asks for accuracy too, and distillation (on `--train`) is what recovers it.
2. Checking, after: every artifact's predicted latency, its file size, and its
   accuracy on the evaluation data against the model as loaded (the `measure`
   step's). A miss fails the build (exit 3), naming what each artifact reached,
   so the closest one is on the screen; the build dir keeps them all.

Without a budget, a build whose stages (pruning, low rank) cost more than
WARN_POINTS of accuracy says so: nothing is silent about a lost point.
"""

from __future__ import annotations

import copy
import dataclasses

from edgekit.errors import UsageError

# Fractions of the MACs a planned pruning keeps, tried in order: the first that meets the budgets wins.
PLAN_FRACTIONS = (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.35, 0.3, 0.25, 0.2, 0.15, 0.1)
# Accuracy points the stages may cost before a build without --max-accuracy-drop warns.
WARN_POINTS = 1.0
MB = 1e6


def wanted(gate) -> bool:
    return gate.latency_budget_ms is not None or gate.size_budget_mb is not None


def pruned_prediction(model, example, target, fraction: float, kernels: tuple[str, ...], lowrank: float | None = None,
                      depth: float | None = None) -> dict:
    """A copy of `model` pruned to keep `fraction` of its MACs (1: as it is), or with its Linear and 1x1
    layers factorised to `lowrank` of their rank (stages/lowrank.py), or keeping `depth` of its repeated
    blocks (stages/depth.py; which ones does not change the count), counted and predicted on the target by
    each kernel library in `kernels` (validate/cost.py), in int8 and in fp32; nothing trained. Returns
    {"macs", "int8_weight_mb", "latency_ms": {kernels: int8 ms or None}, "fp32_latency_ms": {kernels: ...}}."""
    from edgekit.stages.depth import DepthConfig, drop_blocks
    from edgekit.stages.lowrank import LowRankConfig, factorise
    from edgekit.stages.macs import count
    from edgekit.stages.prune import PruneConfig, prune
    from edgekit.validate import cost
    from edgekit.validate.graph import model_work

    if fraction < 1 or lowrank is not None or depth is not None:
        model = copy.deepcopy(model)
    if depth is not None:
        drop_blocks(model, example, DepthConfig(depth))
    if fraction < 1:
        prune(model, example, PruneConfig(macs_target=fraction, round_to=target.round_to))
    if lowrank is not None:
        factorise(model, LowRankConfig(rank_fraction=lowrank))
    rows = [r.to_json() for r in model_work(model, example)]
    return {"macs": sum(r["macs"] for r in rows), "int8_weight_mb": round(count(model, example)["params"] / MB, 4),
            **{f"{prefix}latency_ms": {k: (cost.predict(rows, dtype, target, kernels=k) or {}).get("latency_ms")
                                       for k in kernels} for prefix, dtype in (("", "int8"), ("fp32_", "fp32"))}}


def _predicted(model, example, target, kernels: str, fraction: float = 1.0) -> dict:
    p = pruned_prediction(model, example, target, fraction, (kernels,))
    return {**p, "latency_ms": p["latency_ms"][kernels]}


def _meets(p: dict, gate) -> bool:
    fast = gate.latency_budget_ms is None or (p["latency_ms"] is not None and p["latency_ms"] <= gate.latency_budget_ms)
    small = gate.size_budget_mb is None or p["int8_weight_mb"] <= gate.size_budget_mb
    return fast and small


def plan(loaded, recipe, target, kernels: str, steps):
    """(the recipe to build, the plan's record). Prunes only where the budget needs it and the recipe
    left the amount open."""
    from edgekit.stages.prune import PruneConfig

    gate = recipe.gate
    example = loaded.example
    unpruned = _predicted(loaded.model, example, target, kernels)
    if unpruned["latency_ms"] is None and gate.latency_budget_ms is not None:
        raise UsageError(f"--latency-budget: the cost model predicts nothing for target '{target.name}' (not an ARM core)",
                         hint="use an ARM target profile (rpi4, rpi5, pi-zero2, android-arm64)")
    record = {"latency_budget_ms": gate.latency_budget_ms, "size_budget_mb": gate.size_budget_mb,
              "unpruned": unpruned, "candidates": []}
    said = recipe.stages.prune is not None or recipe.stages.depth is not None  # the amount is the user's
    if said or _meets(unpruned, gate):
        record["pruning"] = "as the recipe says" if said else "none needed"
        return recipe, record
    chosen = None
    for fraction in PLAN_FRACTIONS:
        p = {"macs_kept": fraction, **_predicted(loaded.model, example, target, kernels, fraction)}
        record["candidates"].append(p)
        if _meets(p, gate):
            chosen = p
            break
    if chosen is None:
        record["pruning"] = "no candidate meets the budget"
        closest = min(record["candidates"], key=lambda c: c["latency_ms"] or 0)
        steps.warn(f"no pruning meets the budget by the cost model (closest: {closest['macs_kept']:g} of the MACs, "
                   f"{closest['latency_ms']} ms, {closest['int8_weight_mb']} MB of int8 weights); building it anyway")
        chosen = closest
    else:
        record["pruning"] = f"--prune-macs {chosen['macs_kept']:g}"
    if recipe.stages.distill is None:
        raise UsageError(f"the budget needs pruning (to {chosen['macs_kept']:g} of the MACs: predicted "
                         f"{chosen['latency_ms']} ms vs {unpruned['latency_ms']} ms unpruned) and the accuracy "
                         "it costs comes back by distillation", hint="add --distill with --train train.npz (labels "
                         "optional), or set --prune/--prune-macs yourself")
    steps.console.print(f"  budget: {record['pruning']} (predicted {chosen['latency_ms']} ms on {target.name}, "
                        f"{unpruned['latency_ms']} ms unpruned)")
    stages = dataclasses.replace(recipe.stages, prune=PruneConfig(macs_target=chosen["macs_kept"]))
    return dataclasses.replace(recipe, stages=stages), record


def check(manifest: dict, records: dict, recipe, steps, latency_on_device: bool = False) -> list[str]:
    """The budget's verdict on every artifact, into manifest['budget']; returns the failures (exit 3).
    `latency_on_device`: the latency budget is judged by a device's measurement afterwards (measured()),
    not by the prediction."""
    gate = recipe.gate
    measure = next((s for s in manifest.get("steps", []) if s.get("stage") == "measure"), None)
    loaded_accuracy = measure.get("accuracy_float") if measure else None
    checks = ((manifest.get("validation") or {}).get("formats")) or {}
    verdicts, failures = {}, []
    for name, record in records.items():
        artifact, metrics = record["artifact"], record["metrics"]
        accuracy = metrics.get("accuracy_artifact")
        v = {"file": artifact["file"], "accuracy": accuracy,
             "accuracy_drop": None if accuracy is None or loaded_accuracy is None else round(loaded_accuracy - accuracy, 2),
             "predicted_ms": ((checks.get(name) or {}).get("prediction") or {}).get("latency_ms"),
             "mb": round(artifact["bytes"] / MB, 4), "misses": []}
        if gate.max_accuracy_drop is not None and v["accuracy_drop"] is not None and v["accuracy_drop"] > gate.max_accuracy_drop:
            v["misses"].append(f"{accuracy:.2f} % is {v['accuracy_drop']:.2f} points below the model as loaded "
                               f"({loaded_accuracy:.2f} %), over --max-accuracy-drop {gate.max_accuracy_drop:g}")
        if gate.latency_budget_ms is not None and not latency_on_device and \
                (v["predicted_ms"] is None or v["predicted_ms"] > gate.latency_budget_ms):
            v["misses"].append(f"predicted {v['predicted_ms']} ms, over --latency-budget {gate.latency_budget_ms:g}")
        if gate.size_budget_mb is not None and v["mb"] > gate.size_budget_mb:
            v["misses"].append(f"{v['mb']} MB, over --size-budget {gate.size_budget_mb:g}")
        verdicts[name] = v
        if v["misses"]:
            failures.append(f"{v['file']}: {'; '.join(v['misses'])}")
    manifest["budget"] = {**manifest.get("budget", {}), "accuracy_loaded": loaded_accuracy,
                          "max_accuracy_drop": gate.max_accuracy_drop, "latency_budget_ms": gate.latency_budget_ms,
                          "latency_on": "device" if latency_on_device else "prediction",
                          "size_budget_mb": gate.size_budget_mb, "artifacts": verdicts,
                          "met": [n for n, v in verdicts.items() if not v["misses"]]}
    if gate.max_accuracy_drop is None and loaded_accuracy is not None:
        lost = [v for v in verdicts.values() if v["accuracy_drop"] is not None and v["accuracy_drop"] > WARN_POINTS]
        if lost and any(s.get("stage") in ("depth", "prune", "lowrank", "distill") for s in manifest.get("steps", [])):
            worst = max(lost, key=lambda v: v["accuracy_drop"])
            steps.warn(f"{worst['file']} scores {worst['accuracy']:.2f} %, {worst['accuracy_drop']:.2f} points below "
                       f"the model as loaded ({loaded_accuracy:.2f} %); --max-accuracy-drop POINTS makes that an "
                       "error (exit 3)")
    return failures


def measured(build_dir, device, bench, allow_arch_mismatch: bool, budget_ms: float) -> dict:
    """`build --latency-budget MS --device D`: the primary artifact deployed to D and timed there (as
    `edgekit deploy --bench`; the run lands in device_runs/), its p50 the verdict, into manifest['budget']
    ['measured']. Raises DeployFailed (exit 4) if the device fails, BuildGateFailed (exit 3) if it misses."""
    from edgekit.deploy.records import open_build
    from edgekit.deploy.session import timed_on
    from edgekit.errors import BuildGateFailed
    from edgekit.manifest import update_manifest

    build = open_build(build_dir)
    verdict = timed_on(build, device, bench, allow_arch_mismatch, f"timing {build.artifact.name} for --latency-budget")
    verdict["met"] = verdict["p50_ms"] <= budget_ms
    manifest = update_manifest(build_dir, lambda doc: doc.setdefault("budget", {}).update(measured=verdict))
    if not verdict["met"]:
        raise BuildGateFailed(f"budget not met: {build.artifact.name} measures {verdict['p50_ms']} ms (p50) on "
                              f"{device.name}, over --latency-budget {budget_ms:g}",
                              "prune more (--prune-macs, --depth) or loosen the budget; `edgekit search --device` "
                              "times every candidate there", manifest)
    return manifest
