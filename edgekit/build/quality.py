"""`--quality auto`: when int8 misses the gate, recover, choosing on the calibration data.

Every try calibrates on all of the calibration data and is judged on the same inputs
against the float model, by the build's own label-free gate (cosine, top-1 agreement
on class scores). The evaluation data is never looked at while choosing: it scores
the chosen artifact afterwards, like any other, so the figure the build reports is
not the figure it chose by. (Holding a quarter of the calibration data out instead
cost the artifacts it: EfficientNet-Lite0's .pte calibrated on 24 photo crops instead
of 32 kept the float top-1 on 87.5 % of the evaluation crops instead of 90.6 %. A
range observer fitted to the inputs it is judged on can only flatter minmax, which
never clips them; a glitch still shows, as every other input loses resolution.)

Tries, in order of cost, until one passes the gate on the calibration inputs and is
clearly closer to float there than the recipe (CLEARLY_BETTER); otherwise the recipe's
own artifact stays:

1. the recipe as given (its weights rounded by GPTQ on the calibration inputs unless
   it says `weight_rounding = "nearest"`, formats/rounding.py: fitted to the inputs
   the tries are judged on, which the evaluation data, never seen by it, then checks);
2. cross-layer range equalization (formats/equalize.py), for nets with depthwise
   convolutions fed by another conv: their channels' ranges differ by orders of
   magnitude under one per-tensor activation scale (Nagel et al., 2019);
3. the format's other calibration methods (not when `--calibration` names one): a
   range observer that suits one model's activations ruins another's (outliers,
   long tails);
4. SmoothQuant (formats/smoothing.py, alpha DEFAULT_ALPHA), for models where a LayerNorm or
   RMSNorm feeds Linear layers only (pre-LN transformers): its outlier channels, which set
   the one per-tensor range, are divided down and their weight columns scaled up (Xiao et
   al., 2023); still static int8, so the artifact keeps the static kernels;
5. dynamic activations, for models whose MACs are mostly in Linear layers
   (transformers), where the format has them: weights int8 as before, each
   activation quantized per call from its own range. Transformer activations carry
   outlier channels that no static range covers without wasting most of the 256
   levels (Dettmers et al., 2022, "LLM.int8()"; Xiao et al., 2023, "SmoothQuant"),
   and the int8 kernels stay the same (XNNPACK's qd8 GEMMs, ORT's MatMulInteger);
6. mixed precision: the layers that carry the error kept in float, 1, 2, 4 then 8 of
   them, as long as they do at most FLOAT_MACS_CAP of the Conv/Linear MACs, on the
   closest static try so far. The layers are ranked once per build by what each one
   costs quantized alone (sensitivity.py, on the calibration inputs) and the number is
   chosen by the same label-free gate as every try, so it needs no labels (the labelled
   `--max-accuracy-drop` fallback, fallback.py, continues from what this kept). Only tries
   that could be kept are made (_mixed_precision says when, and the record's `not_tried` why);
7. quantization-aware training, the last resort, when the build has training inputs (`--train`
   or data.train; labels not needed) and the format a QAT path (`prepare_qat`: .pte, .tflite): the closest
   static try so far fine-tuned with fake quantization to match the float model (train/qat.py,
   on --nproc processes through torchrun). The training inputs are its own: it is judged on the
   calibration inputs like every try, and its fixed epochs choose nothing on them.

The first try is the artifact itself, judged in its runtime. Later tries are screened
before export where the format can (`screen`: the PT2E graph in Python, the ONNX model
in onnxruntime from memory): lowering is most of a build's time, and only the chosen
try is exported and judged in its runtime.

If a try is clearly closer but none passes, the closest is kept (and the evaluation
gate then judges it as it would any artifact). `--quality fast` is one
pass, exactly the recipe, judged on the evaluation data only.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from edgekit.build.artifact import (
    PREPARED,
    BuildContext,
    build_format,
    equalized,
    judge,
    qat_train_data,
    quantized_model,
    smoothed,
)
from edgekit.build.fallback import rank, simulated
from edgekit.compare import arithmetic, compare_runs, summary
from edgekit.errors import UsageError
from edgekit.formats.base import QuantConfig
from edgekit.formats.smoothing import DEFAULT_ALPHA
from edgekit.model.data import batches

MIN_SELECTION = 4  # calibration samples: fewer cannot tell two tries apart, so auto then builds one pass
# A try replaces the recipe's only when its output error (1 - cosine to float) is at most this share
# of the recipe's: smaller differences are noise at these sample counts (EfficientNet-Lite0 on 32
# photo crops: its three calibrations within 0.0004 of cosine, their top-1 agreement one crop apart,
# and the one the agreement picked was the worst of them on the evaluation crops).
CLEARLY_BETTER = 0.5
LINEAR_DOMINATED = 0.5  # share of Conv+Linear MACs in Linear layers above which the model is a transformer here
# Mixed precision keeps at most this share of the Conv/Linear MACs in float: past it the artifact loses
# the int8 speed it was built for (a float GEMM does a quarter of the int8 MACs per cycle on a core
# with dot-product, docs/cost_model.md), and a model that needs more is better served by another format.
FLOAT_MACS_CAP = 0.10
FLOAT_LAYER_COUNTS = (1, 2, 4, 8)  # doubling: each try is a whole artifact, and 8 layers is the most the tries go to


@dataclasses.dataclass
class Try:
    method: str
    cfg: QuantConfig
    record: dict | None = None  # judged on the calibration inputs: {"metrics", "gate", ...}
    error: str | None = None
    screened: str | None = None  # how, when judged before export (the format's SCREENED_AS)

    @property
    def passed(self) -> bool:
        return self.record is not None and self.error is None and self.record["gate"]["passed"]

    @property
    def closeness(self) -> tuple:
        """How close to float on the calibration inputs: cosine first, then top-1 agreement."""
        if self.record is None:
            return (-2.0, -1.0)
        m = self.record["metrics"]
        return (m.get("cosine") if m.get("cosine") is not None else -1.0,
                m.get("top1_agreement") if m.get("top1_agreement") is not None else -1.0)

    def to_json(self, fmt) -> dict:
        doc = {"method": self.method, "quantization": self.cfg.to_json(fmt),
               "judged_as": self.screened or "the artifact in its runtime"}
        if self.record is not None:
            m = self.record["metrics"]
            doc.update(cosine=m.get("cosine"), top1_agreement=m.get("top1_agreement"),
                       passed=self.passed, failures=self.record["gate"]["failures"])
        else:
            doc.update(passed=False)
        if self.error is not None:
            doc["error"] = self.error
        return doc


def build_with_quality(ctx: BuildContext, fmt, cfg: QuantConfig, mode: str, calibration_pinned: bool) -> dict:
    """One format's artifact, recovered per the module doc when `mode` is auto; its manifest record
    has `quality`: the mode, the inputs it chose on, every try and the one kept."""
    if mode == "fast" or cfg.scheme != "static":
        record = build_format(ctx, fmt, cfg)
        record["quality"] = {"mode": mode, "tries": [], "note": "one pass, as the recipe says"
                             if mode == "fast" else f"{cfg.scheme} quantization: no calibration to recover"}
        return record
    selection = _selection_context(ctx)
    if selection is None:
        record = build_format(ctx, fmt, cfg)
        record["quality"] = {"mode": mode, "tries": [], "note": f"fewer than {MIN_SELECTION} calibration samples "
                             "to choose with: one pass"}
        return record
    sel_ctx, inputs = selection
    artifact = ctx.stage / f"model{fmt.SUFFIX}"
    tries: list[Try] = []
    notes: list[str] = []
    built = None  # the try whose artifact is on disk
    for attempt in _ladder(ctx, fmt, cfg, calibration_pinned, tries, notes):
        try:
            if not tries or not hasattr(fmt, "screen"):
                attempt.record, built = build_format(sel_ctx, fmt, attempt.cfg, "select"), attempt
            else:
                attempt.screened = fmt.SCREENED_AS
                attempt.record = _screen(sel_ctx, fmt, attempt)
        except Exception as e:  # noqa: BLE001 - a later try's failure is recorded; the recipe's own is raised
            if not tries:
                raise  # the recipe itself cannot be built: the user must know
            attempt.error = e.message if isinstance(e, UsageError) else f"{type(e).__name__}: {e}"
        tries.append(attempt)
        _say(ctx, artifact.name, attempt, inputs)
        if attempt.passed and (attempt is tries[0] or _clearly_better(attempt, tries[0])):
            break
    while True:
        better = [t for t in tries[1:] if _clearly_better(t, tries[0]) and t.error is None]
        chosen = tries[0] if tries[0].passed or not better else \
            next((t for t in better if t.passed), None) or max(better, key=lambda t: t.closeness)
        # Every build writes the same file: build the chosen one (from the step cache if it was built before).
        try:
            made = built.record if chosen is built else build_format(sel_ctx, fmt, chosen.cfg, "select")
            break
        except Exception as e:  # noqa: BLE001 - a screened try the format then fails to lower: the next choice
            if chosen is tries[0]:
                raise
            chosen.error = f"screened, then its export failed: {type(e).__name__}: {e}"
            ctx.steps.console.print(f"  {artifact.name}: {chosen.method} {chosen.error}")
    record = judge(ctx, fmt, chosen.cfg, artifact)
    record["lowering"] = made["lowering"]
    for key in PREPARED:
        if key in made["quantization"]:
            record["quantization"][key] = made["quantization"][key]
    record["quality"] = {
        "mode": mode,
        "selection": inputs,
        "tries": [t.to_json(fmt) for t in tries],
        "chosen": chosen.method,
        "why": _why(chosen, tries[0]),
    }
    if notes:
        record["quality"]["not_tried"] = notes
        for note in notes:
            ctx.steps.console.print(f"  {artifact.name}: {note}")
    if len(tries) > 1:
        ctx.steps.console.print(f"  {artifact.name}: kept [bold]{chosen.method}[/] ({record['quality']['why']})")
    return record


def _clearly_better(t: Try, recipe: Try) -> bool:
    return t.record is not None and (1.0 - t.closeness[0]) <= CLEARLY_BETTER * (1.0 - recipe.closeness[0])


def _why(chosen: Try, recipe: Try) -> str:
    if chosen is recipe:
        return "it passed the gate on the calibration inputs" if recipe.passed else \
            "no other try was clearly closer to float on the calibration inputs (half the error or less)"
    return ("the first clearly closer to float that passed the gate on the calibration inputs" if chosen.passed
            else "none passed the gate on the calibration inputs: the closest to float there")


def _screen(ctx: BuildContext, fmt, attempt: Try) -> dict:
    """A try judged before export: quantized, then run as the format's `screen` runs it (a PT2E graph
    in Python computes what the delegate's int8 kernels do, up to rounding), skipping the lowering
    that costs most of a build (a minute for a 6-layer BERT's .pte). Only the chosen try is exported."""
    loaded, specs = ctx.loaded, ctx.spec.inputs
    how = fmt.SCREENED_AS if fmt.SCREENED_AS.startswith(fmt.BACKEND) else f"{fmt.BACKEND}, {fmt.SCREENED_AS}"
    label = f"try {attempt.method} ({how})"
    with ctx.steps.step("screen", {"format": fmt.NAME, **attempt.cfg.to_json(fmt), "samples": len(loaded.calib)}, label):
        qmodel = quantized_model(ctx, fmt, attempt.cfg, batches(loaded.calib, specs))[0]
        runner = fmt.screen(qmodel)
        outputs = [[np.asarray(o) for o in runner.run([t.numpy() for t in b])] for b in batches(loaded.evaluation, specs)]
        result = compare_runs(loaded.float_outputs(), outputs, ctx.gate, arithmetic(attempt.cfg.scheme), None,
                              task=ctx.spec.task)
    return {"metrics": summary(result), "gate": {"passed": result["ok"], "failures": result["failures"]}}


def _selection_context(ctx: BuildContext):
    """(the build context judging on the calibration inputs, the record of what it chose on), or
    None when there are too few calibration samples to choose with."""
    calib = ctx.loaded.calib
    if len(calib) < MIN_SELECTION:
        return None
    judged = dataclasses.replace(calib, source=f"{calib.source} (the calibration inputs)")
    return dataclasses.replace(ctx, loaded=ctx.loaded.judged_on(judged, held_out=False)), \
        {"source": calib.source, "samples": len(calib), "held_out": False}


def _ladder(ctx: BuildContext, fmt, cfg: QuantConfig, calibration_pinned: bool, tries: list[Try], notes: list[str]):
    """The tries of the module doc, made one at a time (a later one is only built if needed);
    `tries`: those judged so far (the caller appends each before asking for the next); `notes`:
    why a try was not made, for the record."""
    first = cfg.calibration or fmt.DEFAULT_CALIBRATION
    yield Try(f"static int8 ({first}{' + equalization' if cfg.equalize else ''})", cfg)
    # the pair count from the equalization alone: the try's GPTQ rounding is made only if it is built
    if not cfg.equalize and cfg.per_channel and equalized(ctx)[1]["pairs"]:
        yield Try(f"static int8 ({first} + equalization)", dataclasses.replace(cfg, equalize=True))
    if not calibration_pinned:
        for method in fmt.CALIBRATIONS:
            if method != first:
                yield Try(f"static int8 ({method})", dataclasses.replace(cfg, calibration=method))
    smoothing = dataclasses.replace(cfg, smooth_quant=DEFAULT_ALPHA)
    if cfg.smooth_quant is None and smoothed(ctx, smoothing)[1]["pairs"]:
        yield Try(f"static int8 ({first} + SmoothQuant alpha {DEFAULT_ALPHA})", smoothing)
    if "dynamic" in fmt.SCHEMES and _linear_dominated(ctx):
        yield Try("dynamic int8 activations", dataclasses.replace(cfg, scheme="dynamic", calibration=None))
    if not cfg.skip_layers and cfg.only_layers is None:
        yield from _mixed_precision(ctx, tries, notes)
    yield from _quantization_aware(ctx, fmt, tries, notes)


def _quantization_aware(ctx: BuildContext, fmt, tries: list[Try], notes: list[str]):
    """Try 7 of the module doc: quantization-aware training (train/qat.py) on the closest static
    try so far (its float layers, equalization and weight rounding), when the build has training
    inputs and the format a QAT path."""
    from edgekit.train.qat import QatConfig

    static = [t for t in tries if t.record is not None and t.cfg.scheme == "static"]
    if not static:
        return
    if not hasattr(fmt, "prepare_qat"):
        notes.append(f"quantization-aware training not tried: {fmt.NAME} has no QAT path here (the PT2E formats, "
                     "executorch and litert, have: torchao's prepare_qat_pt2e with their quantizers' QAT configs)")
        return
    train = qat_train_data(ctx)
    if train is None:
        notes.append("quantization-aware training not tried: no training inputs (pass --train train.npz, "
                     "labels not needed)")
        return
    base = max(static, key=lambda t: t.closeness)
    epochs = QatConfig().epochs
    yield Try(f"quantization-aware training ({epochs} epochs on {len(train)} training inputs; {base.method})",
              dataclasses.replace(base.cfg, qat=True))


def _mixed_precision(ctx: BuildContext, tries: list[Try], notes: list[str]):
    """Try 6 of the module doc: the most harmful layers float, on the closest static try so far.

    Only the tries that can be kept are made: a try is kept when it halves the output error
    (CLEARLY_BETTER), and the output error (1 - cosine, for small errors half the noise-to-signal
    power) is about the sum of the layers' own noise powers (10^(-SQNR/10) of each layer quantized
    alone). So the layers kept float must carry at least half of that sum; and the ranking, made
    in the PT2E simulation, must see the format's error at all (the simulation loses at least half
    as much): QNNPACK's own losses, say, are not in it, and minutes of ranking would not find them."""
    from edgekit.stages.macs import layer_macs

    static = [t for t in tries if t.record is not None and t.cfg.scheme == "static"]
    if not static:
        return
    base = max(static, key=lambda t: t.closeness)
    format_error, simulated_error = 1.0 - base.closeness[0], 1.0 - simulated(ctx, base.cfg)
    if simulated_error < CLEARLY_BETTER * format_error:
        notes.append(f"mixed precision not tried: with every layer int8 the PT2E simulation the layer ranking "
                     f"uses loses {simulated_error:.2g} of cosine where this format loses {format_error:.2g}: "
                     "its error enters where a ranking of layers cannot see it")
        return
    ranking = rank(ctx, base.cfg, any_calibration=True)
    noise = [10 ** (-row["output_sqnr_db"] / 10) if math.isfinite(row["output_sqnr_db"]) else 0.0 for row in ranking]
    summed = sum(noise)
    macs = layer_macs(ctx.loaded.model, ctx.loaded.example)
    total = sum(macs.values())
    made, carried = 0, 0.0
    for count in FLOAT_LAYER_COUNTS:
        layers = tuple(row["layer"] for row in ranking[:count])
        share = sum(macs.get(name, 0) for name in layers) / total if total else 1.0
        if share > FLOAT_MACS_CAP:
            break
        carried = sum(noise[:count]) / summed if summed else 0.0
        if carried >= 1.0 - CLEARLY_BETTER:
            made += 1
            yield Try(f"mixed precision ({len(layers)} layer{'s' if len(layers) > 1 else ''} float, "
                      f"{100 * share:.1f} % of MACs; {base.method})", dataclasses.replace(base.cfg, skip_layers=layers))
        if len(layers) < count:  # every ranked layer is float already
            break
    if not made:
        notes.append(f"mixed precision not tried: the layers that fit in {100 * FLOAT_MACS_CAP:.0f} % of the MACs "
                     f"carry {100 * carried:.0f} % of the layers' summed error, and halving the error needs half")


def _linear_dominated(ctx: BuildContext) -> bool:
    from edgekit.stages.macs import linear_share

    return linear_share(ctx.loaded.model, ctx.loaded.example) >= LINEAR_DOMINATED


def _say(ctx: BuildContext, name: str, attempt: Try, inputs: dict) -> None:
    if attempt.error is not None:
        ctx.steps.console.print(f"  {name}: {attempt.method} could not be built ({attempt.error})")
    elif not attempt.passed:
        m = attempt.record["metrics"]
        figures = ", ".join(text for text, value in ((f"cosine {m.get('cosine') or 0:.4f}", m.get("cosine")),
                                                   (f"top-1 agreement {m.get('top1_agreement') or 0:.1f} %",
                                                    m.get("top1_agreement"))) if value is not None)
        ctx.steps.console.print(f"  {name}: {attempt.method} misses the gate on the {inputs['samples']} "
                                f"calibration inputs ({figures})")
