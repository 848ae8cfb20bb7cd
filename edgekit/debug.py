"""`edgekit debug BUILD`: where the int8 model departs from float, layer by layer.

The build's quantization is replayed in Python with torchao's PT2E numeric debugger
(`generate_numeric_debug_handle`, `prepare_for_propagation_comparison`,
`compare_results`): the same float model, quantizer, calibration data and options
as the build, every intermediate output of the converted graph logged beside the
float graph's, on the build's evaluation inputs. That is the arithmetic the
artifact runs (the XNNPACK and LiteRT int8 kernels compute what convert_pt2e's
graph simulates, up to rounding), and it has every layer's output, which the
artifact does not expose.

Per layer: SQNR (dB; 10·log10 of signal over error power) and cosine of its output
against float, and the SQNR of the error that layer *adds*: its own
noise-to-signal power minus its inputs', 10·log10(1 / (10^(-out/10) - 10^(-in/10))).
A healthy int8 layer adds error about 40 dB below its signal; the error enters
where the added error is loud (a low number), and is only carried elsewhere. The top offenders get a one-line diagnosis from what the
tensors show:

- the int8 range is many times the values' own range: the range was observed
  before an activation that clamps (a ReLU6 sharing its conv's observer);
- the range is set by a few outliers (max |x| far above its 99.9th percentile);
- channels of very different ranges share one per-tensor scale;
- a few features (the last axis, a Linear's inputs) set the range: transformer
  outlier features, which SmoothQuant moves into the weights;
- the op runs outside the delegate (from the build's lowering record).

`--baseline tutorial` replays the same build with the format's stock quantizer
(ExecuTorch's PT2E tutorial, litert-torch's README) beside it: the layers where
the stock path loses and what edgekit changed there.

For `.onnx` the artifact itself is compared, with onnxruntime's own
`qdq_loss_debug` (formats/onnx.py: ActivationComparison): every float tensor of the
QDQ graph beside the float graph it was quantized from, run in ORT; the same
statistics, diagnoses and table. The Lite Interpreter's `.ptl` has no such tool.
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgekit.errors import UsageError
from edgekit.formats import get_format
from edgekit.formats.base import QuantConfig, torch_export
from edgekit.formats.equalize import equalize
from edgekit.formats.rounding import round_weights
from edgekit.formats.smoothing import smooth
from edgekit.manifest import update_manifest
from edgekit.model.data import batches, load_npz, random_dataset
from edgekit.model.loaded import RANDOM_CALIB_SAMPLES
from edgekit.quiet import quiet_python_logs
from edgekit.validate.run import FloatReference, read_verified

SQNR_CAP_DB = 100.0  # an exact tensor (the float input itself) counts as 100 dB, not infinity
TOP = 8
# Diagnosis thresholds (ratios, unitless).
WASTED_RANGE = 4.0  # int8 range over the values' own max |x|: 4x wastes 2 of the 8 bits
OUTLIER_RATIO = 5.0  # max |x| over its 99.9th percentile
CHANNEL_SPREAD = 20.0
# The widest feature (last axis) over the median feature's max |x|: transformers' outlier features
# run 20-100x (Dettmers et al., 2022, "LLM.int8()"); a conv's last axis (width) stays within a few x.
OUTLIER_FEATURES = 10.0
CLAMPS = {"hardtanh", "relu", "clamp", "relu6"}  # largest over smallest per-channel max |x| (channels with any signal)


@dataclass
class LayerGap:
    node: str  # the node of the exported graph
    op: str  # aten op, e.g. "conv2d"
    layer: str  # the module that owns it, e.g. "blocks.3.0.bn2"
    sqnr_db: float  # of this output against float, mean over samples
    added_db: float  # SQNR of the error this node adds to its inputs' (dB; lower is worse)
    cosine: float
    int8_range: float | None  # scale * (qmax - qmin) of the quantize after it, if any
    float_max: float  # max |x| of the float output over the samples
    diagnosis: str | None = None
    baseline_sqnr_db: float | None = None  # --baseline: the stock quantizer's SQNR here


def debug_build(build_dir: str | Path, *, fmt: str | None = None, app: str | None = None, samples: int = 16,
                baseline: str | None = None, top: int = TOP, record: bool = True) -> dict:
    """The layer-by-layer comparison of one format of a build (see the module doc)."""
    quiet_python_logs()  # before torchao loads: its CUDA-kernel warnings are not the user's business
    build_dir = Path(build_dir)
    manifest = read_verified(build_dir)
    fmt = fmt or manifest["format"]
    if fmt not in manifest["formats"]:
        raise UsageError(f"--format {fmt}: this build has no {fmt} artifact (it has {', '.join(manifest['formats'])})",
                         hint=f"pass one of them, or build it: edgekit build ... --format {fmt}")
    module = get_format(fmt)
    if not hasattr(module, "pt2e_quantizer") and fmt != "onnx":
        raise UsageError(f"edgekit debug covers executorch, litert and onnx; {fmt} has no layer-by-layer tool",
                         hint="debug this build's .pte, .tflite or .onnx (--format executorch), which quantize the "
                         "same model")
    if baseline not in (None, "tutorial"):
        raise UsageError(f"--baseline {baseline}: unknown", hint="use --baseline tutorial")
    if baseline and fmt == "onnx":
        raise UsageError("--baseline tutorial replays the PT2E formats' stock quantizer; onnx has none beside "
                         "edgekit's (its quantize_static defaults are bench/RESULTS.md's baseline)",
                         hint="drop --baseline, or pass --format executorch")
    rec = manifest["formats"][fmt]
    q = rec["quantization"]
    if q["scheme"] != "static":
        raise UsageError(f"edgekit debug compares static int8 builds; this {fmt} artifact is {q['scheme']}",
                         hint="build with --quant static")
    if q.get("qat"):
        raise UsageError(f"edgekit debug replays post-training quantization; this {fmt} artifact was fine-tuned by "
                         "quantization-aware training, whose trained weights only the artifact holds",
                         hint="its run is in the manifest under quantization.qat; to see where post-training "
                         "int8 lost, debug a build made with --quality fast")
    cfg = QuantConfig(scheme="static", per_channel=q["per_channel"], calibration=q.get("calibration"),
                      skip_layers=tuple(q.get("float_layers") or ()))

    ref = FloatReference(manifest, app, samples, build_dir)
    spec, original, example, data, source = ref.get()
    outside = set((rec.get("lowering") or {}).get("ops_outside_delegate") or [])
    calib = _calibration(spec, manifest)
    model = original
    if q.get("equalize") and q["per_channel"]:
        # the float model the quantizer saw: each tensor is compared with its equalized float value
        model = equalize(original, example, batches(calib, spec.inputs))[0]
    if q.get("smooth_quant") is not None:
        # and smoothed: the activations each int8 range was set on are the smoothed ones
        model = smooth(model, example, batches(calib, spec.inputs), q["smooth_quant"])[0]
    if q.get("weight_rounding") == "gptq" and q["per_channel"]:
        # and with its weights already on the int8 grid: the error shown is the activations' (the
        # rounding's own is the gap between this model and the original, which the build's gate judges)
        model = round_weights(model, example, batches(calib, spec.inputs), cfg.skip_layers)[0]
    if fmt == "onnx":
        ours = _compare_onnx(model, example, build_dir / rec["artifact"]["file"], data, spec)
        method = "the artifact in onnxruntime beside its float graph (qdq_loss_debug), every tensor vs float"
    else:
        ours = _replay(model, example, module.pt2e_quantizer(cfg), calib, data, spec, outside)
        method = "PT2E replay of the build's quantization (torchao numeric debugger), every node vs float"
    offenders = _offenders(ours, top)
    if q.get("weight_rounding", "nearest") == "nearest":  # builds before GPTQ rounding, and --weight-rounding nearest
        _name_weight_rounding(offenders)
    baseline_top = None
    if baseline:
        theirs = _replay(original, example, module.pt2e_quantizer(cfg, tutorial=True), calib, data, spec, outside)
        mine = {g.node: g for g in ours}
        for g in theirs:
            if g.node in mine:
                mine[g.node].baseline_sqnr_db = g.sqnr_db
        # Where the stock path loses, and what the same layers give here.
        baseline_top = [{**asdict(g), "ours_sqnr_db": mine[g.node].sqnr_db if g.node in mine else None,
                         "ours_added_db": mine[g.node].added_db if g.node in mine else None}
                        for g in _name_weight_rounding(_offenders(theirs, top))]
        for row in baseline_top:
            row.pop("baseline_sqnr_db")
    doc = {
        "format": fmt,
        "artifact": rec["artifact"]["file"],
        "samples": min(samples, len(data)),
        "data": source,
        "method": method + ("; weights already rounded by GPTQ in the float model compared with"
                            if q.get("weight_rounding") == "gptq" and q["per_channel"] else ""),
        "baseline": baseline,
        "output_sqnr_db": ours[-1].sqnr_db if ours else None,
        "layers": [asdict(g) for g in ours],
        "top": [g.node for g in offenders],
    }
    if baseline_top is not None:
        doc["baseline_top"] = baseline_top
        doc["baseline_output_sqnr_db"] = ours[-1].baseline_sqnr_db if ours else None
    if record:
        update_manifest(build_dir, lambda m: m.setdefault("numeric_debug", {}).__setitem__(fmt, doc))
    return doc


WELL_SPREAD = "int8 rounding of well-spread values"
WEIGHTED_OPS = ("conv1d", "conv2d", "linear", "Conv", "Gemm", "MatMul")


def _name_weight_rounding(gaps: list[LayerGap]) -> list[LayerGap]:
    """A conv/linear whose range has nothing to fix, in an artifact whose weights were rounded to
    nearest: its weights' rounding is the other half of its error (on EfficientNet-Lite0, most of
    the model's), and GPTQ rounding is what addresses it (formats/rounding.py)."""
    for g in gaps:
        if g.op in WEIGHTED_OPS and (g.diagnosis or "").startswith(WELL_SPREAD):
            g.diagnosis = (f"{WELL_SPREAD}, and of its weights, rounded each to its nearest level "
                           "(--weight-rounding gptq rounds them for the layer's output)")
    return gaps


def _offenders(gaps: list[LayerGap], top: int) -> list[LayerGap]:
    """The nodes that lose the most SQNR themselves, diagnosed; every node's tensors then dropped."""
    worst = [g for g in sorted(gaps, key=lambda g: g.added_db) if g.added_db < SQNR_CAP_DB][:top]
    for g in worst:
        g.diagnosis = g.diagnosis or _diagnose(g)
    for g in gaps:
        g.__dict__.pop("_stats", None)
    return worst


def _calibration(spec, manifest: dict):
    """The build's calibration inputs, as the build took them (first N, or the same random draw)."""
    n = (manifest.get("recipe") or {}).get("calib_samples")
    if spec.calib:
        return load_npz(spec.calib, spec.inputs, "calib", need_labels=False).take(n)
    return random_dataset(spec.inputs, n or RANDOM_CALIB_SAMPLES)


def _replay(model, example, quantizer, calib, data, spec, outside: set) -> list[LayerGap]:
    import torch
    from torchao.quantization.pt2e import (
        compare_results,
        generate_numeric_debug_handle,
        prepare_for_propagation_comparison,
    )
    from torchao.quantization.pt2e._numeric_debugger import OutputLogger, extract_results_from_loggers
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.utils import _fuse_conv_bn_

    exported = torch_export(model, example)
    generate_numeric_debug_handle(exported)
    float_graph = exported.module()
    # prepare_pt2e folds every BatchNorm into its conv; folded here too, the float conv's output is
    # the same quantity as the int8 conv's (otherwise one is before BN and the other after).
    _fuse_conv_bn_(float_graph)
    float_logged = prepare_for_propagation_comparison(float_graph)
    prepared = prepare_pt2e(copy.deepcopy(float_graph), quantizer)
    with torch.no_grad():
        for batch in batches(calib, spec.inputs):
            prepared(*batch)
        converted = convert_pt2e(prepared)
        int8_logged = prepare_for_propagation_comparison(converted)
        stats: dict[str, _Stats] = {}
        names: dict[str, tuple[str, str]] = {}  # float node -> (int8 node, owning module)
        # One sample at a time, loggers emptied after each: every node's outputs of every sample at
        # once would be gigabytes for a 224x224 CNN.
        for batch in batches(data, spec.inputs):
            float_logged(*batch)
            int8_logged(*batch)
            summaries = compare_results(_tensor_results(extract_results_from_loggers(float_logged)),
                                        _tensor_results(_int8_results(int8_logged)))
            for summary in summaries.values():
                for r in summary.results:
                    if _is_float_tensor(r.ref) and _is_float_tensor(r.actual) and r.ref.shape == r.actual.shape:
                        stats.setdefault(summary.ref_node_name, _Stats()).add(r.actual, r.ref, float(r.sqnr))
                        names[summary.ref_node_name] = (summary.debug_info, summary.ref_module_stack)
            for logged in (float_logged, int8_logged):
                for m in logged.modules():
                    if isinstance(m, OutputLogger):
                        m.stats.clear()
    ranges = _int8_ranges(int8_logged)
    by_name = {n.name: n for n in float_graph.graph.nodes}
    gaps: dict[str, LayerGap] = {}
    for name in (n.name for n in float_graph.graph.nodes):
        if name not in stats:
            continue
        st, (handle, layer), op = stats[name], names[name], _op_name(by_name[name])
        gaps[name] = LayerGap(node=name, op=op, layer=layer, sqnr_db=round(st.sqnr, 2), added_db=0.0,
                              cosine=round(st.cosine, 5), int8_range=ranges.get(handle), float_max=st.max,
                              diagnosis=f"{op} runs outside the delegate (portable CPU kernels, float)"
                              if op in outside else None)
        gaps[name]._stats = st
        upstream = [gaps[a].sqnr_db for a in _compared_inputs(by_name[name], gaps)]
        gaps[name].added_db = round(_added_error_db(min(upstream) if upstream else SQNR_CAP_DB, st.sqnr), 2)
    reused = Counter(g.layer for g in gaps.values())
    for g in gaps.values():
        if not g.layer or reused[g.layer] > 1:  # one module called at several places (a shared activation)
            g.layer = f"{g.layer}[{g.node}]" if g.layer else g.node
    return list(gaps.values())


def _compare_onnx(model, example, artifact: Path, data, spec) -> list[LayerGap]:
    """Every float tensor of the .onnx artifact against the float graph's, sample by sample."""
    from edgekit.formats.onnx import ActivationComparison

    comparison = ActivationComparison(model, example, artifact, tuple(s.name for s in spec.inputs))
    try:
        stats: dict[str, _Stats] = {}
        for batch in batches(data, spec.inputs):
            for tensor, (ref, actual) in comparison.compare([t.numpy() for t in batch]).items():
                if ref.dtype.kind != "f" or ref.shape != actual.shape:
                    continue
                shape = next((a.shape for a in comparison.activations if a.tensor == tensor), None)
                if shape is not None and int(np.prod(shape)) == ref.size:
                    ref, actual = ref.reshape(shape), actual.reshape(shape)
                stats.setdefault(tensor, _Stats()).add(actual, ref, _sqnr_db(ref, actual))
        activations = comparison.activations
    finally:
        comparison.close()
    gaps: dict[str, LayerGap] = {}
    for act in activations:
        if act.tensor not in stats:
            continue
        st = stats[act.tensor]
        gap = LayerGap(node=act.tensor, op=act.op, layer=act.layer, sqnr_db=round(st.sqnr, 2), added_db=0.0,
                       cosine=round(st.cosine, 5), int8_range=act.int8_range, float_max=st.max)
        gap._stats = st
        upstream = [gaps[i].sqnr_db for i in act.inputs if i in gaps]
        gap.added_db = round(_added_error_db(min(upstream) if upstream else SQNR_CAP_DB, st.sqnr), 2)
        gaps[act.tensor] = gap
    reused = Counter(g.layer for g in gaps.values())
    for g in gaps.values():
        if reused[g.layer] > 1:
            g.layer = f"{g.layer}[{g.op}:{g.node}]" if len(f"{g.layer}{g.node}") < 60 else f"{g.layer}[{g.op}]"
    return list(gaps.values())


def _sqnr_db(ref: np.ndarray, actual: np.ndarray) -> float:
    ref = ref.astype(np.float64)
    noise = float(np.sum((ref - actual.astype(np.float64)) ** 2))
    signal = float(np.sum(ref ** 2))
    return SQNR_CAP_DB if noise == 0 else (10 * math.log10(signal / noise) if signal > 0 else 0.0)


def _added_error_db(before_db: float, after_db: float) -> float:
    """SQNR of the error added between an input at `before_db` and an output at `after_db`: noise
    powers (relative to the signal) add when errors are independent, as rounding errors are."""
    added = 10 ** (-after_db / 10) - 10 ** (-before_db / 10)
    return SQNR_CAP_DB if added <= 10 ** (-SQNR_CAP_DB / 10) else min(SQNR_CAP_DB, -10 * math.log10(added))


def _compared_inputs(node, gaps: dict) -> set[str]:
    """The nearest upstream nodes that were compared, looking through the ones that were not
    (getitem, views the int8 graph dropped); placeholders are exact and end the walk."""
    found, todo, seen = set(), list(node.all_input_nodes), set()
    while todo:
        a = todo.pop()
        if a.name in seen or a.op not in ("call_function", "call_module"):
            continue
        seen.add(a.name)
        if a.name in gaps:
            found.add(a.name)
        else:
            todo.extend(a.all_input_nodes)
    return found


class _Stats:
    """One node's output against float, accumulated sample by sample."""

    def __init__(self):
        self.sqnrs: list[float] = []
        self.dot = self.na = self.nb = 0.0
        self.max = 0.0
        self.p999: list[float] = []
        self.channel_max = None
        self.hidden_max = None  # per channel of the last axis: a Linear's input features

    def add(self, actual, ref, sqnr: float) -> None:
        """`actual`, `ref`: torch tensors (the PT2E replay) or numpy arrays (onnx)."""
        a = _numpy(actual).reshape(-1).astype(np.float64)
        b = _numpy(ref).astype(np.float32)
        flat = np.abs(b.reshape(-1)).astype(np.float64)
        self.sqnrs.append(min(sqnr, SQNR_CAP_DB) if not math.isnan(sqnr) else SQNR_CAP_DB)
        self.dot += float(a @ b.reshape(-1))
        self.na += float(a @ a)
        self.nb += float(flat @ flat)
        self.max = max(self.max, float(flat.max()) if flat.size else 0.0)
        self.p999.append(float(np.quantile(flat, 0.999)) if flat.size else 0.0)
        if b.ndim >= 3:  # N, C, ...: per-channel max over everything but the channel axis
            ch = np.abs(np.moveaxis(b, 1, 0)).reshape(b.shape[1], -1).max(axis=1)
            self.channel_max = ch if self.channel_max is None else np.maximum(self.channel_max, ch)
        if b.ndim == 3:  # N, T, C: the features a transformer's Linears read (its hidden dimension)
            hid = np.abs(b).reshape(-1, b.shape[-1]).max(axis=0)
            self.hidden_max = hid if self.hidden_max is None else np.maximum(self.hidden_max, hid)

    @property
    def sqnr(self) -> float:
        return float(np.mean(self.sqnrs))

    @property
    def cosine(self) -> float:
        denom = math.sqrt(self.na * self.nb)
        return self.dot / denom if denom else 1.0


def _numpy(x) -> np.ndarray:
    return x if isinstance(x, np.ndarray) else x.detach().float().numpy()


def _int8_loggers(converted):
    """(logger module, the node it logs) for every logger of the converted graph."""
    from torchao.quantization.pt2e._numeric_debugger import OutputLogger

    for n in converted.graph.nodes:
        if n.op == "call_module" and n.args and isinstance(getattr(converted, n.target), OutputLogger):
            yield getattr(converted, n.target), n.args[0]


def _int8_results(converted) -> dict:
    """extract_results_from_loggers for the int8 graph, choosing per node the value the next op
    reads: one node of the float graph has up to three loggers here (after the op, after its
    quantize, whose integers are no comparison, and after the dequantize); the dequantized one wins."""
    import torch

    q, dq = _quantize_ops(), {torch.ops.quantized_decomposed.dequantize_per_tensor.default,
                              torch.ops.quantized_decomposed.dequantize_per_channel.default}
    out, from_dq = {}, set()
    for logger, source in _int8_loggers(converted):
        if not logger.stats or source.target in q:
            continue
        if source.target in dq:
            from_dq.add(logger.debug_info)
        elif logger.debug_info in from_dq:
            continue
        out[logger.debug_info] = (logger.node_name, logger.nn_module_stack, logger.stats)
    return out


def _tensor_results(results: dict) -> dict:
    """Only the nodes that output tensors: compare_results raises on the others (an exported
    transformer's `_assert_tensor_metadata` checks log None)."""
    import torch

    return {k: v for k, v in results.items() if v[2] and all(isinstance(t, torch.Tensor) for t in v[2])}


def _quantize_ops() -> set:
    import torch

    return {torch.ops.quantized_decomposed.quantize_per_tensor.default}


def _int8_ranges(converted) -> dict:
    """debug handle -> scale * (qmax - qmin) of the quantize op after that node (the int8 range its
    output is stored in)."""
    out = {}
    for logger, source in _int8_loggers(converted):
        if source.op == "call_function" and source.target in _quantize_ops():
            scale, qmin, qmax = source.args[1], source.args[3], source.args[4]
            if isinstance(scale, (int, float)):
                out[logger.debug_info] = float(scale) * (qmax - qmin)
    return out


def _diagnose(g: LayerGap) -> str:
    st: _Stats = g._stats
    if g.int8_range and g.float_max > 0 and g.int8_range / (2 * g.float_max) > WASTED_RANGE:
        wasted = g.int8_range / (2 * g.float_max)
        if g.op in CLAMPS:
            return (f"its int8 range is {wasted:.0f}x the values' own: observed before the clamp "
                    "(the range of the op before it, e.g. a ReLU6 sharing its conv's observer)")
        return f"its int8 range is {wasted:.0f}x the values' own: a range shared with or fixed by another op"
    p999 = float(np.mean(st.p999)) if st.p999 else 0.0
    if p999 > 0 and st.max / p999 > OUTLIER_RATIO:
        return (f"range set by outliers: max |x| is {st.max / p999:.0f}x its 99.9th percentile "
                "(percentile calibration; --smooth-quant 0.5 where a LayerNorm feeds Linears)")
    if st.hidden_max is not None:
        live = st.hidden_max[st.hidden_max > 0]
        if live.size > 1 and live.max() / np.median(live) > OUTLIER_FEATURES:
            return (f"a few features set the range: the widest is {live.max() / np.median(live):.0f}x the median "
                    "feature's (transformer outlier features: --smooth-quant 0.5 where a LayerNorm/RMSNorm "
                    "feeds Linears)")
    if st.channel_max is not None:
        live = st.channel_max[st.channel_max > 0]
        if live.size > 1 and live.max() / live.min() > CHANNEL_SPREAD:
            return (f"one per-tensor scale across channels {live.max() / live.min():.0f}x apart in range "
                    "(cross-layer equalization evens them)")
    return f"{WELL_SPREAD}: nothing to fix in its range (keep it float if it matters)"


def _is_float_tensor(x) -> bool:
    import torch

    return isinstance(x, torch.Tensor) and x.is_floating_point()


def _op_name(node) -> str:
    name = getattr(node.target, "__name__", str(node.target))  # "conv2d.default"
    return name.split(".")[0]
