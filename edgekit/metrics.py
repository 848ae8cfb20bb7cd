"""How close an artifact is to its float model: accuracy, top-1 agreement, errors."""

from __future__ import annotations

import numpy as np


def compare(float_out: list[np.ndarray], artifact_out: list[np.ndarray], labels: np.ndarray | None) -> dict:
    """Compare the first output of each batch; class scores are on the last axis.

    Accuracy needs labels with one entry per prediction; without them only
    agreement with the float model is reported (the accuracy fields are None).
    """
    f = np.concatenate([o.astype(np.float64) for o in float_out])
    a = np.concatenate([o.astype(np.float64) for o in artifact_out])
    if f.shape != a.shape:
        raise ValueError(f"float output shape {f.shape} differs from artifact output shape {a.shape}")
    f_top, a_top = f.argmax(axis=-1), a.argmax(axis=-1)
    diff = np.abs(f - a)
    metrics = {
        "samples": int(f.shape[0]),
        "accuracy_float": None,
        "accuracy_artifact": None,
        "top1_agreement": _pct(f_top == a_top),
        "max_abs_error": float(diff.max()),
        "mean_abs_error": float(diff.mean()),
    }
    if labels is not None:
        labels = labels[: f.shape[0]]
        if labels.shape == f_top.shape:
            metrics["accuracy_float"] = _pct(f_top == labels)
            metrics["accuracy_artifact"] = _pct(a_top == labels)
    return metrics


def _pct(hits: np.ndarray) -> float:
    """Percent, rounded to 2 decimals: the figures users read and gates compare."""
    return round(100.0 * float(np.mean(hits)), 2)
