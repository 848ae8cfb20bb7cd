"""The accuracy budget: keep the most sensitive layers float until int8 loses at most
`--max-accuracy-drop` points (labelled evaluation data needed).

Layers are ranked by the sensitivity analysis (sensitivity.py: each quantized
alone, lowest output SQNR first) and kept float one more at a time; every try
is a whole artifact, judged in its runtime.
"""

from __future__ import annotations

import dataclasses

from edgekit.build.artifact import BuildContext, build_format
from edgekit.build.sensitivity import rank_layers
from edgekit.formats.base import QuantConfig


def accuracy_drop(record: dict) -> float | None:
    m = record["metrics"]
    if m["accuracy_float"] is None or m["accuracy_artifact"] is None:
        return None
    return round(m["accuracy_float"] - m["accuracy_artifact"], 2)


def over_budget(record: dict, budget: float | None) -> bool:
    drop = accuracy_drop(record)
    return budget is not None and drop is not None and drop > budget


def rank(ctx: BuildContext, cfg: QuantConfig) -> list[dict]:
    with ctx.steps.step("sensitivity", {"method": "pt2e-simulation", "layers": "Conv/Linear"}, "rank layer sensitivity"):
        return rank_layers(ctx.loaded, cfg, ctx.steps)


def fall_back(ctx: BuildContext, fmt, cfg: QuantConfig, ranking: list[dict], budget: float, first: dict) -> dict:
    """Keep the most sensitive layers float, one more at a time, until the drop fits the budget.

    Returns the record that met the budget, or the best one tried.
    """
    tries = [{"float_layers": [], "accuracy_drop": accuracy_drop(first)}]
    best = last = first
    float_layers: list[str] = []
    for row in ranking:
        float_layers.append(row["layer"])
        ctx.steps.console.print(f"  accuracy drop over budget: keeping [bold]{row['layer']}[/] in float")
        last = build_format(ctx, fmt, dataclasses.replace(cfg, skip_layers=tuple(float_layers)))
        tries.append({"float_layers": list(float_layers), "accuracy_drop": accuracy_drop(last)})
        if accuracy_drop(last) < accuracy_drop(best):
            best = last
        if accuracy_drop(last) <= budget:
            break
    if best is not last:
        # Every try writes the same file: put the best one back on disk (from the step cache).
        best = build_format(ctx, fmt, dataclasses.replace(cfg, skip_layers=tuple(best["quantization"].get("float_layers", []))))
    reasons = {r["layer"]: f"output SQNR {r['output_sqnr_db']} dB when quantized alone" for r in ranking}
    kept = best["quantization"].get("float_layers", [])
    best["fallback"] = {
        "budget_points": budget,
        "float_layers": [{"layer": name, "why": reasons[name]} for name in kept],
        "tries": tries,
        "met": accuracy_drop(best) <= budget,
    }
    return best
