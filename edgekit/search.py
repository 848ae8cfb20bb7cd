"""`edgekit search`: the compression choices for a target, their Pareto front, and the best one
that meets the budget, built.

Candidates are kept-MAC fractions (channel pruning with distillation from the model as loaded;
1.0 is the model as it is), each also with half of the model's repeated blocks dropped where it has
them (depth pruning, stages/depth.py: fewer ops, which is what turns into time on a small transformer,
where per-op dispatch outweighs the MACs), and low-rank factorisations (where the cost model says
they save time), times quantization schemes (static int8 by default; `--quant static,fp16,dynamic`),
times formats (their kernels on the target differ). Each is a whole `edgekit build` (prune or factorise ->
distill -> quantize -> export), judged the way the build judges, and scored on three axes:
agreement with the model as loaded, latency, and the artifact's size.

Latency is, in order of preference, what the user's own board measures (`--device`: each candidate
deployed and timed there, p50 of the runner's runs; the latency budget is then checked on that), the
guest instructions of one inference on the target's emulated core (`--emulate`; a count, not a time:
it orders candidates, the budget stays on the prediction), or what the cost model predicts on the
target (validate/cost.py). The record says which (`axis`).

Nothing is chosen on the data that is reported. Candidates are judged on the calibration inputs,
as every choice of a build is (build/quality.py, build/fallback.py): each candidate build takes
them as its evaluation data, and each artifact is scored by its accuracy there where they have
labels, its top-1 agreement with the model as loaded, and, between equal agreements, by how far its
outputs drift from that model's (divergence). Not a part of the training data: the model as loaded
was trained on it, so its own answers there are remembered, not predicted, and every student would
look worse against them than it is (the digits model is right on 100 % of a held-out fifth of its
training data, 99.17 % of its evaluation data). Where the calibration data has labels (y), the accuracy a candidate loses is
measured there, against the unpruned model's accuracy on the same inputs: data nothing was trained on
and nothing reports. Without labels, disagreement bounds it (a sample where a candidate agrees with the
unpruned model is right or wrong as that model is), conservatively: on vit_digits, whose unpruned model
is wrong on 2 % of its evaluation data, a student that disagrees on 3 % scores as well as it. The
estimate a teacher's own probabilities give (the expected accuracy of each answer under them) is no
better: neural networks are overconfident (Guo et al. 2017, "On Calibration of Modern Neural
Networks"), and it put that student 1.5 points down where it gained 0.3. The choice -- the fastest
candidate within the accuracy budget and `--latency-budget`/`--size-budget` -- is then built again
with the user's evaluation data, whose own budget check (build/budget.py), on data that chose
nothing, is the verdict (exit 3 if it misses; exit 3 too if no candidate met the budget, showing the
closest).

Cheap first: before anything is trained, every fraction is pruned on a copy and predicted by the
cost model (seconds); with a latency or size budget, the ones predicted over it are not trained.
The rest run from the least pruned to the most, a progress bar showing the best so far;
`--trials` and `--time-limit` bound them. With an accuracy budget, a candidate's float student is
judged before its int8 export (most of a candidate's time): one that already misses is not exported.
Every finished candidate is written to `search.json` as it ends, so a second run with the same inputs
resumes where the first stopped (and the step cache keeps the distilled students). `pareto.json`
holds the front; `report.html` plots it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.emulator.check import emulated_core
from edgekit.errors import BuildGateFailed, EdgekitError, UsageError
from edgekit.manifest import write_json_atomic, write_text_atomic
from edgekit.report.html import render_search

FRACTIONS = (1.0, 0.75, 0.5, 0.35, 0.25, 0.1)  # kept MAC fractions tried by default
# Rank fractions tried by default where the cost model predicts the factorised model at most
# LOWRANK_HELPS of the unpruned one's latency on the target (Linear-heavy models: transformers);
# elsewhere (convolutions) factorising saves nothing worth a candidate build.
LOWRANK = (0.5,)
LOWRANK_HELPS = 0.9
# Shares of the repeated blocks kept, tried by default with every kept-MAC fraction where the model
# has at least two blocks that can be dropped (three transformer layers: two kept).
DEPTHS = (0.5,)
# Latency axes, best first: the key in each result and how the report names it.
AXES = {"measured_ms": "latency measured on {device} (ms, p50)",
        "instructions": "guest instructions per inference on the emulated {cpu}",
        "predicted_ms": "latency predicted on {target} (ms)"}
SEARCH_RECORD, PARETO, REPORT = "search.json", "pareto.json", "report.html"
# Each candidate is timed on a --device for at least this long (seconds): a tiny model's 50 runs
# take a millisecond, too short for a median that orders candidates a few percent apart.
TIMING_SECONDS = 2.0


@dataclass(frozen=True)
class SearchOptions:
    fractions: tuple[float, ...] = FRACTIONS
    formats: tuple[str, ...] = ()  # (): the target's format and onnx
    schemes: tuple[str, ...] = ("static",)  # quantization schemes (formats/base.py SCHEMES)
    lowrank: tuple[float, ...] | None = None  # rank fractions; None: LOWRANK where it helps, (): none
    depths: tuple[float, ...] | None = None  # shares of the repeated blocks kept; None: DEPTHS where there are blocks
    max_accuracy_drop: float | None = None  # points, against the unpruned model, on the calibration data
    latency_budget_ms: float | None = None  # measured on `device` where given, else predicted on the target
    size_budget_mb: float | None = None
    trials: int | None = None  # at most this many candidate builds
    time_limit_s: float | None = None  # no new candidate after this many seconds
    seed: int = 0
    device: object | None = None  # a deploy.Device: every candidate is timed there
    bench: object | None = None  # deploy.BenchOptions for those runs
    allow_arch_mismatch: bool = False  # time on a device that is not the target's architecture (e.g. this host)
    emulate: bool = False  # count each candidate's guest instructions on the target's emulated core

    def check(self) -> None:
        from edgekit.formats.base import SCHEMES

        if not self.fractions or any(not 0 < f <= 1 for f in self.fractions):
            raise UsageError(f"--fractions must be kept-MAC fractions in (0, 1], got {list(self.fractions)}",
                             hint="e.g. --fractions 1,0.5,0.25")
        if any(not 0 < f < 1 for f in self.depths or ()):
            raise UsageError(f"--depth must be shares of the repeated blocks kept, in (0, 1), got {list(self.depths)}",
                             hint="e.g. --depth 0.5, or --depth none")
        if any(not 0 < f < 1 for f in self.lowrank or ()):
            raise UsageError(f"--lowrank must be rank fractions in (0, 1), got {list(self.lowrank)}",
                             hint="e.g. --lowrank 0.5,0.25, or --lowrank none")
        if not self.schemes or any(q not in SCHEMES for q in self.schemes):
            raise UsageError(f"--quant must be schemes among {', '.join(SCHEMES)}, got {','.join(self.schemes)}",
                             hint="e.g. --quant static,fp16")
        for flag, value in (("--max-accuracy-drop", self.max_accuracy_drop), ("--latency-budget", self.latency_budget_ms),
                            ("--size-budget", self.size_budget_mb), ("--trials", self.trials),
                            ("--time-limit", self.time_limit_s)):
            if value is not None and (value < 0 if flag == "--max-accuracy-drop" else value <= 0):
                raise UsageError(f"{flag} must be a positive number, got {value:g}")


def plan(loaded, target, options: SearchOptions, formats) -> list[dict]:
    """Every candidate with its cost-model figures, from pruned or factorised copies (nothing trained):
    cheap first."""
    from edgekit.build.budget import pruned_prediction
    from edgekit.formats.base import QuantConfig, check_supported

    kernels = tuple({f.ARM_KERNELS for f in formats})
    predictions: dict[tuple, dict] = {}

    def predicted(fraction, rank=None, keep=None) -> dict:  # each shape pruned, counted and predicted once
        if (fraction, rank, keep) not in predictions:
            predictions[fraction, rank, keep] = pruned_prediction(loaded.model, loaded.example, target, fraction,
                                                                  kernels, lowrank=rank, depth=keep)
        return predictions[fraction, rank, keep]

    fractions = sorted(set(options.fractions), reverse=True)
    shapes = [(fraction, None, None) for fraction in fractions]  # (kept MACs, rank, kept blocks)
    for keep in sorted(set(_depths(loaded, options)), reverse=True):
        shapes += [(fraction, None, keep) for fraction in fractions]
    for rank in sorted(set(LOWRANK if options.lowrank is None else options.lowrank), reverse=True):
        if options.lowrank is None:  # the default: only where the cost model says it saves time
            k = formats[0].ARM_KERNELS
            ms, unpruned_ms = predicted(1.0, rank)["latency_ms"][k], predicted(1.0)["latency_ms"][k]
            if ms is None or ms > LOWRANK_HELPS * unpruned_ms:
                continue
        shapes.append((1.0, rank, None))
    out = []
    for fraction, rank, keep in shapes:
        p = predicted(fraction, rank, keep)
        for fmt in formats:
            for scheme in options.schemes:
                # fp16 kernels are not calibrated: fp32 is the conservative bound (as validate predicts)
                ms = p["fp32_latency_ms" if scheme == "fp16" else "latency_ms"][fmt.ARM_KERNELS]
                c = {"id": candidate_id(fraction, rank, fmt.NAME, scheme, keep), "macs_kept": fraction,
                     "lowrank": rank, "depth": keep, "format": fmt.NAME, "scheme": scheme,
                     "planned": {"macs": p["macs"], "predicted_ms": ms, "int8_weight_mb": p["int8_weight_mb"]}}
                try:  # a scheme the format or the target cannot run (fp16 on a Cortex-A72) is no candidate
                    check_supported(fmt, QuantConfig(scheme=scheme), target)
                except UsageError as e:
                    c["refused"] = e.message
                out.append(c)
    return out


def _depths(loaded, options: SearchOptions) -> tuple[float, ...]:
    """The depth shares to try: the asked ones (a model without blocks to drop is then an error), else
    DEPTHS where the model has at least two blocks to drop."""
    from edgekit.stages.depth import droppable_blocks

    if options.depths == ():
        return ()
    blocks = droppable_blocks(loaded.model, loaded.example)
    if len(blocks) >= 2:
        return options.depths or DEPTHS
    if options.depths:
        raise UsageError(f"--depth: the model has {len(blocks) or 'no'} repeated block(s) that can be dropped",
                         hint="leave out --depth (pruning narrows it instead)")
    return ()


def candidate_id(fraction: float, rank: float | None, fmt: str, scheme: str, depth: float | None = None) -> str:
    """'macs0.5-onnx', 'depth0.5-macs1-onnx', 'rank0.5-executorch-fp16': what was cut, the format, the
    scheme where not static int8."""
    shape = f"rank{rank:g}" if rank is not None else f"macs{fraction:g}"
    return ("" if depth is None else f"depth{depth:g}-") + f"{shape}-{fmt}" + ("" if scheme == "static" else f"-{scheme}")


def latency_axis(options: SearchOptions) -> str:
    """The result key candidates are ordered by (AXES): the device's timing, else the emulated count,
    else the prediction."""
    return "measured_ms" if options.device is not None else "instructions" if options.emulate else "predicted_ms"


def _budget_ms(r: dict, options: SearchOptions):
    """The latency the budget is checked on: measured on the device where one is given, else predicted."""
    return r.get("measured_ms") if options.device is not None else r.get("predicted_ms")


def _over_budget_by_plan(candidate: dict, options: SearchOptions) -> str | None:
    """Why the cost model rules a candidate out before it is trained (None: it does not). Not on latency
    when a device is given: the device decides that."""
    p = candidate["planned"]
    if options.latency_budget_ms is not None and options.device is None and p["predicted_ms"] is not None \
            and p["predicted_ms"] > options.latency_budget_ms:
        return f"predicted {p['predicted_ms']} ms before training, over --latency-budget {options.latency_budget_ms:g}"
    if options.size_budget_mb is not None and p["int8_weight_mb"] > options.size_budget_mb:
        return f"{p['int8_weight_mb']} MB of int8 weights, over --size-budget {options.size_budget_mb:g}"
    return None


def quality(r: dict) -> tuple:
    """A candidate's quality, best highest: its accuracy on the calibration data where it has labels, its
    agreement with the unpruned model, then (on a tie: a few hundred calibration inputs leave many) how close
    its outputs stay to the unpruned model's (divergence, lower is closer)."""
    return r.get("accuracy") or 0.0, r["agreement"], -(r.get("divergence") or 0.0)


def pareto_front(results: list[dict], axis: str = "predicted_ms") -> list[dict]:
    """The candidates no other beats on all three: quality, latency (`axis`), file size."""
    def beats(a, b):
        ge = quality(a) >= quality(b) and a[axis] <= b[axis] and a["bytes"] <= b["bytes"]
        gt = quality(a) > quality(b) or a[axis] < b[axis] or a["bytes"] < b["bytes"]
        return ge and gt

    scored = [r for r in results if r.get("agreement") is not None and r.get(axis) is not None]
    front = [r for r in scored if not any(beats(o, r) for o in scored if o is not r)]
    return sorted(front, key=lambda r: r[axis])


@dataclass(frozen=True)
class Reference:
    """The unpruned model on the calibration data: its agreement with itself (100), and its accuracy where
    the calibration data has labels (y) -- then a candidate's loss is measured as accuracy, else bounded
    by disagreement."""
    agreement: float = 100.0
    accuracy: float | None = None

    def loss(self, result: dict) -> float:
        """Points a candidate loses against the unpruned model on the calibration data."""
        if self.accuracy is not None and result.get("accuracy") is not None:
            return round(self.accuracy - result["accuracy"], 2)
        return round(self.agreement - result["agreement"], 2)

    def says(self, result: dict) -> str:
        if self.accuracy is not None and result.get("accuracy") is not None:
            return (f"{result['accuracy']:.2f} % on the labelled calibration data, {self.loss(result):.2f} points below "
                    f"the unpruned model's {self.accuracy:.2f} %")
        return f"disagrees with the unpruned model on {self.loss(result):.2f} % of the calibration inputs"


def misses(result: dict, reference: Reference, options: SearchOptions) -> list[str]:
    """What keeps a scored candidate from the budget (empty: it meets it)."""
    out = []
    if options.max_accuracy_drop is not None and reference.loss(result) > options.max_accuracy_drop:
        out.append(reference.says(result))
    ms = _budget_ms(result, options)
    if options.latency_budget_ms is not None and (ms is None or ms > options.latency_budget_ms):
        out.append(f"{'measured' if options.device is not None else 'predicted'} {ms} ms")
    if options.size_budget_mb is not None and result["bytes"] / 1e6 > options.size_budget_mb:
        out.append(f"{result['bytes'] / 1e6:.3f} MB")
    return out


def _shortfall(result: dict, reference: Reference, options: SearchOptions) -> float:
    """How far a candidate is from the budget, each budget's overshoot as a share of it (0: meets it)."""
    total = 0.0
    if options.max_accuracy_drop is not None:
        total += max(0.0, reference.loss(result) - options.max_accuracy_drop) / max(options.max_accuracy_drop, 0.1)
    if options.latency_budget_ms is not None:
        total += max(0.0, (_budget_ms(result, options) or float("inf")) / options.latency_budget_ms - 1)
    if options.size_budget_mb is not None:
        total += max(0.0, result["bytes"] / 1e6 / options.size_budget_mb - 1)
    return total


def _candidate_recipe(base, candidate: dict, options: SearchOptions):
    from edgekit.recipe import recipe_from_options

    fraction, rank, scheme = candidate["macs_kept"], candidate.get("lowrank"), candidate.get("scheme", "static")
    depth = candidate.get("depth")
    cut = fraction < 1 or rank is not None or depth is not None
    recipe = recipe_from_options(base, formats=(candidate["format"],), prune_macs=fraction if fraction < 1 else None,
                                 lowrank=rank, depth=depth, distill=True if cut else None, quant=scheme)
    if scheme != "static":  # what the app's recipe says of calibration applies to static int8 only
        recipe = dataclasses.replace(recipe, quant=dataclasses.replace(recipe.quant, calibration=None, smooth_quant=None))
    return recipe


def _score(manifest: dict, candidate: dict) -> dict:
    prediction = ((manifest.get("validation") or {}).get("formats") or {}).get(candidate["format"], {}).get("prediction") or {}
    steps = {s["stage"]: s for s in manifest.get("steps", [])}
    return {**candidate, "predicted_ms": prediction.get("latency_ms"), "bytes": manifest["artifact"]["bytes"],
            "artifact": manifest["artifact"]["file"],
            "macs": (steps.get("distill") or steps.get("prune") or steps.get("lowrank") or steps.get("depth")
                     or steps.get("measure") or {}).get("macs"),
            "gate_passed": manifest["formats"][candidate["format"]]["gate"]["passed"],
            "build_dir": manifest.get("build_dir")}


def run_search(spec, target, options: SearchOptions, out: Path, steps, base_recipe=None) -> dict:
    """The search (see the module's docstring); returns its record (also search.json)."""
    from edgekit.formats import get_format
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
        if options.emulate and not hasattr(fmt, "emulate"):
            raise UsageError(f"--emulate: {fmt.NAME} artifacts do not run on the emulated board "
                             f"({fmt.EMULATION_UNSUPPORTED})", hint="choose --format among the others, or leave out --emulate")
    base = base_recipe or BuildRecipe()
    axis = latency_axis(options)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        core = stack.enter_context(emulated_core(target)) if options.emulate else None  # refused early if not built
        return _search(spec, target, options, out, steps, base, formats, axis, core, started)


def _search(spec, target, options: SearchOptions, out: Path, steps, base, formats, axis: str, core, started: float) -> dict:
    from edgekit.model.data import load_npz
    from edgekit.model.loaded import LoadedModel, model_digest

    with steps.step("load", {"factory": spec.factory}, "load model") as rec:
        # The candidates' evaluation data is the calibration inputs (what they are judged on, see above).
        searched = dataclasses.replace(spec, eval=spec.calib, from_app=spec.from_app - {"eval"})
        loaded = LoadedModel.load(searched, base.calib_samples, warn=steps.warn)  # as each candidate's build loads it
        rec["output"] = model_digest(loaded.model)
        calib = load_npz(spec.calib, spec.inputs, spec.origin("calib"), need_labels=False)
        judged = (calib, spec.inputs, reference_outputs(loaded.model, calib, spec.inputs))
        # Labels in the calibration data (y) let the loss be measured there, on data nothing was trained on
        # and nothing is reported on; without them it is bounded by disagreement. The unpruned model's own
        # outputs, just computed, are judged as they are (not run again).
        reference = Reference(accuracy=judge(_Replayed(judged[2]), *judged)["accuracy"])
    with steps.step("plan", {"fractions": list(options.fractions), "schemes": list(options.schemes)},
                    "predict every candidate (nothing trained)") as rec:
        candidates = plan(loaded, target, options, formats)
        rec["candidates"] = len(candidates)
    if all(c.get("refused") for c in candidates):
        raise UsageError(f"no candidate can be built: {candidates[0]['refused']}",
                         hint="choose --quant and --format the target supports (`edgekit targets show "
                              f"{target.name}`)")
    measure = Measurer(options, core, calib, spec.inputs)
    key = {"model": model_digest(loaded.model), "train": _file_digest(spec.train),
           "calib": _file_digest(spec.calib), "target": target.name,
           "recipe": base.to_json(), "seed": options.seed}
    record_path = out / SEARCH_RECORD
    previous = _previous(record_path, key)
    results, skipped, stopped = [], [], None
    todo = []
    for c in candidates:
        why = c.get("refused") or _over_budget_by_plan(c, options)
        if c.get("refused") or why and (c["macs_kept"] < 1 or c["lowrank"] is not None or c["depth"] is not None):
            skipped.append({**{k: v for k, v in c.items() if k != "refused"}, "skipped": why})
        else:
            todo.append(c)
    with steps.step("search", {"candidates": len(todo)}, f"build {len(todo)} candidates") as rec:
        best = None
        for i, c in enumerate(steps.track(todo, len(todo), "candidates")):
            if c["id"] in previous:
                # where the candidate is now: a search dir may have been moved since
                # measured now where the earlier run did not (or on another device)
                results.append(measure({**previous[c["id"]], "build_dir": str(out / "candidates" / c["id"])}))
                _write_record(record_path, key, results, skipped, stopped)
            else:
                if options.trials is not None and len([r for r in results if not r.get("resumed")]) >= options.trials:
                    stopped = f"--trials {options.trials}"
                    break
                if options.time_limit_s is not None and time.monotonic() - started > options.time_limit_s:
                    stopped = f"--time-limit {options.time_limit_s:g} s"
                    break
                results.append(measure(_build_candidate(searched, target, base, c, out, options, judged, loaded,
                                                        reference)))
                _write_record(record_path, key, results, skipped, stopped)
            scored = [r for r in results if r.get("agreement") is not None and r.get(axis) is not None
                      and not misses(r, reference, options)]
            best = min(scored, key=lambda r: (r[axis], tuple(-q for q in quality(r)))) if scored else best
            if best:
                steps.console.print(f"  {i + 1}/{len(todo)} {c['id']}: best so far {best['id']} "
                                    f"({shown_quality(best)}, {shown_latency(best, axis)})")
        rec["stopped"] = stopped
    front = pareto_front(results, axis)
    for r in results:
        r["pareto"] = r in front
        r["misses"] = (misses(r, reference, options) + ([] if r.get(axis) is not None else [f"no {axis}"])
                       if r.get("agreement") is not None else ["failed"])
    meeting = [r for r in results if not r["misses"]]
    chosen = min(meeting, key=lambda r: (r[axis], tuple(-q for q in quality(r)))) if meeting else None
    closest = min((r for r in results if r.get("agreement") is not None),
                  key=lambda r: (_shortfall(r, reference, options), r.get(axis) or float("inf")), default=None)
    label = AXES[axis].format(device=getattr(options.device, "name", None), cpu=getattr(core, "qemu_cpu", None),
                              target=target.name)
    doc = {**_record(key, results, skipped, stopped), "reference_agreement": reference.agreement,
           "reference_accuracy": reference.accuracy,
           "judged_on": "accuracy on the labelled calibration data" if reference.accuracy is not None
           else "agreement with the unpruned model on the calibration inputs (a bound: no labels there)",
           "axis": {"key": axis, "label": label},
           "budget": {"max_accuracy_drop": options.max_accuracy_drop, "latency_budget_ms": options.latency_budget_ms,
                      "size_budget_mb": options.size_budget_mb,
                      "latency_on": "measured" if options.device is not None else "predicted"},
           "pareto": [r["id"] for r in front], "chosen": chosen["id"] if chosen else None,
           "closest": closest["id"] if closest else None, "seconds": round(time.monotonic() - started, 1)}
    write_json_atomic(out / PARETO, {"axes": ["agreement, then divergence", axis, "bytes"],
                                     "reference_agreement": reference.agreement,
                                     "reference_accuracy": reference.accuracy,
                                     "front": front, "chosen": doc["chosen"]})
    write_text_atomic(out / REPORT, render_search(doc, results, spec.name, target.name))
    write_json_atomic(record_path, doc)
    if chosen is None:
        shown = f"closest: {closest['id']} ({shown_quality(closest)}, {shown_latency(closest, axis)}; " \
                f"{', '.join(closest['misses'])})" if closest else "no candidate was built"
        raise BuildGateFailed(f"no candidate meets the budget; {shown}",
                              f"the candidates are in {out} (pareto.json, report.html); loosen the budget or give "
                              "more training data", doc)
    with steps.step("final", {"candidate": chosen["id"]}, f"build {chosen['id']} from all of the data") as rec:
        # With a device, the build's own latency check (the cost model's) gives way to the device's, below.
        recipe = dataclasses.replace(_candidate_recipe(base, chosen, options),
                                     gate=dataclasses.replace(base.gate, max_accuracy_drop=options.max_accuracy_drop,
                                                              latency_budget_ms=None if options.device is not None
                                                              else options.latency_budget_ms,
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
        if options.device is not None:  # the verdict on latency: the final artifact timed on the device
            timed = measure.on_device(out / "best", final["artifact"]["file"], chosen["format"])
            doc["final"].update(timed)
            write_json_atomic(record_path, doc)
            if options.latency_budget_ms is not None and timed["measured_ms"] > options.latency_budget_ms:
                raise BuildGateFailed(f"{chosen['id']} built from all of the data measures {timed['measured_ms']} ms on "
                                      f"{options.device.name}, over --latency-budget {options.latency_budget_ms:g}",
                                      f"the build is in {out / 'best'}; loosen the budget or search further cuts "
                                      "(--fractions)", doc)
    write_json_atomic(record_path, doc)
    return doc


def shown_quality(r: dict) -> str:
    """A result's accuracy on the labelled calibration data, else its agreement with the unpruned model."""
    if r.get("accuracy") is not None:
        return f"accuracy {r['accuracy']:.2f} %"
    return f"agreement {r['agreement']:.2f} %"


def shown_latency(r: dict, axis: str) -> str:
    """A result's latency as the terminal shows it, on the search's axis."""
    value = r.get(axis)
    if value is None:
        return f"no {axis}"
    if axis == "instructions":
        return f"{value / 1e6:.3g} M guest instructions"
    return f"{value} ms {'measured' if axis == 'measured_ms' else 'predicted'}"


class Measurer:
    """What the search learns of a built candidate beyond the cost model: its latency on the user's
    device (deploy.deploy_to with a benchmark: pushed, checked, timed there, the run recorded in the
    candidate's build dir like any `edgekit deploy --bench`), and the guest instructions of one inference
    (the first calibration input) on the target's emulated core."""

    def __init__(self, options: SearchOptions, core, calib, specs):
        self.options, self.core = options, core
        self.sample = [calib.arrays[s.name][:1] for s in specs]
        self.names = [s.name for s in specs]

    def __call__(self, r: dict) -> dict:
        if r.get("agreement") is None or not r.get("build_dir"):
            return r
        artifact = r.get("artifact") or json.loads((Path(r["build_dir"]) / "manifest.json").read_text())["artifact"]["file"]
        if self.options.device is not None and r.get("measured_on") != self.options.device.name:
            r = {**r, **self.on_device(Path(r["build_dir"]), artifact, r["format"])}
        if self.core is not None and r.get("emulated_cpu") != self.core.qemu_cpu:
            r = {**r, **self.on_core(Path(r["build_dir"]) / artifact, r["format"])}
        return r

    def on_device(self, build_dir: Path, artifact: str, fmt: str) -> dict:
        """The device is the search's clock: a failed one stops the search (DeployFailed)."""
        from edgekit.deploy.records import open_build
        from edgekit.deploy.session import timed_on

        t = timed_on(open_build(build_dir, fmt), self.options.device, self.options.bench,
                     self.options.allow_arch_mismatch, f"timing {build_dir.name}/{artifact}")
        return {"measured_ms": t["p50_ms"], "measured_p90_ms": t["p90_ms"], "measured_on": t["device"],
                "measured_threads": t["threads"], "device_run": t["run"]}

    def on_core(self, artifact: Path, fmt: str) -> dict:
        from edgekit.emulator.check import EmulationFailed
        from edgekit.formats import get_format

        try:
            _, count, _ = get_format(fmt).emulate(self.core, artifact, [self.sample], self.names)
        except EmulationFailed as e:
            return {"instructions": None, "emulated_cpu": self.core.qemu_cpu, "emulation_error": str(e)}
        return {"instructions": count, "emulated_cpu": self.core.qemu_cpu}


def _file_digest(path: Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def judge(runner, data, specs, reference: list) -> dict:
    """{agreement, divergence, accuracy} of an artifact's first output against the unpruned float model's on
    the calibration inputs. Agreement: top-1 agreement %. Divergence: KL(reference || artifact) of the
    softmaxes for class scores, else the squared error relative to the reference's mean square; label-free
    and continuous. Outputs that are not class scores agree where they are within 1e-2 relative error.
    Accuracy: top-1 % against the calibration data's labels, where it has them (else None)."""
    total, agree, right = 0.0, 0, 0
    classes = False
    for i, want in enumerate(reference):
        got = runner.run([data.arrays[s.name][i:i + 1] for s in specs])[0].astype(np.float64).reshape(want.shape)
        if want.ndim == 2 and want.shape[-1] > 1:
            classes = True
            agree += int((got.argmax(-1) == want.argmax(-1)).all())
            if data.labels is not None:
                right += int((got.argmax(-1) == data.labels[i:i + 1]).all())
            p, q = (np.exp(v - v.max(-1, keepdims=True)) for v in (want, got))
            p, q = p / p.sum(-1, keepdims=True), q / q.sum(-1, keepdims=True)
            total += float((p * (np.log(p + 1e-12) - np.log(q + 1e-12))).sum(-1).mean())
        else:
            error = float(((got - want) ** 2).mean() / max((want ** 2).mean(), 1e-12))
            total += error
            agree += int(error < 1e-2)
    n = max(len(reference), 1)
    return {"agreement": round(100.0 * agree / n, 2), "divergence": round(total / n, 6),
            "accuracy": round(100.0 * right / n, 2) if classes and data.labels is not None else None}


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
                     judged=None, loaded=None, reference: Reference = Reference()) -> dict:
    recipe = _candidate_recipe(base, candidate, options)
    begin = time.monotonic()
    build_dir = out / "candidates" / candidate["id"]
    if judged is not None and loaded is not None and options.max_accuracy_drop is not None and recipe.stages.any:
        student = _float_student(loaded, target, recipe, judged)
        if reference.loss(student) > options.max_accuracy_drop:
            # Quantizing adds error, it does not take it away: int8 would miss too, so it is not exported
            # (cheap first: an int8 export is most of a candidate's time).
            return {**candidate, "agreement": None, "float_student": student,
                    "error": f"its float student already misses: {reference.says(student)}; not exported",
                    "seconds": round(time.monotonic() - begin, 1)}
    try:
        manifest = _build(spec, target, recipe, build_dir)
    except BuildGateFailed as e:  # a candidate whose int8 misses the quality gate is still a point, marked
        manifest = e.manifest
    except EdgekitError as e:
        return {**candidate, "agreement": None, "error": e.message, "seconds": round(time.monotonic() - begin, 1)}
    scored = _score(manifest, candidate)
    if judged is not None:  # (calibration inputs, input specs, the unpruned model's outputs on them)
        from edgekit.formats import get_format

        data, specs, outputs = judged
        runner = get_format(candidate["format"]).load(build_dir / manifest["artifact"]["file"], threads=1)
        scored.update(judge(runner, data, specs, outputs))
    return {**scored, "seconds": round(time.monotonic() - begin, 1)}


def _float_student(loaded, target, recipe, judged) -> dict:
    """The candidate's stages (pruning, distillation ...) run as its build will run them -- the step cache
    then hands the build the same student -- and the float student judged like an artifact."""
    from edgekit.cache import StepCache
    from edgekit.progress import Steps
    from edgekit.stages import chain as stage_chain

    chain = stage_chain.plan(recipe.stages, target)
    student = stage_chain.run(chain, stage_chain.StageContext(loaded, Steps(show=False), recipe.stages.nproc), None,
                              StepCache())
    return judge(_TorchRunner(student), *judged)


class _Replayed:
    """Outputs already computed, handed back one sample at a time as a runner's `run` would (judge())."""

    def __init__(self, outputs: list):
        self._next = iter(outputs)

    def run(self, inputs):
        return [next(self._next)]


class _TorchRunner:
    """A float model with an artifact runner's `run` (judge() takes either)."""

    def __init__(self, model):
        self.model = model.eval()

    def run(self, inputs):
        import torch

        from edgekit.compare import all_outputs

        with torch.no_grad():
            return all_outputs(self.model(*(torch.from_numpy(np_array) for np_array in inputs)))


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
