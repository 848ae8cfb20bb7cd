"""Parity and accuracy: the artifact in its real runtime against the float model, re-checked.

Tolerances depend on the format's arithmetic and are stated in units of the
output's quantization step, so they scale with the model's output range:

    int8 (static, dynamic): step = (max - min of the float outputs) / 255, one int8 level
    fp16:                   step = max |float output| * 2**-10, one fp16 ulp at the top of the range

An int8 network's error grows with depth (each layer requantizes), so the
bounds are generous multiples; what they catch is an artifact that computes
something else (a wrong delegate kernel, a swapped file, a broken export).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    max_steps: float  # max |artifact - float| in output steps
    mean_steps: float  # mean |artifact - float| in output steps
    min_cosine: float  # cosine similarity of the flattened outputs
    min_top1: float  # percent top-1 agreement (class scores on the last axis)


TOLERANCES = {
    # 32 int8 levels worst case, 2 on average: ~12 % / ~0.8 % of the output range. The worst
    # case measured on a good artifact: 26.6 levels, the ViT sample's int8 .onnx on one of 360
    # evaluation samples (softmax and layer norm amplify one level of requantization error),
    # with 0.28 points of accuracy lost. A wrong kernel or a swapped file is off by far more.
    "int8": Tolerance(max_steps=32, mean_steps=2, min_cosine=0.98, min_top1=95.0),
    # fp16 keeps 11 bits; accumulated rounding over a deep net stays within ~64 ulp.
    "fp16": Tolerance(max_steps=64, mean_steps=4, min_cosine=0.999, min_top1=99.0),
    # The same artifact on the emulated ARM core vs the host's runtime. The kernels differ (NEON
    # vs AVX micro-kernels; onnxruntime on ARM fuses QDQ into integer kernels where the x86 host
    # without VNNI runs reference QDQ arithmetic), so rounding may differ by a few int8 levels;
    # what must not differ is the computation. Measured on good artifacts: digits .pte and .onnx
    # identical; the ViT .onnx 20 levels at worst, 0.54 on average, cosine 0.9998, top-1 100 %.
    # The step here is the host output's int8 level.
    "emulated": Tolerance(max_steps=32, mean_steps=1, min_cosine=0.999, min_top1=99.0),
}


DECISIVE_STEPS = 2.0  # a float top-1 lead smaller than this many output steps is a near-tie


def arithmetic(scheme: str) -> str:
    return "fp16" if scheme == "fp16" else "int8"


def output_step(float_out: np.ndarray, kind: str) -> float:
    if kind == "fp16":
        return float(np.abs(float_out).max()) * 2.0**-10 or 2.0**-24
    return float(float_out.max() - float_out.min()) / 255 or 1e-12


def compare_output(float_out: np.ndarray, art_out: np.ndarray, kind: str, labels=None) -> dict:
    """Metrics of one output (all batches concatenated) and the checks against its tolerance."""
    f, a = float_out.astype(np.float64), art_out.astype(np.float64)
    if f.shape != a.shape:
        return {"shape_float": list(f.shape), "shape_artifact": list(a.shape),
                "failures": [f"shape {list(a.shape)} differs from the float model's {list(f.shape)}"]}
    tol, step = TOLERANCES[kind], output_step(f, kind)
    diff = np.abs(f - a)
    fv, av = f.ravel(), a.ravel()
    denom = float(np.linalg.norm(fv) * np.linalg.norm(av))
    m = {
        "max_abs_error": float(diff.max()), "mean_abs_error": float(diff.mean()),
        "cosine": float(fv @ av / denom) if denom else 1.0, "step": step,
        "max_steps": float(diff.max() / step), "mean_steps": float(diff.mean() / step),
        "top1_agreement": None, "accuracy_float": None, "accuracy_artifact": None,
    }
    if f.ndim >= 2 and f.shape[-1] > 1:
        agree = f.argmax(-1) == a.argmax(-1)
        m["top1_agreement"] = round(100.0 * float(np.mean(agree)), 2)
        # The top-1 check counts only samples where the float model's top class leads the
        # runner-up by more than DECISIVE_STEPS output steps: a near-tie (a random-weight net's
        # scores, an ambiguous input) flips under any rounding without the artifact being wrong.
        top2 = np.sort(f, axis=-1)[..., -2:]
        decisive = (top2[..., 1] - top2[..., 0]) > DECISIVE_STEPS * step
        m["top1_decisive_samples"] = int(decisive.sum())
        m["top1_agreement_decisive"] = round(100.0 * float(np.mean(agree[decisive])), 2) if decisive.any() else None
        if labels is not None and labels.shape == f.shape[:-1]:
            m["accuracy_float"] = round(100.0 * float(np.mean(f.argmax(-1) == labels)), 2)
            m["accuracy_artifact"] = round(100.0 * float(np.mean(a.argmax(-1) == labels)), 2)
    m["tolerance"] = {"kind": kind, **tol.__dict__}
    m["failures"] = _failures(m, tol)
    return m


def _failures(m: dict, tol: Tolerance) -> list[str]:
    out = []
    if m["max_steps"] > tol.max_steps:
        out.append(f"max abs error {m['max_abs_error']:.4g} is {m['max_steps']:.1f} output steps "
                   f"(step {m['step']:.3g}), over the {tol.max_steps:g} allowed")
    if m["mean_steps"] > tol.mean_steps:
        out.append(f"mean abs error {m['mean_abs_error']:.4g} is {m['mean_steps']:.2f} output steps, "
                   f"over the {tol.mean_steps:g} allowed")
    if m["cosine"] < tol.min_cosine:
        out.append(f"cosine similarity {m['cosine']:.4f} is under {tol.min_cosine}")
    decisive = m.get("top1_agreement_decisive")
    if decisive is not None and decisive < tol.min_top1:
        out.append(f"top-1 agreement {decisive:.2f} % is under {tol.min_top1:g} % (on the "
                   f"{m['top1_decisive_samples']} samples where the float model's top class leads by "
                   f"more than {DECISIVE_STEPS:g} output steps)")
    return out


def check_parity(float_outputs: list[list[np.ndarray]], artifact_outputs: list[list[np.ndarray]],
                 kind: str, labels=None, names: list[str] | None = None) -> dict:
    """Every output of the model, each over all batches. `*_outputs[batch][output]`."""
    n = min(len(float_outputs[0]), len(artifact_outputs[0]))
    outputs = []
    for i in range(n):
        f = np.concatenate([b[i] for b in float_outputs])
        a = np.concatenate([b[i] for b in artifact_outputs])
        row = compare_output(f, a, kind, labels)
        row["output"] = names[i] if names and i < len(names) else f"output {i}"
        outputs.append(row)
    failures = [f"{o['output']}: {msg}" for o in outputs for msg in o["failures"]]
    if len(float_outputs[0]) != len(artifact_outputs[0]):
        failures.append(f"the artifact returns {len(artifact_outputs[0])} outputs, the float model "
                        f"{len(float_outputs[0])}")
    return {"ok": not failures, "samples": int(sum(b[0].shape[0] for b in float_outputs)),
            "outputs": outputs, "failures": failures}


def all_outputs(out) -> list[np.ndarray]:
    """A model's outputs (tensor, tuple/list, dict) as a flat list of float numpy arrays."""
    if isinstance(out, dict):
        out = list(out.values())
    if not isinstance(out, (tuple, list)):
        out = [out]
    flat = []
    for o in out:
        if isinstance(o, (tuple, list, dict)):
            flat.extend(all_outputs(o))
        else:
            flat.append(o.detach().float().numpy() if hasattr(o, "detach") else np.asarray(o, dtype=np.float32))
    return flat
