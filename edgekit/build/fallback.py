"""The accuracy budget: keep the most sensitive layers float until int8 loses at most
`--max-accuracy-drop` points (labelled evaluation data needed).

Layers are ranked by the sensitivity analysis (sensitivity.py: each quantized
alone, lowest output SQNR first) and kept float one more at a time; every try
is a whole artifact, judged in its runtime. Both the ranking and the stopping
point are decided on the calibration inputs, never on the evaluation data that
then scores the result: a try stops when its top-1 disagreement with float
there is within the budget. Disagreement bounds the accuracy int8 can lose (a
sample where the artifact agrees with float is right or wrong as float is), so
the label-free figure is a conservative stand-in for the labelled one. The
evaluation data then says whether the budget was met.
"""

from __future__ import annotations

import dataclasses

from edgekit.build.artifact import BuildContext, build_format, made_once
from edgekit.build.sensitivity import rank_layers, ranking_key, simulated_cosine
from edgekit.formats.base import QuantConfig


def accuracy_drop(record: dict) -> float | None:
    m = record["metrics"]
    if m["accuracy_float"] is None or m["accuracy_artifact"] is None:
        return None
    return round(m["accuracy_float"] - m["accuracy_artifact"], 2)


def on_calibration(ctx: BuildContext) -> BuildContext:
    """The build context judging on the calibration inputs (what choices are made on)."""
    return dataclasses.replace(ctx, loaded=ctx.loaded.judged_on(ctx.loaded.calib, held_out=False))


def rank(ctx: BuildContext, cfg: QuantConfig, any_calibration: bool = False) -> list[dict]:
    """The layers, most harmful first (sensitivity.py), ranked on the calibration inputs once per
    build: the accuracy budget and --quality auto's mixed-precision tries read the same ranking.
    `any_calibration`: one made with another calibration will do (only the order is used, and a
    ranking costs one PT2E quantization per layer: minutes on a 60-layer net)."""
    if any_calibration:
        made = [v for k, v in ctx.made.items() if k[0] == "ranking" and k[1] == cfg.per_channel]
        if made:
            return made[0]

    def ranked():
        with ctx.steps.step("sensitivity", {"method": "pt2e-simulation", "layers": "Conv/Linear",
                                            "data": "calibration inputs"}, "rank layer sensitivity"):
            return rank_layers(on_calibration(ctx).loaded, cfg, ctx.steps)

    return made_once(ctx, ("ranking", *ranking_key(cfg)), ranked)


def simulated(ctx: BuildContext, cfg: QuantConfig) -> float:
    """sensitivity.simulated_cosine on the calibration inputs, once per build and ranking key."""

    def run():
        with ctx.steps.step("simulate", {"method": "pt2e-simulation", "data": "calibration inputs"},
                            "simulate the whole model in int8"):
            return simulated_cosine(on_calibration(ctx).loaded, cfg)

    return made_once(ctx, ("simulated", *ranking_key(cfg)), run)


def disagreement(record: dict) -> float | None:
    """Top-1 disagreement with float, percent (None: the output is not class scores)."""
    agreement = record["metrics"].get("top1_agreement")
    return None if agreement is None else round(100.0 - agreement, 2)


def fall_back(ctx: BuildContext, fmt, cfg: QuantConfig, ranking: list[dict] | None,
              budget: float) -> tuple[dict, list[dict] | None]:
    """Keep the most sensitive layers float, one more at a time, until the disagreement on the
    calibration inputs fits the budget (the module doc). Returns the record of the artifact kept,
    judged on the evaluation data, with `fallback`: the tries and whether the budget was met
    there; and the ranking (`ranking` as given, or made here when layers had to be kept float)."""
    calib_ctx = on_calibration(ctx)
    probe = build_format(calib_ctx, fmt, cfg, "select")
    float_layers = list(cfg.skip_layers)  # those --quality auto already kept float
    tries = [{"float_layers": list(float_layers), "disagreement": disagreement(probe)}]
    best, best_layers = disagreement(probe), tuple(float_layers)
    if best is not None and best > budget:
        ranking = ranking or rank(ctx, cfg)
        for row in ranking:
            if row["layer"] in float_layers:
                continue
            float_layers.append(row["layer"])
            ctx.steps.console.print(f"  over the budget on the calibration inputs: keeping [bold]{row['layer']}[/] in float")
            d = disagreement(build_format(calib_ctx, fmt, dataclasses.replace(cfg, skip_layers=tuple(float_layers)), "select"))
            tries.append({"float_layers": list(float_layers), "disagreement": d})
            if d < best:
                best, best_layers = d, tuple(float_layers)
            if d <= budget:
                break
    # Every try writes the same file: the kept one is built last (from the step cache), judged on the evaluation data.
    kept = build_format(ctx, fmt, dataclasses.replace(cfg, skip_layers=best_layers))
    reasons = {r["layer"]: f"output SQNR {r['output_sqnr_db']} dB when quantized alone" for r in ranking or []}
    kept["fallback"] = {
        "budget_points": budget,
        "chosen_on": "top-1 disagreement with float on the calibration inputs",
        "float_layers": [{"layer": name, "why": reasons[name]} for name in best_layers],
        "tries": tries,
        "met": accuracy_drop(kept) is not None and accuracy_drop(kept) <= budget,
    }
    return kept, ranking
