"""ONNX `.onnx` run by ONNX Runtime, int8 in QDQ form with onnxruntime's own quantizer.

The float graph comes from `torch.onnx.export(dynamo=True)`; onnxruntime's
`quant_pre_process` (shape inference + graph optimization) prepares it and
`quantize_static` inserts QuantizeLinear/DequantizeLinear pairs (QDQ), which
ORT's CPU provider fuses into its int8 kernels: U8 activations / S8 weights,
per-channel weights, as ORT recommends for ARM. Nodes that touch indices, masks
or masked scores stay float (formats/activations.py).

Also here: the host runtime (and the reference arithmetic an ARM board computes,
for x86 hosts without VNNI), the lint (compute ops not between QDQ pairs run in
float), onnxruntime's own per-node profile, and the emulated board's guest
onnxruntime.
"""

from __future__ import annotations

import ast
import contextlib
import io
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from edgekit.emulator.check import generate_in_guest_python, run_in_guest_python
from edgekit.errors import FormatUnsupported, UsageError
from edgekit.formats.activations import onnx_float_nodes
from edgekit.formats.base import (
    DYNAMIC_SHAPE,
    PERCENTILE,
    QuantConfig,
    finding,
    layer_selected,
    op_row,
)
from edgekit.quiet import quiet_python_logs, root_logger_quiet

NAME = "onnx"
DISPLAY_NAME = "ONNX Runtime .onnx (QDQ)"
BACKEND = "onnxruntime"
SUFFIX = ".onnx"
DEVICE_RUNTIME = "onnxruntime"
# The Python onnxruntime that runs on this host runs on the device too: its footprint is measured here.
DEVICE_RUNTIME_MB = None
# Float leftovers in an .onnx still run on ORT's vectorized, multi-threaded float kernels.
OFF_FAST_PATH_IS_SCALAR = False
ARM_KERNELS = "mlas"  # on ARM (validate/cost.py): the CPU provider runs QLinearConv/MatMulInteger on MLAS
NATIVE_TOOLS = ("onnxruntime_perf_test",)
GUEST_WHEELS = {"onnxruntime": None}  # the host's version on the emulated board: host and guest outputs compare
PREFERRED_NATIVE_TOOL = None
SCHEMES = ("static", "dynamic", "fp16")
# onnxruntime's calibrators, and "histogram": the PT2E formats' own range search (torchao's
# HistogramObserver, the range minimising L2 quantization error over a histogram) on the tensors
# onnxruntime's calibrator collects (_HistogramL2Collector), so the name means one thing in every format.
CALIBRATIONS = ("minmax", "percentile", "entropy", "histogram")
DEFAULT_CALIBRATION = "minmax"
_SCOPES_KEY = "pkg.torch.onnx.name_scopes"  # module path of each node, written by the dynamo exporter
# fp16 weight storage pays off only for tensors of some size; small ones (shapes,
# scalars) stay float32 so no Cast is spent on them.
_FP16_MIN_ELEMENTS = 64


@dataclass
class OnnxModel:
    """A quantized ONNX model in memory, with what the quantizer was told."""

    data: bytes
    excluded_nodes: list[str]


def available() -> str | None:
    return None  # onnx, onnxruntime and onnxscript are dependencies of edgekit


def quantize(model, example_inputs: tuple, calib_batches: Iterable[tuple], cfg: QuantConfig) -> OnnxModel:
    quiet_python_logs()
    with tempfile.TemporaryDirectory(prefix="edgekit-onnx-") as tmp:
        float_path, pre_path, out_path = (Path(tmp) / n for n in ("float.onnx", "pre.onnx", "q.onnx"))
        export_float(model, example_inputs, float_path, cfg.input_names)
        if cfg.scheme == "fp16":
            return OnnxModel(_weights_to_fp16(float_path), [])
        _pre_process(float_path, pre_path)
        excluded = list(dict.fromkeys(_nodes_outside(pre_path, cfg) + _not_quantizable(pre_path)))
        # The histogram calibrators print their bin counts; the quantizer logs on the root logger.
        with contextlib.redirect_stdout(io.StringIO()), root_logger_quiet():
            if cfg.scheme == "dynamic":
                _quantize_dynamic(pre_path, out_path, cfg, excluded)
            else:
                _quantize_static(pre_path, out_path, calib_batches, cfg, excluded)
        return OnnxModel(out_path.read_bytes(), excluded)


def export_float(model, example_inputs: tuple, path: Path, input_names: Sequence[str] = ()) -> None:
    """torch.onnx.export (dynamo); its progress chatter on stdout is kept off the user's terminal."""
    import torch

    names = list(input_names) or None
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            torch.onnx.export(model, tuple(example_inputs), str(path), dynamo=True, input_names=names,
                              external_data=False, verbose=False)
        except Exception as e:
            raise FormatUnsupported(
                f"torch.onnx.export failed: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}",
                hint="the model must be capturable by torch.export; try --format executorch to compare",
            ) from e


def _nodes_outside(path: Path, cfg: QuantConfig) -> list[str]:
    """ONNX node names that belong to layers kept float (or outside the selected ones)."""
    if not cfg.skip_layers and cfg.only_layers is None:
        return []
    import onnx

    excluded = []
    for node in onnx.load(str(path)).graph.node:
        props = {p.key: p.value for p in node.metadata_props}
        scopes = ast.literal_eval(props[_SCOPES_KEY]) if _SCOPES_KEY in props else []
        if not layer_selected(scopes, cfg):
            excluded.append(node.name)
    return excluded


def _pre_process(src: Path, dst: Path) -> None:
    """onnxruntime's quant_pre_process: shape inference, then graph optimisation (LayerNorm,
    GELU fusions). Its symbolic shape inference, written for dynamic transformer shapes, fails on
    some exported graphs (an Expand whose target shape it cannot compute: TypeError in
    _broadcast_shapes, seen on all-MiniLM-L6-v2); edgekit exports static shapes, which ONNX's own
    shape inference resolves fully, so that failure is retried without the symbolic pass."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(src), str(dst))
    except Exception:  # noqa: BLE001 - any failure of the symbolic pass; the retry reports its own
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)


# ---------------------------------------------------------------- numeric debugging


@dataclass
class Activation:
    """One float tensor of the graph, as `edgekit debug` compares it."""

    tensor: str
    node: str  # the node that writes it
    op: str  # its op type, e.g. "Conv"
    layer: str  # the module it came from (the exporter's name scopes), else the node
    inputs: list[str]  # the tensors that node reads
    int8_range: float | None  # scale * 255 of the QuantizeLinear the artifact puts on it, if any
    shape: list[int] | None  # from the float graph's shape inference (the saved values are flat)


class ActivationComparison:
    """The artifact beside the float model it was quantized from, every float activation of both
    (onnxruntime's qdq_loss_debug: `modify_model_output_intermediate_tensors` and
    `create_activation_matching`), one batch at a time.

    The float side is the model exported and pre-processed exactly as for quantization, so its
    tensor names are the ones the QDQ artifact kept; the artifact runs with graph optimizations
    off (the reference QDQ arithmetic, as validation runs it on a saturating x86 host)."""

    def __init__(self, model, example_inputs: tuple, artifact: Path, input_names: Sequence[str] = ()):
        import onnx
        import onnxruntime as ort
        from onnxruntime.quantization.qdq_loss_debug import modify_model_output_intermediate_tensors

        self._tmp = tempfile.TemporaryDirectory(prefix="edgekit-onnx-debug-")
        tmp = Path(self._tmp.name)
        float_path, pre_path = tmp / "float.onnx", tmp / "pre.onnx"
        export_float(model, example_inputs, float_path, input_names)
        _pre_process(float_path, pre_path)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        self._sessions = []
        with root_logger_quiet():
            for src, name in ((pre_path, "float"), (Path(artifact), "qdq")):
                augmented = tmp / f"{name}_augmented.onnx"
                modify_model_output_intermediate_tensors(str(src), str(augmented))
                self._sessions.append(ort.InferenceSession(str(augmented), options, providers=["CPUExecutionProvider"]))
        self._names = [i.name for i in self._sessions[0].get_inputs()]
        self.activations = _activations(onnx.load(str(pre_path)), onnx.load(str(artifact)))

    def compare(self, batch: Sequence[np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """tensor -> (float value, the artifact's value that the next op reads) on one batch."""
        from onnxruntime.quantization.qdq_loss_debug import create_activation_matching

        feed = {n: np.ascontiguousarray(a) for n, a in zip(self._names, batch)}
        saved = [_saved(session, session.run(None, feed)) for session in self._sessions]
        match = create_activation_matching(saved[1], saved[0])
        out = {}
        for act in self.activations:
            m = match.get(act.tensor)
            if m is None or "float" not in m:
                continue
            actual = m.get("post_qdq") if m.get("post_qdq") is not None else m.get("pre_qdq")
            if actual is not None:
                out[act.tensor] = (m["float"][0], actual[0])
        return out

    def close(self) -> None:
        self._tmp.cleanup()


def _saved(session, values: list) -> dict[str, list[np.ndarray]]:
    from onnxruntime.quantization.qdq_loss_debug import _TENSOR_SAVE_POSTFIX

    return {o.name[: -len(_TENSOR_SAVE_POSTFIX)]: [v] for o, v in zip(session.get_outputs(), values)
            if o.name.endswith(_TENSOR_SAVE_POSTFIX)}


def _static_shapes(graph) -> dict[str, list[int]]:
    """tensor -> its dims, for the graph's inputs, outputs and inferred values of fully known shape."""
    shapes = {}
    for vi in [*graph.value_info, *graph.input, *graph.output]:
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        if dims and all(d > 0 for d in dims):
            shapes[vi.name] = dims
    return shapes


def _activations(float_model, qdq_model) -> list[Activation]:
    """Every node output of the float graph, in graph order, with the artifact's int8 range on it."""
    from onnx import numpy_helper

    inits = {i.name: i for i in qdq_model.graph.initializer}
    ranges = {}
    for node in qdq_model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[1] in inits:
            scale = numpy_helper.to_array(inits[node.input[1]])
            if scale.size == 1:
                source = node.input[0].removesuffix("_QuantizeLinear_Input")
                ranges[source] = float(scale.reshape(-1)[0]) * 255  # uint8 activations: 256 levels
    shapes = _static_shapes(float_model.graph)
    out = []
    for node in float_model.graph.node:
        props = {p.key: p.value for p in node.metadata_props}
        scopes = ast.literal_eval(props[_SCOPES_KEY]) if _SCOPES_KEY in props else []
        modules = [s for s in scopes if s]
        layer = modules[-2] if len(modules) > 1 else (modules[0] if modules else node.name)
        for tensor in node.output:
            out.append(Activation(tensor, node.name, node.op_type, layer, [i for i in node.input if i],
                                  ranges.get(tensor), shapes.get(tensor)))
    return out


def _not_quantizable(path: Path) -> list[str]:
    """Nodes that read or write indices, masks or masked scores: they stay float
    (the rule every format shares: edgekit/formats/activations.py)."""
    import onnx

    return onnx_float_nodes(onnx.shape_inference.infer_shapes(onnx.load(str(path))))


class _CalibrationReader:
    """Feeds calibration batches to onnxruntime's calibrator, by input name."""

    def __init__(self, path: Path, batches: Iterable[tuple]):
        import onnx

        self._names = [i.name for i in onnx.load(str(path)).graph.input]
        self._batches = iter(batches)

    def get_next(self):
        batch = next(self._batches, None)
        return None if batch is None else {n: t.numpy() for n, t in zip(self._names, batch)}

    def rewind(self):  # onnxruntime may call it; one pass is all we feed
        pass


def _quantize_static(src: Path, dst: Path, batches, cfg: QuantConfig, excluded: list[str]) -> None:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    calibration = cfg.calibration or DEFAULT_CALIBRATION
    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy,
              "histogram": CalibrationMethod.Percentile}[calibration]  # its histogram calibrator, our collector
    # numpy's overflow warnings from the histogram calibrators are theirs; a range that cannot be
    # binned at all is a named limit below.
    with _calibrator_options(l2_histogram=calibration == "histogram"), np.errstate(all="ignore"):
        try:
            quantize_static(
                str(src), str(dst), _CalibrationReader(src, batches), quant_format=QuantFormat.QDQ,
                per_channel=cfg.per_channel, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=method, nodes_to_exclude=excluded,
                extra_options={"CalibPercentile": PERCENTILE},
            )
        except ValueError as e:
            if "bins" not in str(e):
                raise
            # A tensor spanning float32's whole range (an additive attention mask of finfo.min)
            # has no histogram of finite bins: measured on all-MiniLM-L6-v2 with entropy.
            raise FormatUnsupported(
                f"onnx --calibration {cfg.calibration}: onnxruntime's histogram calibrator cannot bin a tensor "
                f"of this model ({e})", hint="use --calibration minmax or percentile") from None


# The KL-divergence (entropy) search picks a clipping threshold among histogram
# bins; it needs many more bins than quantized levels to have anything to
# choose from (TensorRT's recipe: 2048 bins searched down to 128 levels).
_ENTROPY_BINS = {"num_bins": 2048, "num_quantized_bins": 128}


@contextlib.contextmanager
def _calibrator_options(l2_histogram: bool = False):
    """What quantize_static forwards no option for, given to the calibrator factory it calls:

    - it builds its entropy calibrator with 128 bins for 128 levels: with equal counts the
      search has one candidate (the full min/max range), so 'entropy' would silently be
      'minmax'; the calibrator gets the bins it needs;
    - `l2_histogram`: the histogram calibrator collects into _HistogramL2Collector."""
    import importlib

    # The module, not the `quantize` function the package re-exports under that name.
    ort_quantize = importlib.import_module("onnxruntime.quantization.quantize")
    original = ort_quantize.create_calibrator

    def create_calibrator(*args, extra_options=None, **kwargs):
        calibrator = original(*args, extra_options={**_ENTROPY_BINS, **(extra_options or {})}, **kwargs)
        if l2_histogram:
            calibrator.collector = _HistogramL2Collector()  # collect_data makes its own only when there is none
        return calibrator

    ort_quantize.create_calibrator = create_calibrator
    try:
        yield
    finally:
        ort_quantize.create_calibrator = original


class _HistogramL2Collector:
    """onnxruntime's calibration tensors into torchao's HistogramObserver, one per tensor: the range
    XNNPACK's and LiteRT's quantizers observe (a histogram over every batch, then the range whose
    uint8 quantization has the least L2 error on it, torchao's _non_linear_param_search), for the
    same asymmetric uint8 activations onnxruntime writes here. The collector interface is
    onnxruntime's HistogramCollector's: collect({tensor: [arrays]}), compute_collection_result()."""

    def __init__(self):
        self.observers: dict = {}
        # tensors whose span float32 cannot hold (an additive attention mask of finfo.min beside
        # positive scores): no histogram of finite bins, so no range from here; activations.py keeps
        # such tensors float in every format
        self.unbinnable: set[str] = set()

    def collect(self, name_to_arr: dict) -> None:
        import torch
        from torchao.quantization.pt2e.observer import HistogramObserver

        for name, arrays in name_to_arr.items():
            for a in arrays if isinstance(arrays, list) else [arrays]:
                a = np.asarray(a)
                if name in self.unbinnable or not a.size or not np.issubdtype(a.dtype, np.floating):
                    continue
                if not np.isfinite(np.float32(a.max()) - np.float32(a.min())):
                    self.unbinnable.add(name)
                    self.observers.pop(name, None)
                    continue
                if name not in self.observers:
                    self.observers[name] = HistogramObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine)
                self.observers[name](torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)))

    def compute_collection_result(self) -> dict:
        """{tensor: (lowest, highest, histogram, bin edges)}: the observer's range as the scale and
        zero point it chose span it, which onnxruntime turns back into that scale and zero point."""
        ranges = {}
        for name, observer in self.observers.items():
            scale, zero_point = (float(v) for v in observer.calculate_qparams())
            low, high = (observer.quant_min - zero_point) * scale, (observer.quant_max - zero_point) * scale
            ranges[name] = (np.array(low, dtype=np.float32), np.array(high, dtype=np.float32),
                            observer.histogram.numpy(), np.linspace(float(observer.min_val), float(observer.max_val),
                                                                    observer.bins + 1, dtype=np.float32))
        return ranges


def _quantize_dynamic(src: Path, dst: Path, cfg: QuantConfig, excluded: list[str]) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Like the other backends, dynamic int8 is for matmul-heavy layers: ConvInteger
    # has no fast ARM kernel in ORT, so convolutions stay float.
    # Weights uint8 (U8U8): MatMulInteger has no reference path to validate through, and on an x86
    # host without VNNI its U8S8 kernel saturates (host_saturates_u8s8): a 3-Linear net measured
    # cosine 0.984 to float with int8 weights there, 0.99996 with uint8. ARM's kernels accumulate
    # both in int32, so the device computes the same either way and the host now sees it.
    # Gather: embedding tables stored as uint8, dequantized per lookup (weight-only, no compute
    # change). A word-embedding table is most of a small encoder's bytes: all-MiniLM-L6-v2's .onnx
    # measured 57.9 MB with it float, 21.7 MB with it uint8, embedding cosine 0.9937 -> 0.9935.
    quantize_dynamic(str(src), str(dst), per_channel=cfg.per_channel, weight_type=QuantType.QUInt8,
                     nodes_to_exclude=excluded, op_types_to_quantize=["MatMul", "Gemm", "LSTM", "GRU", "Attention", "Gather"])


def _weights_to_fp16(path: Path) -> bytes:
    """Weight-only fp16: large float32 initializers stored as fp16, cast back on load.

    Halves the weight bytes; compute stays float32, so it runs on every ORT CPU
    build (ORT's fp16 CPU kernels cover few ops).
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    casts = []
    for init in list(graph.initializer):
        if init.data_type != onnx.TensorProto.FLOAT:
            continue
        array = numpy_helper.to_array(init)
        if array.size < _FP16_MIN_ELEMENTS:
            continue
        stored = f"{init.name}__fp16"
        graph.initializer.remove(init)
        graph.initializer.append(numpy_helper.from_array(array.astype(np.float16), stored))
        casts.append(helper.make_node("Cast", [stored], [init.name], name=f"cast_{stored}", to=onnx.TensorProto.FLOAT))
    for i, cast in enumerate(casts):
        graph.node.insert(i, cast)  # before every consumer: nodes must stay topologically sorted
    return model.SerializeToString()


def export(qmodel: OnnxModel, example_inputs: tuple, path: Path) -> dict:
    import onnx

    model = onnx.load_from_string(qmodel.data)
    _canonical(model.graph)
    Path(path).write_bytes(model.SerializeToString(deterministic=True))
    ops = [n.op_type for n in model.graph.node]
    return {
        "operators": sorted(set(ops)),
        "qdq_pairs": ops.count("QuantizeLinear"),
        "excluded_nodes": qmodel.excluded_nodes,
        "warnings": [],
    }


# Node metadata the dynamo exporter writes that names this build's process and machine: the
# per-process name edgekit gives an app's model module, and source paths of the stack trace.
_MACHINE_METADATA = {"namespace", "pkg.torch.onnx.class_hierarchy", "pkg.torch.onnx.stack_trace"}


def _canonical(graph) -> None:
    """The same model gives the same bytes: each node's attributes in name order (the exporter and
    quantizer add them in an order that varies from process to process) and no metadata naming
    the process or the machine (module scopes, which name the user's layers, are kept)."""
    for node in graph.node:
        attributes = sorted(node.attribute, key=lambda a: a.name)
        del node.attribute[:]
        node.attribute.extend(attributes)
        kept = [p for p in node.metadata_props if p.key not in _MACHINE_METADATA]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
        for a in attributes:
            for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                _canonical(sub)


def host_saturates_u8s8() -> bool:
    """True on x86 CPUs without VNNI: ORT's fused U8S8 int8 kernels there sum
    pairs of products in int16 and saturate when activations span the full
    0..255 range and weights reach +-127 (ORT documents this and suggests
    reduce_range). ARM's int8 kernels accumulate in int32 and never saturate."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_vnni" not in flags and "avx_vnni" not in flags


REFERENCE_ARITHMETIC = ("reference QDQ arithmetic: this x86 host lacks VNNI, where onnxruntime's fused int8 "
                        "kernels saturate; ARM kernels do not")


class OrtRunner:
    """An `.onnx` in an onnxruntime CPU session.

    `exact=True` runs the QDQ graph as written (dequantize -> float op ->
    quantize) with graph optimizations off: the int8 arithmetic of the ARM
    kernels without x86's int16 saturation. Validation uses it on hosts where
    saturation would understate what the device computes.
    """

    runtime = "onnxruntime"

    def __init__(self, path: Path | bytes, threads: int | None = None, exact: bool = False):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        if exact:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        self.validated_as = REFERENCE_ARITHMETIC if exact else None
        model = path if isinstance(path, bytes) else str(path)
        self._session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self._names = [i.name for i in self._session.get_inputs()]

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return self._session.run(None, {n: np.ascontiguousarray(a) for n, a in zip(self._names, inputs)})


def load(path: Path, threads: int | None = None) -> OrtRunner:
    """For timing: the optimized session, as a device runs it."""
    return OrtRunner(path, threads)


def screen(qmodel: OnnxModel) -> OrtRunner:
    """The quantized model in memory, run as validation runs the artifact (build/quality.py)."""
    return OrtRunner(qmodel.data, exact=host_saturates_u8s8())


SCREENED_AS = "onnxruntime, before writing the file"


def load_for_validation(path: Path) -> OrtRunner:
    """For accuracy: what an ARM device computes (see host_saturates_u8s8)."""
    return OrtRunner(path, exact=host_saturates_u8s8())


# ---------------------------------------------------------------- lint

COMPUTE = {"Conv", "ConvTranspose", "Gemm", "MatMul", "LSTM", "GRU", "Attention", "Einsum"}
# Pure data movement: a QDQ chain stays quantized through these.
PASSTHROUGH = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity", "Shape", "Gather",
               "Slice", "Concat", "Cast", "Constant"}
ADVICE = ("runs in float on ORT's CPU provider: quantize it (check quantize_static's op_types_to_quantize) "
          "or keep it if it is cheap")
DYNAMIC_ADVICE = ("ONNX Runtime's mobile execution providers (XNNPACK, NNAPI) take fixed shapes only, and so do the "
                  "native benchmark tools: fix it (python -m onnxruntime.tools.make_dynamic_shape_fixed) or export "
                  "with --input-shape")


def lint(path: Path) -> dict:
    """Compute ops not between DequantizeLinear and QuantizeLinear (ORT runs them in float: no QDQ
    fusion), and inputs with a symbolic or missing dim."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    macs_of = _macs(model)
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    initializers = {i.name for i in graph.initializer}

    def from_dq(name: str, depth=0) -> bool:
        if name in initializers or not name:
            return True  # weights/biases: ORT quantizes them with the op when the activations are QDQ
        n = producer.get(name)
        if n is None or depth > 8:
            return False
        if n.op_type == "DequantizeLinear":
            return True
        return n.op_type in PASSTHROUGH and from_dq(n.input[0], depth + 1)

    def into_q(name: str, depth=0) -> bool:
        users = consumers.get(name, [])
        if not users or depth > 8:
            return False
        return all(u.op_type == "QuantizeLinear" or (u.op_type in PASSTHROUGH and all(into_q(o, depth + 1) for o in u.output))
                   for u in users)

    counts: dict[str, list] = {}
    for n in graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") or n.op_type in PASSTHROUGH or n.op_type in INT8_OPS:
            continue
        data_inputs = [i for i in n.input if i and i not in initializers]
        quantized = all(from_dq(i) for i in data_inputs) and all(into_q(o) for o in n.output)
        if not quantized and (n.op_type in COMPUTE or data_inputs):
            counts.setdefault(n.op_type, []).append(n)
    findings = [finding(op, len(nodes), ADVICE, "ONNX Runtime CPU, float", macs=sum(macs_of(n) for n in nodes))
                for op, nodes in sorted(counts.items())]
    findings += [finding(DYNAMIC_SHAPE, 1, DYNAMIC_ADVICE, f"input {name}", macs=0) for name in _dynamic_inputs(graph)]
    return {"fast_path": "QDQ int8 kernels", "findings": findings}


# Ops that are int8 kernels themselves (dynamic quantization's, and the fused QOperator forms), or
# the per-call quantization of their inputs: on the fast path whatever surrounds them.
INT8_OPS = {"MatMulInteger", "ConvInteger", "QLinearMatMul", "QLinearConv", "DynamicQuantizeLinear",
            "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}


def _macs(model):
    """node -> its multiply-accumulates, from ONNX shape inference (0 where shapes are unknown or
    the op does no MACs): the lint's findings carry their own MACs, as the .pte's do."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - no shapes: findings count no MACs, the lint itself still holds
        inferred = model
    shapes = {i.name: list(i.dims) for i in inferred.graph.initializer} | _static_shapes(inferred.graph)

    def macs(node) -> int:
        out = shapes.get(node.output[0]) if node.output else None
        if not out:
            return 0
        numel = int(np.prod(out))
        if node.op_type in ("MatMul", "Gemm", "MatMulInteger") and shapes.get(node.input[0]):
            a = shapes[node.input[0]]
            transposed = node.op_type == "Gemm" and any(x.name == "transA" and x.i for x in node.attribute)
            return numel * (a[0] if transposed else a[-1])
        if node.op_type in ("Conv", "ConvInteger") and shapes.get(node.input[1]):
            return numel * int(np.prod(shapes[node.input[1]][1:]))
        return 0

    return macs


def _dynamic_inputs(graph) -> list[str]:
    initializers = {i.name for i in graph.initializer}
    found = []
    for i in graph.input:
        if i.name in initializers:
            continue
        dims = i.type.tensor_type.shape.dim
        loose = [f"dim {k} '{d.dim_param}'" if d.dim_param else f"dim {k} unknown"
                 for k, d in enumerate(dims) if not d.HasField("dim_value")]
        if loose:
            found.append(f"{i.name} ({', '.join(loose)})")
    return found


# ---------------------------------------------------------------- profile


def profile(path: Path, batch: list[np.ndarray], runs: int, threads: int) -> list[dict]:
    """onnxruntime's own profiler (SessionOptions.enable_profiling): per-node kernel time."""
    import json

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.intra_op_num_threads = threads
    with tempfile.TemporaryDirectory(prefix="edgekit-ortprof-") as tmp:
        options.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = {i.name: a for i, a in zip(session.get_inputs(), batch)}
        for _ in range(runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    totals: dict[str, list] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            node = e["name"][: -len("_kernel_time")]
            name = f"{e.get('args', {}).get('op_name', '?')} {node}"
            t = totals.setdefault(name, [0.0, 0])
            t[0] += e.get("dur", 0) / 1000.0  # us -> ms
            t[1] += 1
    return [op_row(name, ms, calls, runs) for name, (ms, calls) in totals.items()]


# ---------------------------------------------------------------- the emulated board


def emulate(core, artifact: Path, samples: list[list[np.ndarray]], input_names: list[str]):
    """In onnxruntime under the guest's python (the aarch64 wheel, as on a Pi)."""

    return run_in_guest_python(core, artifact, samples, input_names, "artifact", DEVICE_RUNTIME)


# ---------------------------------------------------------------- decoders (edgekit build --task text-generation)

def decoder_scheme(weight_bits: int = 4, weight_method: str = "rtn") -> str:
    """Weight-only: onnxruntime's MatMulNBits takes int4 (or int8) weights in blocks, rounded by RTN or HQQ."""
    return f"int{weight_bits} MatMulNBits ({weight_method.upper()})"


DECODER_BUILDER = "onnxruntime-genai model builder"
# What the builder writes that a text-generation build ships: the graph first, then what it reads beside it.
DECODER_FILES = ("model.onnx", "model.onnx.data", "genai_config.json")
DECODER_RUNTIME = "onnxruntime"  # runtime/runner.py OnnxDecoder steps a decoder .onnx


def decoder_layers(model, group_size: int, embedding_bits: int,
                   weight_bits: int = 4) -> list[tuple[object, str, int, int | None]]:
    """(filter_fn, what, weight bits, weights per scale or None for float) for each kind of layer, as the
    builder's RTN quantizer (algo_config=rtn) leaves them: every MatMul int4 (int8 with --weight-bits 8)
    in blocks of group_size with an fp32 scale per block, the output head int8 in the same blocks when
    --embedding-bits is 8, and the embedding table float (the builder quantizes Gather only when the
    head shares it)."""
    import torch

    head = model.get_output_embeddings()
    head_bits = max(embedding_bits, weight_bits)
    return [
        (lambda module, fqn: isinstance(module, torch.nn.Embedding), "embeddings: float weights", 32, None),
        (lambda module, fqn: module is head,
         f"output head: int{head_bits} weights in groups of {group_size}", head_bits, group_size),
        (lambda module, fqn: isinstance(module, torch.nn.Linear) and module is not head,
         f"linear layers: int{weight_bits} weights in groups of {group_size}", weight_bits, group_size),
    ]


def prepare_decoder_qat(model, group_size: int, embedding_bits: int, weight_bits: int = 4) -> None:
    """QAT for the MatMulNBits weights, in place: torchao's fake quantization of 8da4w (formats/executorch.py),
    int4 symmetric in groups of group_size with int8 activations (8da8w with --weight-bits 8). onnxruntime's RTN rounds to a
    slightly different symmetric grid (scale from the signed extreme over 8, not max|w| over 7.5), so
    the weights are trained for int4 noise of that size rather than for exactly the values shipped;
    on tinylm's held-out text that keeps the gate (tests/test_llm.py), where RTN alone misses it."""
    from edgekit.formats.executorch import prepare_decoder_qat as fake_quantize

    fake_quantize(model, group_size, embedding_bits, weight_bits)


def convert_decoder_qat(model, group_size: int, embedding_bits: int, weight_bits: int = 4) -> None:
    """The QAT-trained model back to float Linear/Embedding layers holding the trained weights, in place:
    export_decoder's builder rounds them to int4 (torchao's QATConfig convert step with no base config)."""
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    quantize_(model, QATConfig(step="convert"))


def builder_has_graph(model, tokenizer) -> bool:
    """Whether onnxruntime-genai's model builder writes a graph for this decoder's architecture: it raises
    NotImplementedError for an unknown one, or fails on the config attributes its graphs read (GPT-2 has no
    intermediate_size). The builder reads a directory: the config and tokenizer go to a temporary one
    (no weights), and it is run with config_only."""
    with tempfile.TemporaryDirectory(prefix="edgekit-onnx-check-") as tmp:
        model.config.save_pretrained(Path(tmp) / "model")
        tokenizer.save_pretrained(Path(tmp) / "model")
        try:
            _run_builder(Path(tmp) / "model", Path(tmp) / "out", Path(tmp) / "cache", ["config_only=true"])
        except (NotImplementedError, AttributeError, KeyError):
            return False
    return True


def export_decoder(model, tokenizer, out_dir: Path, max_seq_len: int, group_size: int, embedding_bits: int,
                   weight_bits: int = 4, precision: str | None = None, weight_method: str = "rtn") -> dict:
    """A decoder (float weights, QAT-trained or not) to an int4 (weight_bits 8: int8) `.onnx`: with
    onnxruntime-genai's model builder where it has a graph for the architecture, else with torch.onnx
    (_export_with_torch_onnx, GPT-2 among them). Either way the same files, the same inputs and outputs
    (input_ids, attention_mask, past_key_values.N.key/value -> logits, present.N.key/value) and the same
    weights: every MatMul RTN-rounded by onnxruntime's MatMulNBitsQuantizer, symmetric, blocks of
    group_size, int8 compute on ARM (accuracy_level 4), the output head int8 with embedding_bits 8.
    weight_method "hqq": the int4 MatMuls are rounded by onnxruntime's HQQ instead (half-quadratic
    optimization of each block's scale and zero point; Badri and Shaji, "Half-Quadratic Quantization of
    Large Machine Learning Models", 2023): the float graph is written first, then quantized as the
    torch.onnx path quantizes (_quantize_matmuls), the head int8 RTN as before.
    precision="fp32" writes the float graph instead (the export checks compare it with the eager model)."""
    precision = precision or f"int{weight_bits}"
    head_bits = max(embedding_bits, weight_bits)
    if not builder_has_graph(model, tokenizer):
        return _export_with_torch_onnx(model, tokenizer, out_dir, max_seq_len, group_size, head_bits, precision,
                                       weight_method)
    if weight_method == "rtn" or precision == "fp32":
        return _export_with_builder(model, tokenizer, out_dir, max_seq_len, group_size, embedding_bits, precision)
    import onnx

    facts = _export_with_builder(model, tokenizer, out_dir, max_seq_len, group_size, embedding_bits, "fp32")
    graph, options = _quantize_matmuls(onnx.load(str(out_dir / "model.onnx")), precision, head_bits, group_size,
                                       weight_method)
    _save_with_weights_beside(graph, out_dir)
    from collections import Counter

    return {**facts, "options": options, "ops": dict(Counter(n.op_type for n in graph.graph.node).most_common())}


def _export_with_builder(model, tokenizer, out_dir: Path, max_seq_len: int, group_size: int, embedding_bits: int,
                         precision: str) -> dict:
    """The builder writes its own graph for the architecture (GroupQueryAttention with the KV cache as
    inputs/outputs, fused norms, rotary caches) and quantizes every MatMul with onnxruntime's
    MatMulNBitsQuantizer. It reads a model directory, so the model is saved to a temporary one first.
    The files go into out_dir (DECODER_FILES and the builder's tokenizer copies); genai_config.json's
    context is cut to max_seq_len, so onnxruntime-genai's own runtime and edgekit's runner
    (runtime/runner.py OnnxDecoder) stop where the manifest says."""
    import json

    options = [] if precision == "fp32" else ["algo_config=rtn", f"block_size={group_size}", "accuracy_level=4"]
    if precision == "int4" and embedding_bits == 8:
        options.append("matmul_mixed_precision=last_matmul:int8")
    with tempfile.TemporaryDirectory(prefix="edgekit-onnx-decoder-") as tmp:
        source = Path(tmp) / "model"
        model.save_pretrained(source)
        tokenizer.save_pretrained(source)
        _run_builder(source, out_dir, Path(tmp) / "cache", options, precision)
    config_file = out_dir / "genai_config.json"
    config = json.loads(config_file.read_text())
    config["model"]["context_length"] = max_seq_len
    config["search"]["max_length"] = max_seq_len
    config_file.write_text(json.dumps(config, indent=4) + "\n")
    from collections import Counter
    from importlib.metadata import version

    import onnx

    graph = onnx.load(str(out_dir / "model.onnx"), load_external_data=False).graph
    return {"builder": f"{DECODER_BUILDER} {version('onnxruntime-genai')}", "options": options,
            "ops": dict(Counter(n.op_type for n in graph.node).most_common())}


# The example shapes the graph is traced with: a prefill of 3 tokens after 4 cached ones. Both vary in
# the graph (dynamic dims); a cache of 0 tokens, the first call's, runs too (tests/test_llm.py).
_TRACE_TOKENS, _TRACE_PAST = 3, 4


def _export_with_torch_onnx(model, tokenizer, out_dir: Path, max_seq_len: int, group_size: int, head_bits: int,
                            precision: str, weight_method: str = "rtn") -> dict:
    """A decoder the builder has no graph for, through torch.onnx (the dynamo exporter) and onnxruntime's
    MatMulNBitsQuantizer, laid out as the builder lays its graphs out so that one runner steps both.

    The model is wrapped so that the KV cache is plain tensors in and out: a transformers DynamicCache is
    filled from past_key_values.N.key/value, and present.N.key/value are the cache after the call (the
    past and the new tokens). The attention is the model's own (its eager or sdpa code, exported); the
    positions follow from the cache's length as in generate(). Then every MatMul with a weight becomes
    MatMulNBits: the output head at head_bits, the others at the precision's bits, RTN, symmetric, blocks
    of group_size, accuracy_level 4 (int8 compute on ARM). genai_config.json is written as the builder
    writes it, so onnxruntime-genai's runtime reads the directory too (type from the model's config,
    past_present_share_buffer false: this graph returns the whole cache)."""
    import json
    from collections import Counter

    import onnx
    import torch
    from transformers.cache_utils import DynamicCache

    from edgekit.quiet import native_stderr_captured, verbose

    config = model.config
    layers, heads = config.num_hidden_layers, config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_size = getattr(config, "head_dim", None) or config.hidden_size // heads

    class CacheAsTensors(torch.nn.Module):
        def __init__(self, decoder):
            super().__init__()
            self.decoder = decoder

        def forward(self, input_ids, attention_mask, *past):
            cache = DynamicCache()
            for i in range(layers):
                cache.update(past[2 * i], past[2 * i + 1], i)
            out = self.decoder(input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache,
                               use_cache=True)
            return (out.logits, *(t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)))

    names = [f"{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    past = tuple(torch.zeros(1, kv_heads, _TRACE_PAST, head_size) for _ in names)
    example = (torch.zeros(1, _TRACE_TOKENS, dtype=torch.long),
               torch.ones(1, _TRACE_PAST + _TRACE_TOKENS, dtype=torch.long), *past)
    tokens = torch.export.Dim("tokens", min=1, max=max_seq_len - 1)
    total = torch.export.Dim("total", min=1, max=max_seq_len)
    cached = torch.export.Dim("past", min=0, max=max_seq_len - 1)
    with tempfile.TemporaryDirectory(prefix="edgekit-onnx-decoder-") as tmp, contextlib.ExitStack() as quiet:
        if not verbose():
            captured = io.StringIO()
            quiet.enter_context(contextlib.redirect_stdout(captured))  # the exporter's progress lines
            quiet.enter_context(native_stderr_captured())
            quiet.enter_context(warnings.catch_warnings())  # its notes on naming the dynamic axes
            warnings.simplefilter("ignore")
        torch.onnx.export(
            CacheAsTensors(model).eval(), example, str(Path(tmp) / "float.onnx"), dynamo=True, external_data=True,
            optimize=True, input_names=["input_ids", "attention_mask", *(f"past_key_values.{n}" for n in names)],
            output_names=["logits", *(f"present.{n}" for n in names)],
            dynamic_shapes={"input_ids": {1: tokens}, "attention_mask": {1: total},
                            "past": tuple({2: cached} for _ in names)})
        graph = onnx.load(str(Path(tmp) / "float.onnx"))  # its weights read in: the temporary files go
        graph, options = _quantize_matmuls(graph, precision, head_bits, group_size, weight_method)
        _save_with_weights_beside(graph, out_dir)
    genai = {"model": {
        "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        "context_length": max_seq_len, "type": config.model_type, "vocab_size": config.vocab_size,
        "decoder": {"session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                    "filename": "model.onnx", "head_size": head_size, "hidden_size": config.hidden_size,
                    "num_attention_heads": heads, "num_hidden_layers": layers, "num_key_value_heads": kv_heads,
                    "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                               "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
                    "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                                "present_value_names": "present.%d.value"}}},
        "search": {"do_sample": False, "num_beams": 1, "max_length": max_seq_len, "past_present_share_buffer": False}}
    (out_dir / "genai_config.json").write_text(json.dumps(genai, indent=4) + "\n")
    return {"exporter": f"torch.onnx (dynamo) {torch.__version__.split('+')[0]}", "options": options,
            "ops": dict(Counter(n.op_type for n in graph.graph.node).most_common())}


def _head_matmul(model) -> str:
    """The MatMul that computes the logits: the first one met walking back from the `logits` output."""
    producer = {out: node for node in model.graph.node for out in node.output}
    weights = {init.name for init in model.graph.initializer}
    todo, seen = ["logits"], set()
    while todo:
        node = producer.get(todo.pop(0))
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type == "MatMul" and any(i in weights for i in node.input):
            return node.name
        todo += list(node.input)
    raise FormatUnsupported("the exported decoder graph has no MatMul computing its logits",
                            hint="build it with --format executorch")


def _quantize_matmuls(graph, precision: str, head_bits: int, group_size: int, weight_method: str):
    """(the graph with its weight MatMuls as MatMulNBits, what was done) for precision int4/int8: the output
    head at head_bits (RTN), the others at the precision's bits by weight_method; fp32: as it is."""
    if precision == "fp32":
        return graph, []
    bits = int(precision.removeprefix("int"))
    head = _head_matmul(graph)
    method = "HQQ (scale and zero point per block)" if weight_method == "hqq" else "RTN symmetric"
    options = [f"MatMulNBitsQuantizer: block_size={group_size}, accuracy_level=4", f"{head}: int{head_bits} RTN symmetric",
               f"other MatMuls: int{bits} {method}"]
    # The quantizer takes every MatMul not excluded (its nodes_to_include adds to them), so the head
    # goes alone first, the others excluded, then the rest (the head is MatMulNBits by then).
    others = [n.name for n in graph.graph.node if n.op_type == "MatMul" and n.name != head]
    graph = _matmul_nbits(graph, head_bits, group_size, exclude=others)
    return _matmul_nbits(graph, bits, group_size, method=weight_method), options


def _save_with_weights_beside(graph, out_dir: Path) -> None:
    """model.onnx with its weights in model.onnx.data (DECODER_FILES), as the builder writes them."""
    import onnx

    out_dir.mkdir(parents=True, exist_ok=True)
    data = out_dir / "model.onnx.data"
    if data.exists():
        data.unlink()  # onnx appends to an existing data file; the graph's float weights were read in already
    onnx.save(graph, str(out_dir / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="model.onnx.data")


def _matmul_nbits(model, bits: int, group_size: int, exclude: list[str] | None = None, method: str = "rtn"):
    """onnxruntime's MatMulNBitsQuantizer over the graph's weight MatMuls but those in `exclude`, blocks of
    group_size, int8 compute on ARM (accuracy_level 4): RTN symmetric, or HQQ (a scale and a zero point
    per block; its config takes no accuracy_level, so the nodes are given it after). Its INFO lines are
    kept from the terminal."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:  # it calls logging.basicConfig(level=INFO) when imported; the root logger is put back (see _run_builder)
        from onnxruntime.quantization.matmul_nbits_quantizer import (
            DefaultWeightOnlyQuantConfig,
            HQQWeightOnlyQuantConfig,
            MatMulNBitsQuantizer,
        )
    finally:
        root.handlers[:], root.level = handlers, level
    if method == "hqq":
        config = HQQWeightOnlyQuantConfig(block_size=group_size, bits=bits)
    else:
        config = DefaultWeightOnlyQuantConfig(block_size=group_size, is_symmetric=True, accuracy_level=4, bits=bits)
    with root_logger_quiet():
        quantizer = MatMulNBitsQuantizer(model, nodes_to_exclude=exclude, algo_config=config)
        quantizer.process()
    model = quantizer.model.model
    if method == "hqq":
        import onnx

        for node in model.graph.node:
            if node.op_type == "MatMulNBits" and not any(a.name == "accuracy_level" for a in node.attribute):
                node.attribute.append(onnx.helper.make_attribute("accuracy_level", 4))
    return model


def _run_builder(model_dir: Path, out_dir: Path, cache_dir: Path, options: list[str], precision: str = "int4") -> None:
    """onnxruntime_genai.models.builder on a local model directory for the CPU, nothing fetched (no token,
    no remote code). Its prints and progress bars are kept from the terminal unless --debug."""
    import logging

    from edgekit.quiet import verbose

    quiet_python_logs()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    # onnxruntime's matmul_nbits_quantizer calls logging.basicConfig(level=INFO) when imported: that
    # handler would print every later INFO line of every library; the root logger is put back as it was.
    try:
        from onnxruntime_genai.models.builder import create_model, parse_extra_options
    except ImportError as e:
        raise UsageError(f"text generation to .onnx needs onnxruntime-genai's model builder ({e})",
                         hint="pip install 'edgekit[llm]'") from None
    finally:
        root.handlers[:], root.level = handlers, level
    args = (None, str(model_dir), str(out_dir), precision, "cpu", str(cache_dir))
    with contextlib.ExitStack() as quiet:
        if not verbose():
            captured = io.StringIO()
            quiet.enter_context(contextlib.redirect_stdout(captured))
            quiet.enter_context(contextlib.redirect_stderr(captured))
            quiet.enter_context(root_logger_quiet())
        extra = parse_extra_options(*args, [*options, "hf_token=false", "hf_remote=false"])
        create_model(*args, **extra)


def emulate_generation(core, artifact: Path, prompt_ids, new_tokens: int, max_seq_len: int,
                       eos_id: int | None = None) -> tuple[dict, int | None]:
    """A decoder `.onnx` generating on the emulated core, in the guest's onnxruntime (the device runner's
    OnnxDecoder and greedy loop)."""
    return generate_in_guest_python(core, [artifact.parent / f for f in DECODER_FILES], prompt_ids, new_tokens,
                                    max_seq_len, eos_id)
