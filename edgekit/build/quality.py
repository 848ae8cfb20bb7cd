"""`--quality auto`: when int8 misses the gate, recover, choosing on held-out calibration data.

The calibration data is split: the first three quarters calibrate every try, the last
quarter (the selection split) judges each try against the float model by the build's
own label-free gate (cosine, top-1 agreement on class scores). The evaluation data is
never looked at while choosing: it scores the chosen artifact afterwards, like any
other, so the figure the build reports is not the figure it chose by.

Tries, in order of cost, stopping at the first that passes on the selection split:

1. the recipe as given;
2. the format's other calibration methods (not when `--calibration` names one): a
   range observer that suits one model's activations ruins another's (outliers,
   long tails);
3. dynamic activations, for models whose MACs are mostly in Linear layers
   (transformers), where the format has them: weights int8 as before, each
   activation quantized per call from its own range. Transformer activations carry
   outlier channels that no static range covers without wasting most of the 256
   levels (Dettmers et al., 2022, "LLM.int8()"; Xiao et al., 2023, "SmoothQuant"),
   and the int8 kernels stay the same (XNNPACK's qd8 GEMMs, ORT's MatMulInteger).

If none passes, the try closest to float on the selection split is kept (and the
evaluation gate then judges it as it would any artifact). `--quality fast` is one
pass on all of the calibration data, exactly the recipe.
"""

from __future__ import annotations

import dataclasses

from edgekit.build.artifact import BuildContext, build_format, judge
from edgekit.errors import UsageError
from edgekit.formats.base import QuantConfig

SELECTION_FRACTION = 0.25  # of the calibration samples, held out to choose with
MIN_SELECTION = 4  # samples: fewer cannot tell two tries apart, so auto then builds one pass
LINEAR_DOMINATED = 0.5  # share of Conv+Linear MACs in Linear layers above which the model is a transformer here


@dataclasses.dataclass
class Try:
    method: str
    cfg: QuantConfig
    record: dict | None = None  # judged on the selection split
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.record is not None and self.record["gate"]["passed"]

    @property
    def closeness(self) -> tuple:
        """How close to float on the selection split: cosine first, then top-1 agreement."""
        if self.record is None:
            return (-2.0, -1.0)
        m = self.record["metrics"]
        return (m.get("cosine") if m.get("cosine") is not None else -1.0,
                m.get("top1_agreement") if m.get("top1_agreement") is not None else -1.0)

    def to_json(self, fmt) -> dict:
        doc = {"method": self.method, "quantization": self.cfg.to_json(fmt)}
        if self.record is not None:
            m = self.record["metrics"]
            doc.update(cosine=m.get("cosine"), top1_agreement=m.get("top1_agreement"),
                       passed=self.passed, failures=self.record["gate"]["failures"])
        else:
            doc.update(passed=False, error=self.error)
        return doc


def build_with_quality(ctx: BuildContext, fmt, cfg: QuantConfig, mode: str, calibration_pinned: bool) -> dict:
    """One format's artifact, recovered per the module doc when `mode` is auto; its manifest record
    has `quality`: the mode, the split it chose on, every try and the one kept."""
    if mode == "fast" or cfg.scheme != "static":
        record = build_format(ctx, fmt, cfg)
        record["quality"] = {"mode": mode, "tries": [], "note": "one pass, as the recipe says"
                             if mode == "fast" else f"{cfg.scheme} quantization: no calibration to recover"}
        return record
    selection = _selection_context(ctx)
    if selection is None:
        record = build_format(ctx, fmt, cfg)
        record["quality"] = {"mode": mode, "tries": [], "note": f"fewer than {MIN_SELECTION / SELECTION_FRACTION:.0f} "
                             "calibration samples: none held out to choose with, one pass"}
        return record
    sel_ctx, split = selection
    artifact = ctx.stage / f"model{fmt.SUFFIX}"
    tries: list[Try] = []
    for attempt in _ladder(ctx, fmt, cfg, calibration_pinned):
        try:
            attempt.record = build_format(sel_ctx, fmt, attempt.cfg)
        except Exception as e:  # noqa: BLE001 - a later try's failure is recorded; the recipe's own is raised
            if not tries:
                raise  # the recipe itself cannot be built: the user must know
            attempt.error = e.message if isinstance(e, UsageError) else f"{type(e).__name__}: {e}"
        tries.append(attempt)
        _say(ctx, artifact.name, attempt, split)
        if attempt.passed:
            break
    chosen = next((t for t in tries if t.passed), None) or max(tries, key=lambda t: t.closeness)
    last_built = next(t for t in reversed(tries) if t.record is not None)
    if chosen is not last_built:  # every try writes the same file: put the chosen one back (step cache)
        chosen.record = build_format(sel_ctx, fmt, chosen.cfg)
    record = judge(ctx, fmt, chosen.cfg, artifact)
    record["lowering"] = chosen.record["lowering"]
    record["quality"] = {
        "mode": mode,
        "selection": split,
        "tries": [t.to_json(fmt) for t in tries],
        "chosen": chosen.method,
        "why": "the first that passed the gate on the held-out calibration samples" if chosen.passed
        else "none passed the gate on the held-out calibration samples: the closest to float there",
    }
    if len(tries) > 1:
        ctx.steps.console.print(f"  {artifact.name}: kept [bold]{chosen.method}[/] ({record['quality']['why']})")
    return record


def _selection_context(ctx: BuildContext):
    """(the build context calibrating on the first part and judging on the held-out rest, the split's
    record), or None when there are too few calibration samples to hold any out."""
    calib = ctx.loaded.calib
    batch = ctx.spec.inputs[0].batch
    held = int(len(calib) * SELECTION_FRACTION) // batch * batch
    if held < MIN_SELECTION:
        return None
    fit, rest = calib.split(len(calib) - held)
    rest = dataclasses.replace(rest, source=f"{calib.source} (last {held} held out)")
    loaded = ctx.loaded.with_data(fit, rest)
    split = {"source": calib.source, "calibrated_on": len(fit), "held_out": held}
    return dataclasses.replace(ctx, loaded=loaded), split


def _ladder(ctx: BuildContext, fmt, cfg: QuantConfig, calibration_pinned: bool):
    """The tries of the module doc, made one at a time (a later one is only built if needed)."""
    first = cfg.calibration or fmt.DEFAULT_CALIBRATION
    yield Try(f"static int8 ({first})", cfg)
    if not calibration_pinned:
        for method in fmt.CALIBRATIONS:
            if method != first:
                yield Try(f"static int8 ({method})", dataclasses.replace(cfg, calibration=method))
    if "dynamic" in fmt.SCHEMES and _linear_dominated(ctx):
        yield Try("dynamic int8 activations", dataclasses.replace(cfg, scheme="dynamic", calibration=None))


def _linear_dominated(ctx: BuildContext) -> bool:
    from edgekit.stages.macs import linear_share

    return linear_share(ctx.loaded.model, ctx.loaded.example) >= LINEAR_DOMINATED


def _say(ctx: BuildContext, name: str, attempt: Try, split: dict) -> None:
    if attempt.error is not None:
        ctx.steps.console.print(f"  {name}: {attempt.method} could not be built ({attempt.error})")
    elif not attempt.passed:
        m = attempt.record["metrics"]
        figures = ", ".join(text for text, value in ((f"cosine {m.get('cosine') or 0:.4f}", m.get("cosine")),
                                                   (f"top-1 agreement {m.get('top1_agreement') or 0:.1f} %",
                                                    m.get("top1_agreement"))) if value is not None)
        ctx.steps.console.print(f"  {name}: {attempt.method} misses the gate on {split['held_out']} held-out "
                                f"calibration samples ({figures})")
