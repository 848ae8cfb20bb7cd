"""The one artifact-vs-float comparison, and the quality gate's verdict.

Every judgement of an artifact goes through here: the build's gate, `edgekit
validate`'s parity check, the emulated-core comparison and the sensitivity
ranking. What is measured, per model output, over all samples:

    cosine          cosine similarity of each sample's output with the float one
                    (mean and worst over the samples): the direction of an embedding
                    or of a logit vector
    sqnr_db         signal-to-quantization-noise ratio of the whole output, in dB
    max/mean_abs_error, and the same in output steps (one int8 level of the float
                    output's range, or one fp16 ulp at its top)
    top1_agreement  for class scores: the share of samples whose top class is the
                    float model's; the gate counts only *decisive* samples, where the
                    float model's top class leads the runner-up by more than
                    DECISIVE_STEPS output steps (a near-tie flips under any rounding
                    without the artifact being wrong)
    accuracy        of both, when the data has labels

None of it needs labels, so any model can be judged on real inputs: embeddings,
regression, detection maps. Which outputs are class scores: `task` says it
("classification", "embedding", "regression"); "auto" treats a 2-D (N, C > 1)
output as class scores.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

import numpy as np

DECISIVE_STEPS = 2.0  # a float top-1 lead smaller than this many output steps is a near-tie
TASKS = ("auto", "classification", "embedding", "regression")
NO_NOISE_DB = 200.0  # SQNR reported when the outputs are bit-identical (JSON has no infinity)
# The per-sample cosine's distribution, kept as these percentiles (0 = the worst sample): what the
# report plots where there are no labels, 21 numbers however many samples were judged.
COSINE_PERCENTILES = tuple(range(0, 101, 5))
# A confusion matrix up to this many classes (digits' 10 fit; ImageNet's 1000 would be a 4 MB
# table of zeros): above it, the most frequent top-1 flips instead.
MAX_CONFUSION_CLASSES = 20
MAX_FLIPS = 10


@dataclass(frozen=True)
class Gate:
    """What an artifact must keep of the float model's outputs. None: not checked."""

    min_cosine: float | None = 0.99  # mean per-sample cosine, outputs that are not class scores
    min_agreement: float | None = 95.0  # % top-1 agreement on decisive samples, class-score outputs
    # Class scores are judged by their decisions first; their cosine only has to show the logits
    # still point the same way (a clipped calibration that rescales logits keeps the decisions).
    min_cosine_scores: float | None = 0.95
    max_accuracy_drop: float | None = None  # points, when the data has labels
    max_steps: float | None = None  # worst |difference| in output steps
    mean_steps: float | None = None  # mean |difference| in output steps

    def with_overrides(self, **values) -> "Gate":
        """The user's thresholds (--min-cosine, --min-agreement, --max-accuracy-drop) over the defaults.
        --min-cosine sets the floor for every output, class scores included."""
        values = {k: v for k, v in values.items() if v is not None}
        if "min_cosine" in values:
            values.setdefault("min_cosine_scores", values["min_cosine"])
        return replace(self, **values)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict | None) -> "Gate":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (doc or {}).items() if k in names})


# Default gates by what is compared. int8 vs float: the predictions and the output's direction
# must survive. Measured: the digits sample's int8 artifacts keep cosine 0.9998 and 100 %
# agreement; a percentile-calibrated one that clips a glitch keeps 98.3 % of the decisions at
# logit cosine 0.966; pretrained EfficientNet-Lite0's int8 .onnx keeps 94 % at 0.994, while its
# PT2E .pte that lost the predictions sits at 58 % and 0.920, all-MiniLM-L6-v2 int8 embeddings
# at 0.85 where good ones reach 0.99.
# fp16 keeps 11 bits: near-identical outputs. The same artifact on an emulated ARM core vs the
# host runtime: the kernels differ (NEON vs AVX micro-kernels, ORT's fused integer kernels on
# ARM vs reference QDQ arithmetic on an x86 host without VNNI), so rounding may differ by a few
# int8 levels, but the computation must not: measured, digits .pte/.onnx identical, the ViT
# .onnx 20 levels at worst, 0.54 on average, cosine 0.9998, top-1 100 %.
GATES = {
    "int8": Gate(),
    "fp16": Gate(min_cosine=0.999, min_agreement=99.0, min_cosine_scores=0.999),
    "emulated": Gate(min_cosine=0.999, min_agreement=99.0, min_cosine_scores=0.999, max_steps=32, mean_steps=1),
}


def arithmetic(scheme: str) -> str:
    """The gate kind for a quantization scheme."""
    return "fp16" if scheme == "fp16" else "int8"


def output_step(float_out: np.ndarray, kind: str) -> float:
    """One quantization step of the float output: an int8 level of its range, or an fp16 ulp."""
    if kind == "fp16":
        return float(np.abs(float_out).max()) * 2.0**-10 or 2.0**-24
    return float(float_out.max() - float_out.min()) / 255 or 1e-12


def is_class_scores(shape: tuple, task: str) -> bool:
    if task in ("embedding", "regression"):
        return False
    return len(shape) == 2 and shape[-1] > 1


def sqnr_db(reference: np.ndarray, other: np.ndarray) -> float:
    """10 log10(signal power / noise power), over the whole output."""
    ref = reference.astype(np.float64)
    noise = float(np.mean((ref - other.astype(np.float64)) ** 2))
    if noise == 0.0:
        return NO_NOISE_DB
    return round(min(NO_NOISE_DB, 10.0 * math.log10(max(float(np.mean(ref**2)), 1e-30) / noise)), 2)


def _cosines(f: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Per-sample cosine; for one value per sample (a regression score), over the samples instead."""
    fv, av = f.reshape(len(f), -1), a.reshape(len(a), -1)
    if fv.shape[1] == 1:
        fv, av = fv.T, av.T
    num = np.sum(fv * av, axis=1)
    den = np.linalg.norm(fv, axis=1) * np.linalg.norm(av, axis=1)
    both_zero = (den == 0) & (np.abs(fv).sum(1) == 0) & (np.abs(av).sum(1) == 0)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.where(both_zero, 1.0, 0.0))


def _pct(hits: np.ndarray) -> float:
    """Percent, 2 decimals: the figures users read and gates compare."""
    return round(100.0 * float(np.mean(hits)), 2)


def compare_output(float_out: np.ndarray, art_out: np.ndarray, gate: Gate, kind: str = "int8",
                   labels: np.ndarray | None = None, task: str = "auto") -> dict:
    """Metrics of one output (all samples concatenated) and the gate's failures for it."""
    f, a = float_out.astype(np.float64), art_out.astype(np.float64)
    if f.shape != a.shape:
        return {"shape_float": list(f.shape), "shape_artifact": list(a.shape),
                "failures": [f"shape {list(a.shape)} differs from the float model's {list(f.shape)}"]}
    bad = ~np.isfinite(a)
    if bad.any():  # no figure means anything then (and JSON has no NaN)
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        return {"non_finite": int(bad.sum()),
                "failures": [f"{int(bad.sum())} non-finite value(s) in the artifact's output (first at index "
                             f"{list(first)}, sample {first[0]}): the artifact does not compute the model"]}
    step = output_step(f, kind)
    diff = np.abs(f - a)
    cos = _cosines(f, a)
    m = {
        "cosine": round(float(cos.mean()), 6), "cosine_min": round(float(cos.min()), 6), "sqnr_db": sqnr_db(f, a),
        "max_abs_error": float(diff.max()), "mean_abs_error": float(diff.mean()), "step": step,
        "max_steps": float(diff.max() / step), "mean_steps": float(diff.mean() / step),
        "top1_agreement": None, "top1_decisive_samples": None, "top1_agreement_decisive": None,
        "accuracy_float": None, "accuracy_artifact": None,
    }
    m["cosine_percentiles"] = [round(float(v), 6) for v in np.percentile(cos, COSINE_PERCENTILES)]
    if is_class_scores(f.shape, task):
        agree = f.argmax(-1) == a.argmax(-1)
        m["top1_agreement"] = _pct(agree)
        top2 = np.sort(f, axis=-1)[..., -2:]
        decisive = (top2[..., 1] - top2[..., 0]) > DECISIVE_STEPS * step
        m["top1_decisive_samples"] = int(decisive.sum())
        m["top1_agreement_decisive"] = _pct(agree[decisive]) if decisive.any() else None
        if labels is not None and labels.shape == f.shape[:-1]:
            m["accuracy_float"] = _pct(f.argmax(-1) == labels)
            m["accuracy_artifact"] = _pct(a.argmax(-1) == labels)
        if f.ndim == 2:
            m["confusion"] = confusion(a.argmax(-1), f.argmax(-1), f.shape[-1],
                                       labels if m["accuracy_float"] is not None else None)
    m["failures"] = _failures(m, gate, len(f), scores=m["top1_agreement"] is not None)
    return m


def confusion(artifact_top1: np.ndarray, float_top1: np.ndarray, classes: int, labels: np.ndarray | None) -> dict:
    """The artifact's top-1 against the labels (or, without labels, against the float model's top-1):
    {"rows": "label" | "float top-1", "classes", and "counts" (rows x artifact columns) up to
    MAX_CONFUSION_CLASSES classes, else "flips": [[row class, artifact class, samples], ...], most first}."""
    rows = labels.astype(np.int64) if labels is not None else float_top1
    doc = {"rows": "label" if labels is not None else "float top-1", "classes": int(classes)}
    if classes <= MAX_CONFUSION_CLASSES and rows.min(initial=0) >= 0 and rows.max(initial=0) < classes:
        counts = np.zeros((classes, classes), dtype=np.int64)
        np.add.at(counts, (rows, artifact_top1), 1)
        doc["counts"] = counts.tolist()
        return doc
    pairs, n = np.unique(np.stack([rows, artifact_top1], axis=1)[rows != artifact_top1], axis=0, return_counts=True)
    order = np.argsort(-n, kind="stable")[:MAX_FLIPS]
    doc["flips"] = [[int(pairs[i][0]), int(pairs[i][1]), int(n[i])] for i in order]
    return doc


def _failures(m: dict, gate: Gate, samples: int, scores: bool) -> list[str]:
    out = []
    floor = gate.min_cosine_scores if scores else gate.min_cosine
    if floor is not None and m["cosine"] < floor:
        out.append(f"cosine similarity {m['cosine']:.4f} (mean of {samples} samples, worst {m['cosine_min']:.4f}) "
                   f"is under the gate's {floor:g}")
    decisive = m.get("top1_agreement_decisive")
    if gate.min_agreement is not None and decisive is not None and decisive < gate.min_agreement:
        out.append(f"top-1 agreement {decisive:.2f} % is under the gate's {gate.min_agreement:g} % (on the "
                   f"{m['top1_decisive_samples']} samples where the float model's top class leads by "
                   f"more than {DECISIVE_STEPS:g} output steps)")
    if gate.max_accuracy_drop is not None and m["accuracy_float"] is not None:
        drop = round(m["accuracy_float"] - m["accuracy_artifact"], 2)
        if drop > gate.max_accuracy_drop:
            out.append(f"accuracy drops {drop:.2f} points ({m['accuracy_float']:.2f} -> {m['accuracy_artifact']:.2f} %), "
                       f"over the --max-accuracy-drop {gate.max_accuracy_drop:g} budget")
    if gate.max_steps is not None and m["max_steps"] > gate.max_steps:
        out.append(f"max abs error {m['max_abs_error']:.4g} is {m['max_steps']:.1f} output steps "
                   f"(step {m['step']:.3g}), over the {gate.max_steps:g} allowed")
    if gate.mean_steps is not None and m["mean_steps"] > gate.mean_steps:
        out.append(f"mean abs error {m['mean_abs_error']:.4g} is {m['mean_steps']:.2f} output steps, "
                   f"over the {gate.mean_steps:g} allowed")
    return out


def compare_runs(float_batches: list[list[np.ndarray]], artifact_batches: list[list[np.ndarray]], gate: Gate,
                 kind: str = "int8", labels: np.ndarray | None = None, names: list[str] | None = None,
                 task: str = "auto") -> dict:
    """Every output of the model, each over all batches. `*_batches[batch][output]`.

    Returns {"ok", "samples", "outputs": [one row per output], "failures"}; each failure names its output.
    """
    n = min(len(float_batches[0]), len(artifact_batches[0]))
    samples = int(sum(b[0].shape[0] for b in float_batches))
    labels = labels[:samples] if labels is not None else None
    outputs = []
    for i in range(n):
        f = np.concatenate([b[i] for b in float_batches])
        a = np.concatenate([b[i] for b in artifact_batches])
        row = compare_output(f, a, gate, kind, labels if i == 0 else None, task)
        row["output"] = names[i] if names and i < len(names) else f"output {i}"
        outputs.append(row)
    failures = [f"{o['output']}: {msg}" for o in outputs for msg in o["failures"]]
    if len(float_batches[0]) != len(artifact_batches[0]):
        failures.append(f"the artifact returns {len(artifact_batches[0])} outputs, the float model "
                        f"{len(float_batches[0])}")
    return {"ok": not failures, "samples": samples, "outputs": outputs, "failures": failures}


def summary(result: dict) -> dict:
    """The headline figures of a comparison (the first output's, worst cosine over all outputs):
    what tables, the manifest's `metrics` and gates downstream read."""
    rows = [o for o in result["outputs"] if "cosine" in o]
    complete = len(rows) == len(result["outputs"])  # an output without figures (NaN, wrong shape): no headline
    first = result["outputs"][0] if result["outputs"] else {}
    drop = None
    if first.get("accuracy_float") is not None:
        drop = round(first["accuracy_float"] - first["accuracy_artifact"], 2)
    return {
        "samples": result["samples"],
        "accuracy_float": first.get("accuracy_float"), "accuracy_artifact": first.get("accuracy_artifact"),
        "accuracy_drop": drop,
        "top1_agreement": first.get("top1_agreement"),
        "cosine": min((o["cosine"] for o in rows), default=None) if complete else None,
        "sqnr_db": min((o["sqnr_db"] for o in rows), default=None) if complete else None,
        "max_abs_error": max((o["max_abs_error"] for o in rows), default=None) if complete else None,
        "mean_abs_error": first.get("mean_abs_error"),
    }


def all_outputs(out) -> list[np.ndarray]:
    """A model's outputs (tensor, tuple/list, dict, a HF ModelOutput) as a flat list of float numpy arrays."""
    if isinstance(out, dict):
        out = list(out.values())
    if not isinstance(out, (tuple, list)):
        out = [out]
    flat = []
    for o in out:
        if isinstance(o, (tuple, list, dict)):
            flat.extend(all_outputs(o))
        elif o is not None:
            flat.append(o.detach().float().numpy() if hasattr(o, "detach") else np.asarray(o, dtype=np.float32))
    return flat
