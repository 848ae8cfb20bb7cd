"""Which layers hurt when quantized: each layer quantized alone, the rest float.

The ranking runs PT2E (XNNPACK's quantizer) in simulation — the converted
graph executes quantize/dequantize in eager torch — for every export format:
it is the cheapest faithful int8 model of a layer, and the per-layer order it
gives is what the accuracy fallback needs. The artifacts themselves are always
validated in their real runtimes.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np

from edgekit.compare import GATES, all_outputs, compare_output, sqnr_db
from edgekit.formats import executorch as simulator
from edgekit.formats.base import QuantConfig, quantizable_layers, torch_export
from edgekit.model.data import Dataset, batches

# Enough samples to rank layers; the full eval split validates the artifact.
MAX_SAMPLES = 200
# Calibration samples per layer: ranking needs ranges, not the full split
# (the histogram observer costs time per batch, and this runs once per layer).
CALIB_SAMPLES = 64


def ranking_key(cfg: QuantConfig) -> tuple:
    """What of `cfg` the ranking depends on: (per-channel weights, the simulator's calibration)."""
    return cfg.per_channel, cfg.calibration if cfg.calibration in simulator.CALIBRATIONS else None


def rank_layers(loaded, cfg: QuantConfig, steps) -> list[dict]:
    """One row per Conv/Linear layer of the float reference (model.loaded.LoadedModel), most harmful first."""

    model, example, specs = loaded.model, loaded.example, loaded.spec.inputs
    evaluation, calib = loaded.evaluation.take(MAX_SAMPLES), loaded.calib.take(CALIB_SAMPLES)
    kept = len(evaluation) // specs[0].batch
    reference = np.concatenate([b[0] for b in loaded.float_outputs()[:kept]])
    per_channel, calibration = ranking_key(cfg)
    sim_cfg = QuantConfig(per_channel=per_channel, calibration=calibration)
    rows = []
    graph = torch_export(model, example).module()  # once: each layer quantizes a copy (MiniLM: 1 s of a 5 s pass)
    for layer in steps.track(quantizable_layers(model), len(quantizable_layers(model)), "quantizing layers one at a time"):
        only = dataclasses.replace(sim_cfg, only_layers=(layer,))
        qmodel = simulator.quantize_exported(copy.deepcopy(graph), example, batches(calib, specs), only)
        outputs = _outputs(qmodel, evaluation, specs)
        m = compare_output(reference, outputs, GATES["int8"], labels=evaluation.labels, task=loaded.spec.task)
        rows.append({
            "layer": layer,
            "type": type(model.get_submodule(layer)).__name__,
            "output_sqnr_db": sqnr_db(reference, outputs),
            "top1_agreement": m["top1_agreement"],  # None: the output is not class scores
            "accuracy_drop": None if m["accuracy_float"] is None else round(m["accuracy_float"] - m["accuracy_artifact"], 2),
        })
    # Most harmful first: lowest SQNR; accuracy/agreement loss breaks near-ties.
    return sorted(rows, key=lambda r: (r["output_sqnr_db"], 100.0 if r["top1_agreement"] is None else r["top1_agreement"]))


def simulated_cosine(loaded, cfg: QuantConfig) -> float:
    """Mean cosine to float of the first output with every layer quantized in the simulation the
    ranking uses, on the same inputs: how much of a format's error the ranking can see."""
    model, example, specs = loaded.model, loaded.example, loaded.spec.inputs
    evaluation, calib = loaded.evaluation.take(MAX_SAMPLES), loaded.calib.take(CALIB_SAMPLES)
    reference = np.concatenate([b[0] for b in loaded.float_outputs()[:len(evaluation) // specs[0].batch]])
    per_channel, calibration = ranking_key(cfg)
    qmodel = simulator.quantize(model, example, batches(calib, specs), QuantConfig(per_channel=per_channel,
                                                                                  calibration=calibration))
    return compare_output(reference, _outputs(qmodel, evaluation, specs), GATES["int8"])["cosine"]


def _outputs(model, data: Dataset, specs) -> np.ndarray:
    """The model's first output over `data`: what the ranking scores."""
    import torch

    with torch.no_grad():
        return np.concatenate([all_outputs(model(*b))[0] for b in batches(data, specs)])
