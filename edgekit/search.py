"""`edgekit search`: the compression choices for a target, their Pareto front, and the best one
that meets the budget, built.

Candidates are kept-MAC fractions (channel pruning with distillation from the model as loaded;
1.0 is the model as it is) times formats (their int8 kernels on the target differ). Each is a
whole `edgekit build` (prune -> distill -> static int8 -> export), judged the way the build judges,
and scored on three axes: agreement with the model as loaded, the latency the cost model predicts
on the target (validate/cost.py), and the artifact's size.

Nothing is chosen on the data that is reported. Candidates are judged on the calibration inputs,
as every choice of a build is (build/quality.py, build/fallback.py): each candidate build takes
them as its evaluation data, and each artifact is scored by its top-1 agreement with the model as
loaded there, and, between equal agreements, by how far its outputs drift from that model's
(divergence). Not a part of the training data: the model as loaded was trained on it, so its own
answers there are remembered, not predicted, and every student would look worse against them than
it is (the digits model is right on 100 % of a held-out fifth of its training data, 99.17 % of its
evaluation data). Disagreement bounds the accuracy a candidate can lose (a sample where it agrees
with the unpruned model is right or wrong as that model is), so `--max-accuracy-drop` is checked
on it, conservatively, and needs no labels. The choice -- the fastest predicted candidate within
the accuracy budget and `--latency-budget`/`--size-budget` -- is then built again with the user's
evaluation data, whose own budget check (build/budget.py), on data that chose nothing, is the
verdict (exit 3 if it misses; exit 3 too if no candidate met the budget, showing the closest).

Cheap first: before anything is trained, every fraction is pruned on a copy and predicted by the
cost model (seconds); with a latency or size budget, the ones predicted over it are not trained.
The rest run from the least pruned to the most, a progress bar showing the best so far;
`--trials` and `--time-limit` bound them. Every finished candidate is written to `search.json` as
it ends, so a second run with the same inputs resumes where the first stopped (and the step cache
keeps the distilled students). `pareto.json` holds the front; `report.html` plots it.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.errors import BuildGateFailed, EdgekitError, UsageError
from edgekit.manifest import write_json_atomic, write_text_atomic
from edgekit.report.html import render_search

FRACTIONS = (1.0, 0.75, 0.5, 0.35, 0.25)  # kept MAC fractions tried by default
SEARCH_RECORD, PARETO, REPORT = "search.json", "pareto.json", "report.html"


@dataclass(frozen=True)
class SearchOptions:
    fractions: tuple[float, ...] = FRACTIONS
    formats: tuple[str, ...] = ()  # (): the target's format and onnx
    max_accuracy_drop: float | None = None  # points, against the unpruned model, on the search's validation part
    latency_budget_ms: float | None = None  # predicted on the target
    size_budget_mb: float | None = None
    trials: int | None = None  # at most this many candidate builds
    time_limit_s: float | None = None  # no new candidate after this many seconds
    seed: int = 0

    def check(self) -> None:
        if not self.fractions or any(not 0 < f <= 1 for f in self.fractions):
            raise UsageError(f"--fractions must be kept-MAC fractions in (0, 1], got {list(self.fractions)}",
                             hint="e.g. --fractions 1,0.5,0.25")
        for flag, value in (("--max-accuracy-drop", self.max_accuracy_drop), ("--latency-budget", self.latency_budget_ms),
                            ("--size-budget", self.size_budget_mb), ("--trials", self.trials),
                            ("--time-limit", self.time_limit_s)):
            if value is not None and (value < 0 if flag == "--max-accuracy-drop" else value <= 0):
                raise UsageError(f"{flag} must be a positive number, got {value:g}")


def plan(loaded, target, options: SearchOptions, formats) -> list[dict]:
    """Every candidate with its cost-model figures, from pruned copies (nothing trained): cheap first."""
    from edgekit.build.budget import pruned_prediction

    out = []
    for fraction in sorted(set(options.fractions), reverse=True):
        p = pruned_prediction(loaded.model, loaded.example, target, fraction, tuple({f.ARM_KERNELS for f in formats}))
        for fmt in formats:
            out.append({"id": f"macs{fraction:g}-{fmt.NAME}", "macs_kept": fraction, "format": fmt.NAME,
                        "planned": {"macs": p["macs"], "predicted_ms": p["latency_ms"][fmt.ARM_KERNELS],
                                    "int8_weight_mb": p["int8_weight_mb"]}})
    return out


def _over_budget_by_plan(candidate: dict, options: SearchOptions) -> str | None:
    p = candidate["planned"]
    if options.latency_budget_ms is not None and p["predicted_ms"] is not None and p["predicted_ms"] > options.latency_budget_ms:
        return f"predicted {p['predicted_ms']} ms before training, over --latency-budget {options.latency_budget_ms:g}"
    if options.size_budget_mb is not None and p["int8_weight_mb"] > options.size_budget_mb:
        return f"{p['int8_weight_mb']} MB of int8 weights, over --size-budget {options.size_budget_mb:g}"
    return None


def quality(r: dict) -> tuple:
    """A candidate's quality, best highest: its agreement with the unpruned model, then (on a tie: a few
    hundred calibration inputs leave many) how close its outputs stay to the unpruned model's (divergence, lower is closer)."""
    return r["agreement"], -(r.get("divergence") or 0.0)


def pareto_front(results: list[dict]) -> list[dict]:
    """The candidates no other beats on all three: quality, predicted latency, file size."""
    def beats(a, b):
        ge = quality(a) >= quality(b) and a["predicted_ms"] <= b["predicted_ms"] and a["bytes"] <= b["bytes"]
        gt = quality(a) > quality(b) or a["predicted_ms"] < b["predicted_ms"] or a["bytes"] < b["bytes"]
        return ge and gt

    scored = [r for r in results if r.get("agreement") is not None and r.get("predicted_ms") is not None]
    front = [r for r in scored if not any(beats(o, r) for o in scored if o is not r)]
    return sorted(front, key=lambda r: r["predicted_ms"])


def misses(result: dict, reference: float | None, options: SearchOptions) -> list[str]:
    """What keeps a scored candidate from the budget (empty: it meets it)."""
    out = []
    if options.max_accuracy_drop is not None and reference is not None and \
            reference - result["agreement"] > options.max_accuracy_drop:
        out.append(f"disagrees with the unpruned model on {reference - result['agreement']:.2f} % of the calibration inputs")
    if options.latency_budget_ms is not None and (result["predicted_ms"] or 0) > options.latency_budget_ms:
        out.append(f"predicted {result['predicted_ms']} ms")
    if options.size_budget_mb is not None and result["bytes"] / 1e6 > options.size_budget_mb:
        out.append(f"{result['bytes'] / 1e6:.3f} MB")
    return out


def _shortfall(result: dict, reference: float | None, options: SearchOptions) -> float:
    """How far a candidate is from the budget, each budget's overshoot as a share of it (0: meets it)."""
    total = 0.0
    if options.max_accuracy_drop is not None and reference is not None:
        total += max(0.0, reference - result["agreement"] - options.max_accuracy_drop) / max(options.max_accuracy_drop, 0.1)
    if options.latency_budget_ms is not None:
        total += max(0.0, result["predicted_ms"] / options.latency_budget_ms - 1)
    if options.size_budget_mb is not None:
        total += max(0.0, result["bytes"] / 1e6 / options.size_budget_mb - 1)
    return total


def _candidate_recipe(base, candidate: dict, options: SearchOptions):
    from edgekit.recipe import recipe_from_options

    fraction = candidate["macs_kept"]
    return recipe_from_options(base, formats=(candidate["format"],), prune_macs=fraction if fraction < 1 else None,
                               distill=True if fraction < 1 else None)


def _score(manifest: dict, candidate: dict) -> dict:
    prediction = ((manifest.get("validation") or {}).get("formats") or {}).get(candidate["format"], {}).get("prediction") or {}
    steps = {s["stage"]: s for s in manifest.get("steps", [])}
    return {**candidate, "predicted_ms": prediction.get("latency_ms"), "bytes": manifest["artifact"]["bytes"],
            "macs": (steps.get("distill") or steps.get("prune") or steps.get("measure") or {}).get("macs"),
            "gate_passed": manifest["formats"][candidate["format"]]["gate"]["passed"],
            "build_dir": manifest.get("build_dir")}


def run_search(spec, target, options: SearchOptions, out: Path, steps, base_recipe=None) -> dict:
    """The search (see the module's docstring); returns its record (also search.json)."""
    from edgekit.formats import get_format
    from edgekit.model.data import load_npz
    from edgekit.model.loaded import LoadedModel, model_digest
    from edgekit.recipe import BuildRecipe

    options.check()
    if spec.train is None:
        raise UsageError("edgekit search trains its candidates (distillation after pruning): it needs training data",
                         hint="pass --train train.npz (labels optional), or set data.train in edgekit.toml")
    if spec.calib is None:
        raise UsageError("edgekit search judges its candidates on the calibration inputs: it needs them",
                         hint="pass --calib calib.npz (inputs the model was not trained on; no labels needed)")
    formats = [get_format(f) for f in (options.formats or dict.fromkeys((target.format, "onnx")))]
    for fmt in formats:
        if fmt.available() is not None:
            raise UsageError(f"--format {fmt.NAME}: {fmt.available()}", hint=getattr(fmt, "INSTALL_HINT", None))
    base = base_recipe or BuildRecipe()
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with steps.step("load", {"factory": spec.factory}, "load model") as rec:
        loaded = LoadedModel.load(spec, warn=steps.warn)
        rec["output"] = model_digest(loaded.model)
        # The candidates' evaluation data is the calibration inputs (what they are judged on, see above).
        searched = dataclasses.replace(spec, eval=spec.calib, from_app=spec.from_app - {"eval"})
        calib = load_npz(spec.calib, spec.inputs, spec.origin("calib"), need_labels=False)
        judged = (calib, spec.inputs, reference_outputs(loaded.model, calib, spec.inputs))
    with steps.step("plan", {"fractions": list(options.fractions)}, "predict every candidate (nothing trained)") as rec:
        candidates = plan(loaded, target, options, formats)
        rec["candidates"] = len(candidates)
    key = {"model": model_digest(loaded.model), "train": _file_digest(spec.train),
           "calib": _file_digest(spec.calib), "target": target.name,
           "recipe": base.to_json(), "seed": options.seed}
    record_path = out / SEARCH_RECORD
    previous = _previous(record_path, key)
    results, skipped, stopped = [], [], None
    todo = []
    for c in candidates:
        why = _over_budget_by_plan(c, options)
        if why and c["macs_kept"] < 1:
            skipped.append({**c, "skipped": why})
        else:
            todo.append(c)
    with steps.step("search", {"candidates": len(todo)}, f"build {len(todo)} candidates") as rec:
        best = None
        for i, c in enumerate(steps.track(todo, len(todo), "candidates")):
            if c["id"] in previous:
                results.append(previous[c["id"]])
            else:
                if options.trials is not None and len([r for r in results if not r.get("resumed")]) >= options.trials:
                    stopped = f"--trials {options.trials}"
                    break
                if options.time_limit_s is not None and time.monotonic() - started > options.time_limit_s:
                    stopped = f"--time-limit {options.time_limit_s:g} s"
                    break
                results.append(_build_candidate(searched, target, base, c, out, options, judged))
                _write_record(record_path, key, results, skipped, stopped)
            reference = REFERENCE
            scored = [r for r in results if r.get("agreement") is not None and not misses(r, reference, options)]
            best = min(scored, key=lambda r: (r["predicted_ms"], tuple(-q for q in quality(r)))) if scored else best
            if best:
                steps.console.print(f"  {i + 1}/{len(todo)} {c['id']}: best so far {best['id']} "
                                    f"({best['agreement']:.2f} %, predicted {best['predicted_ms']} ms)")
        rec["stopped"] = stopped
    reference = REFERENCE
    front = pareto_front(results)
    for r in results:
        r["pareto"] = r in front
        r["misses"] = misses(r, reference, options) if r.get("agreement") is not None else ["failed"]
    meeting = [r for r in results if not r["misses"]]
    chosen = min(meeting, key=lambda r: (r["predicted_ms"], tuple(-q for q in quality(r)))) if meeting else None
    closest = min((r for r in results if r.get("agreement") is not None),
                  key=lambda r: (_shortfall(r, reference, options), r["predicted_ms"]), default=None)
    doc = {**_record(key, results, skipped, stopped), "reference_agreement": reference,
           "budget": {"max_accuracy_drop": options.max_accuracy_drop, "latency_budget_ms": options.latency_budget_ms,
                      "size_budget_mb": options.size_budget_mb},
           "pareto": [r["id"] for r in front], "chosen": chosen["id"] if chosen else None,
           "closest": closest["id"] if closest else None, "seconds": round(time.monotonic() - started, 1)}
    write_json_atomic(out / PARETO, {"axes": ["agreement, then divergence", "predicted_ms", "bytes"],
                                     "reference_agreement": reference,
                                     "front": front, "chosen": doc["chosen"]})
    write_text_atomic(out / REPORT, render_search(doc, results, spec.name, target.name))
    write_json_atomic(record_path, doc)
    if chosen is None:
        shown = f"closest: {closest['id']} ({closest['agreement']:.2f} %, predicted {closest['predicted_ms']} ms; " \
                f"{', '.join(closest['misses'])})" if closest else "no candidate was built"
        raise BuildGateFailed(f"no candidate meets the budget; {shown}",
                              f"the candidates are in {out} (pareto.json, report.html); loosen the budget or give "
                              "more training data", doc)
    with steps.step("final", {"candidate": chosen["id"]}, f"build {chosen['id']} from all of the data") as rec:
        recipe = dataclasses.replace(_candidate_recipe(base, chosen, options),
                                     gate=dataclasses.replace(base.gate, max_accuracy_drop=options.max_accuracy_drop,
                                                              latency_budget_ms=options.latency_budget_ms,
                                                              size_budget_mb=options.size_budget_mb))
        try:
            final = _build(spec, target, recipe, out / "best")
        except BuildGateFailed as e:  # the evaluation data, which chose nothing, says the budget is missed
            doc["final"] = {"build_dir": str(out / "best"), "budget": e.manifest.get("budget"), "error": str(e)}
            write_json_atomic(record_path, doc)
            raise BuildGateFailed(f"{chosen['id']} met the budget on the search's validation part but not on the "
                                  f"evaluation data: {e}", e.hint, doc) from None
        doc["final"] = {"build_dir": str(out / "best"), "accuracy": final["metrics"].get("accuracy_artifact"),
                        "budget": final.get("budget")}
        rec["build_dir"] = str(out / "best")
    write_json_atomic(record_path, doc)
    return doc


def _file_digest(path: Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


# Agreement of the model as loaded with itself: what each candidate's agreement is measured from.
REFERENCE = 100.0


def judge(runner, data, specs, reference: list) -> tuple[float, float]:
    """(top-1 agreement %, divergence) of an artifact's first output with the unpruned float model's on
    the calibration inputs. Divergence: KL(reference || artifact) of the softmaxes for class scores,
    else the squared error relative to the reference's mean square; label-free and continuous. Outputs
    that are not class scores agree where they are within 1e-2 relative error."""
    total, agree = 0.0, 0
    for i, want in enumerate(reference):
        got = runner.run([data.arrays[s.name][i:i + 1] for s in specs])[0].astype(np.float64).reshape(want.shape)
        if want.ndim == 2 and want.shape[-1] > 1:
            agree += int((got.argmax(-1) == want.argmax(-1)).all())
            p, q = (np.exp(v - v.max(-1, keepdims=True)) for v in (want, got))
            p, q = p / p.sum(-1, keepdims=True), q / q.sum(-1, keepdims=True)
            total += float((p * (np.log(p + 1e-12) - np.log(q + 1e-12))).sum(-1).mean())
        else:
            error = float(((got - want) ** 2).mean() / max((want ** 2).mean(), 1e-12))
            total += error
            agree += int(error < 1e-2)
    n = max(len(reference), 1)
    return round(100.0 * agree / n, 2), round(total / n, 6)


def reference_outputs(model, data, specs) -> list:
    """The unpruned float model's first output on each calibration input (what judge() compares with)."""
    import torch

    from edgekit.compare import all_outputs

    model.eval()
    with torch.no_grad():
        return [all_outputs(model(*(torch.from_numpy(data.arrays[s.name][i:i + 1]) for s in specs)))[0].astype(np.float64)
                for i in range(len(data))]


def _build(spec, target, recipe, out: Path) -> dict:
    """One whole build, as `edgekit build` runs it (build.run_build), quiet; its manifest with build_dir."""
    from edgekit.build import run_build
    from edgekit.progress import Steps

    try:
        manifest = run_build(spec, target, recipe, out, Steps(show=False))
    except BuildGateFailed as e:
        e.manifest["build_dir"] = str(out)
        raise
    manifest["build_dir"] = str(out)
    return manifest


def _build_candidate(spec, target, base, candidate: dict, out: Path, options: SearchOptions,
                     judged=None) -> dict:
    recipe = _candidate_recipe(base, candidate, options)
    begin = time.monotonic()
    build_dir = out / "candidates" / candidate["id"]
    try:
        manifest = _build(spec, target, recipe, build_dir)
    except BuildGateFailed as e:  # a candidate whose int8 misses the quality gate is still a point, marked
        manifest = e.manifest
    except EdgekitError as e:
        return {**candidate, "agreement": None, "error": e.message, "seconds": round(time.monotonic() - begin, 1)}
    scored = _score(manifest, candidate)
    if judged is not None:  # (calibration inputs, input specs, the unpruned model's outputs on them)
        from edgekit.formats import get_format

        data, specs, reference = judged
        runner = get_format(candidate["format"]).load(build_dir / manifest["artifact"]["file"], threads=1)
        scored["agreement"], scored["divergence"] = judge(runner, data, specs, reference)
    return {**scored, "seconds": round(time.monotonic() - begin, 1)}


def _record(key: dict, results: list[dict], skipped: list[dict], stopped: str | None) -> dict:
    return {"key": key, "results": results, "skipped": skipped, "stopped": stopped}


def _write_record(path: Path, key: dict, results, skipped, stopped) -> None:
    write_json_atomic(path, _record(key, results, skipped, stopped))


def _previous(path: Path, key: dict) -> dict:
    """Finished candidates of an earlier run with the same inputs (resume), by id."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if doc.get("key") != key:
        return {}
    return {r["id"]: {**r, "resumed": True} for r in doc.get("results", []) if r.get("agreement") is not None}
