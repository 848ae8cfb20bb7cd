"""Deployability lint: what in the artifact will not run on the target's fast int8 kernels.

Read from the artifact itself (what the device will execute), not from the model:
each format says what is off its fast path (`lint` in its module: ops outside the
XNNPACK delegate, compute ops not between QDQ pairs, float aten:: ops in a .ptl,
float ops in a .tflite) and which inputs have a dynamic shape (`dynamic_shape`).
Each finding has one line of advice. With the model's per-op work (graph.py) the
lint here adds the share of MACs on the fast path.
"""

from __future__ import annotations

from pathlib import Path

from edgekit.formats import for_artifact
from edgekit.formats.base import DYNAMIC_SHAPE

# Names of the exported graph's ops for the same computation as the artifact's op names.
ALIASES = {"convolution": "conv2d", "_convolution": "conv2d", "addmm": "linear", "mm": "linear",
           "Conv": "conv2d", "Gemm": "linear", "MatMul": "linear", "ConvTranspose": "conv_transpose2d",
           "CONV_2D": "conv2d", "DEPTHWISE_CONV_2D": "conv2d", "FULLY_CONNECTED": "linear"}
# The float graph's op names an artifact op may come from (cost model: which rows run off the fast path).
# Coarse on purpose: a 3-D conv left outside also marks the model's 2-D convs as outside, erring slow.
GRAPH_NAMES = {"convolution": {"conv1d", "conv2d", "conv3d"}, "_convolution": {"conv1d", "conv2d", "conv3d"},
               "addmm": {"linear", "addmm"}, "mm": {"linear", "mm", "matmul"},
               "native_layer_norm": {"layer_norm", "native_layer_norm"}}


def graph_names(ops) -> set[str]:
    out = set()
    for op in ops:
        out |= GRAPH_NAMES.get(op, {op})
    return out


def lint(artifact: Path, work: list[dict] | None = None) -> dict:
    """Findings for one artifact; `work` (rows of graph.model_work as dicts) adds MAC shares."""
    doc = for_artifact(artifact).lint(Path(artifact))
    findings = doc["findings"]
    doc.update(checked=True, ops_outside=sorted({f["op"] for f in findings if f["op"] != DYNAMIC_SHAPE}))
    if work is not None:
        doc.update(_mac_share(work, findings))
    return doc


def _mac_share(work: list[dict], findings: list[dict]) -> dict:
    """Share of the model's MACs on the fast path. The artifact's own MACs per finding where the
    format records sizes (.pte); else the float graph's MACs of ops with the same name."""
    total = sum(r["macs"] for r in work)
    if all("macs" in f for f in findings):
        slow = sum(f["macs"] for f in findings)
    else:
        names = {ALIASES.get(f["op"], f["op"]) for f in findings}
        slow = sum(r["macs"] for r in work if ALIASES.get(r["op"], r["op"]) in names)
    return {"macs_total": total, "macs_outside": slow,
            "macs_fast_share": round(max(0.0, 1.0 - slow / total), 4) if total else None}
