"""Which layers hurt when quantized: each layer quantized alone, the rest float.

The ranking runs PT2E (XNNPACK's quantizer) in simulation — the converted
graph executes quantize/dequantize in eager torch — for every export format:
it is the cheapest faithful int8 model of a layer, and the per-layer order it
gives is what the accuracy fallback needs. The artifacts themselves are always
validated in their real runtimes.
"""

from __future__ import annotations

import dataclasses
import numpy as np

from edgekit.backends.base import QuantConfig, quantizable_layers
from edgekit.compare import GATES, all_outputs, compare_output, sqnr_db
from edgekit.data import Dataset, batches

# Enough samples to rank layers; the full eval split validates the artifact.
MAX_SAMPLES = 200
# Calibration samples per layer: ranking needs ranges, not the full split
# (the histogram observer costs time per batch, and this runs once per layer).
CALIB_SAMPLES = 64


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
        m = compare_output(reference, outputs, GATES["int8"], labels=evaluation.labels)
        rows.append({
            "layer": layer,
            "type": type(model.get_submodule(layer)).__name__,
            "output_sqnr_db": sqnr_db(reference, outputs),
            "top1_agreement": m["top1_agreement"],  # None: the output is not class scores
            "accuracy_drop": None if m["accuracy_float"] is None else round(m["accuracy_float"] - m["accuracy_artifact"], 2),
        })
    # Most harmful first: lowest SQNR; accuracy/agreement loss breaks near-ties.
    return sorted(rows, key=lambda r: (r["output_sqnr_db"], 100.0 if r["top1_agreement"] is None else r["top1_agreement"]))


def _outputs(model, data: Dataset, specs) -> np.ndarray:
    """The model's first output over `data`: what the ranking scores."""
    import torch

    with torch.no_grad():
        return np.concatenate([all_outputs(model(*b))[0] for b in batches(data, specs)])
