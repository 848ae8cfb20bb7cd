"""Which layers hurt when quantized: each layer quantized alone, the rest float.

The ranking runs PT2E (XNNPACK's quantizer) in simulation — the converted
graph executes quantize/dequantize in eager torch — for every export format:
it is the cheapest faithful int8 model of a layer, and the per-layer order it
gives is what the accuracy fallback needs. The artifacts themselves are always
validated in their real runtimes.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from edgekit.backends.base import QuantConfig, quantizable_layers
from edgekit.data import Dataset, batches
from edgekit.metrics import compare

# Enough samples to rank layers; the full eval split validates the artifact.
MAX_SAMPLES = 200
# Calibration samples per layer: ranking needs ranges, not the full split
# (the histogram observer costs time per batch, and this runs once per layer).
CALIB_SAMPLES = 64
# Reported when quantizing a layer changes no output bit (JSON has no infinity).
NO_NOISE_DB = 200.0


def rank_layers(model, example: tuple, calib: Dataset, evaluation: Dataset, specs, cfg: QuantConfig, steps) -> list[dict]:
    """One row per Conv/Linear layer, most harmful first."""
    from edgekit.backends import executorch_xnnpack as simulator

    evaluation, calib = evaluation.take(MAX_SAMPLES), calib.take(CALIB_SAMPLES)
    reference = _outputs(model, evaluation, specs)
    sim_cfg = QuantConfig(per_channel=cfg.per_channel,
                          calibration=cfg.calibration if cfg.calibration in simulator.CALIBRATIONS else None)
    rows = []
    for layer in steps.track(quantizable_layers(model), len(quantizable_layers(model)), "quantizing layers one at a time"):
        only = dataclasses.replace(sim_cfg, only_layers=(layer,))
        qmodel = simulator.quantize(model, example, batches(calib, specs), only)
        outputs = _outputs(qmodel, evaluation, specs)
        m = compare(reference, outputs, evaluation.labels)
        rows.append({
            "layer": layer,
            "type": type(model.get_submodule(layer)).__name__,
            "output_sqnr_db": _sqnr_db(reference, outputs),
            "top1_agreement": m["top1_agreement"],
            "accuracy_drop": None if m["accuracy_float"] is None else round(m["accuracy_float"] - m["accuracy_artifact"], 2),
        })
    # Most harmful first: lowest SQNR; accuracy/agreement loss breaks near-ties.
    return sorted(rows, key=lambda r: (r["output_sqnr_db"], r["top1_agreement"]))


def _outputs(model, data: Dataset, specs) -> list[np.ndarray]:
    import torch

    from edgekit.pipeline import first_output

    with torch.no_grad():
        return [first_output(model(*b)).numpy() for b in batches(data, specs)]


def _sqnr_db(reference: list[np.ndarray], quantized: list[np.ndarray]) -> float:
    """Signal-to-quantization-noise ratio of the model output, in dB (higher is better)."""
    ref = np.concatenate(reference).astype(np.float64)
    noise = ref - np.concatenate(quantized).astype(np.float64)
    signal_power, noise_power = float(np.mean(ref**2)), float(np.mean(noise**2))
    if noise_power == 0.0:
        return NO_NOISE_DB
    return round(min(NO_NOISE_DB, 10.0 * math.log10(max(signal_power, 1e-30) / noise_power)), 2)
