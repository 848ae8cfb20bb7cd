"""PT2E quantizers that quantize activations only (the rule: edgekit/formats/activations.py).

`integer_safe` wraps any PT2E quantizer (XNNPACK's, LiteRT's) and fixes two
things upstream does not:

- XNNPACKQuantizer.transform_for_annotation lifts every scalar argument of
  aten.add/mul into a *float32* buffer, so `arange(16) + 0` becomes float and
  the index it feeds fails at calibration ("tensors used as indices must be
  long, int, byte or bool tensors"). Reported as pytorch/executorch#22062,
  fixed upstream by #22065 after executorch 1.5.1: here the lifted constant
  keeps the node's own dtype.
- Quantizers annotate ops by pattern (add, mul, linear ...) whatever their
  inputs are, so an integer add, a mask add or a linear over a masked tensor
  gets observers. An op with any edge that is not quantizable loses its whole
  annotation and stays float: a half-annotated op (a quantized weight under a
  float input) is no pattern a backend lowers.

and one that costs accuracy on every ReLU6 network:

- XNNPACKQuantizer fuses only ReLU into the conv/linear before it; a ReLU6
  (aten.hardtanh) instead *shares* the conv's observer, so the int8 range is
  the conv's pre-activation range. Depthwise convs of a pretrained
  EfficientNet-Lite0 reach several hundred before the clamp: 0..6 then gets a
  handful of the 256 levels, and the int8 model keeps the float top-1 on 56 %
  of photo crops (PT2E graph run in Python; 91 % with the clamp fused).
  `fuse_clamps` moves the observer after the clamp, as for ReLU: XNNPACK fuses
  the clamp into the conv's output min/max anyway (its FuseActivationPass),
  so the kernel is the same and only the scale changes.

`with_calibration` sets the activation observer a calibration method names,
for every PT2E format alike: minmax, histogram (the quantizers' own default:
the range minimising L2 quantization error over a histogram), and percentile
(`PercentileObserver`: the range holding PERCENTILE % of the values seen,
ONNX Runtime's percentile calibration on torchao's histogram).
"""

from __future__ import annotations

from edgekit.formats.activations import fx_quantizable

_ANNOTATION = "quantization_annotation"


def node_scopes(node) -> list[str]:
    """The dotted module paths enclosing an exported graph's node (torch.export's nn_module_stack)."""
    return [path for path, _ in (node.meta.get("nn_module_stack") or {}).values()]


def integer_safe(quantizer, float_layers: tuple[str, ...] = ()):
    """`quantizer` wrapped so integer and mask tensors stay out of quantization, and so do the ops
    inside the modules named in `float_layers` (for quantizers that take no `None` per module)."""
    from torchao.quantization.pt2e.quantizer import Quantizer

    class IntegerSafeQuantizer(Quantizer):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.report: dict = {}  # what was changed from the inner quantizer's annotation

        def transform_for_annotation(self, model):
            return _lift_scalars_keeping_dtype(model) if _lifts_scalars(self.inner) else \
                self.inner.transform_for_annotation(model)

        def annotate(self, model):
            model = self.inner.annotate(model)
            self.report = {"clamps_observed_after": len(fuse_clamps(model)),
                           "kept_float_ops": keep_float_where_not_quantizable(model, float_layers)}
            return model

        def validate(self, model) -> None:
            self.inner.validate(model)

    return IntegerSafeQuantizer(quantizer)


class GraphRunner:
    """A quantized PT2E graph run in Python (`--quality auto` screens tries this way before any
    export): quantize/dequantize around float ops, the int8 arithmetic of the delegate's kernels up
    to rounding."""

    runtime = "torch"
    validated_as = "PT2E graph in Python"

    def __init__(self, graph):
        self._graph = graph

    def run(self, inputs):
        import torch

        from edgekit.compare import all_outputs

        with torch.no_grad():
            return all_outputs(self._graph(*[torch.from_numpy(a) for a in inputs]))


REPORT_KEY = "edgekit_quantizer"


def record_report(converted, quantizer) -> None:
    """Keep the quantizer's report on the converted graph, for the export record (manifest `lowering.quantizer`)."""
    converted.meta[REPORT_KEY] = getattr(quantizer, "report", {})


def report_of(converted) -> dict:
    return dict(getattr(converted, "meta", {}).get(REPORT_KEY, {}))


def with_calibration(config, calibration: str):
    """A quantizer's QuantizationConfig with its activation observer set by calibration method."""
    import dataclasses

    from torchao.quantization.pt2e import observer

    if calibration == "histogram":
        return config  # XNNPACK's and LiteRT's own activation observer
    # eps as in XNNPACK's own config: the smallest scale an observer may give
    ctr = {"minmax": observer.MinMaxObserver, "percentile": percentile_observer()}[calibration].with_args(eps=2**-12)
    act = dataclasses.replace(config.input_activation, observer_or_fake_quant_ctr=ctr)
    return dataclasses.replace(config, input_activation=act, output_activation=act)


def percentile_observer():
    """torchao's HistogramObserver with the range chosen by percentile instead of its L2 search:
    the histogram is accumulated over every calibration batch (as onnxruntime's calibrator does), then
    (100 - PERCENTILE) / 2 % of the values is cut from each tail. A few glitched values then cost
    nothing; minmax stretches the range to them and the histogram search may keep them."""
    import torch
    from torchao.quantization.pt2e.observer import HistogramObserver

    from edgekit.formats.base import PERCENTILE

    class PercentileObserver(HistogramObserver):
        def _non_linear_param_search(self):
            hist = self.histogram.to(torch.float64)
            total = float(hist.sum())
            if total == 0:
                return self.min_val, self.max_val
            tail = (100.0 - PERCENTILE) / 200.0  # share cut from each end
            cdf = torch.cumsum(hist, 0) / total
            start_bin = int(torch.searchsorted(cdf, torch.tensor(tail, dtype=torch.float64), right=True))
            end_bin = int(torch.searchsorted(cdf, torch.tensor(1.0 - tail, dtype=torch.float64)))
            end_bin = min(max(end_bin, start_bin), self.bins - 1)
            width = (self.max_val - self.min_val) / self.bins
            return self.min_val + width * start_bin, self.min_val + width * (end_bin + 1)

    return PercentileObserver


def _lifts_scalars(quantizer) -> bool:
    """XNNPACKQuantizer (and its subclasses) run the float-only scalar lift."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer

    return isinstance(quantizer, XNNPACKQuantizer)


def _lift_scalars_keeping_dtype(model):
    """XNNPACK's scalar-to-attribute pass, with the constant in the op's own dtype
    (the change upstream made in pytorch/executorch#22065)."""
    import torch
    from torchao.quantization.pt2e.utils import get_new_attr_name_with_prefix

    lifted_ops = (torch.ops.aten.add.Tensor, torch.ops.aten.mul.Tensor)  # the ops XNNPACK's pass lifts scalars of
    for node in model.graph.nodes:
        if node.op != "call_function" or node.target not in lifted_ops:
            continue
        val = node.meta.get("val")
        args = list(node.args)
        for i, arg in enumerate(args):
            if isinstance(arg, torch.fx.Node) or not isinstance(arg, (int, float, bool)):
                continue
            constant = torch.tensor(arg, dtype=val.dtype)
            name = get_new_attr_name_with_prefix("_tensor_constant_")(model)
            model.register_buffer(name, constant)
            with model.graph.inserting_before(node):
                attr = model.graph.create_node("get_attr", name, (), {})
                attr.meta["val"] = val.fake_mode.from_tensor(constant, static_shapes=True)
            args[i] = attr
        node.args = tuple(args)
    model.recompile()
    return model


def _clamp_ops():
    import torch

    aten = torch.ops.aten
    # nn.ReLU6 and nn.Hardtanh export as hardtanh, F.relu6 as relu6 (decomposed to hardtanh on the
    # way to the edge dialect): the activations XNNPACK fuses into the kernel. (A clamp is not
    # fused: moving its producer's observer would leave the producer's output float.)
    return {aten.hardtanh.default, aten.hardtanh_.default, aten.relu6.default}


def _producer_ops():
    import torch

    aten = torch.ops.aten
    # The ops whose output XNNPACK clamps in the kernel itself (FuseActivationPass.FUSEABLE_OPS).
    return {aten.conv2d.default, aten.conv1d.default, aten.linear.default, aten.add.Tensor, aten.sub.Tensor,
            aten.mul.Tensor}


def fuse_clamps(model) -> list[str]:
    """Observe a clamp's output instead of its producer's: `producer -> clamp` becomes one
    quantized pattern, as `producer -> relu` already is. Only where the clamp is the producer's
    sole user and the clamp merely shares the producer's observer (what propagation gives
    hardtanh) or has no annotation at all (relu6, which XNNPACKQuantizer does not know).
    Returns the names of the clamps now observed."""
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, SharedQuantizationSpec

    clamps, producers = _clamp_ops(), _producer_ops()
    fused = []
    for node in model.graph.nodes:
        if node.op != "call_function" or node.target not in clamps or not node.args:
            continue
        prev = node.args[0]
        if not hasattr(prev, "meta") or prev.op != "call_function" or prev.target not in producers:
            continue
        if len(prev.users) != 1:
            continue
        ours, theirs = node.meta.get(_ANNOTATION), prev.meta.get(_ANNOTATION)
        if theirs is None or theirs.output_qspec is None:
            continue
        if isinstance(theirs.output_qspec, SharedQuantizationSpec):
            continue  # the producer itself borrows a range: nothing of its own to move
        shares = ours is not None and isinstance(ours.output_qspec, SharedQuantizationSpec) \
            and ours.output_qspec.edge_or_node is prev
        if ours is not None and not shares:
            continue  # annotated on purpose by the quantizer: leave it
        node.meta[_ANNOTATION] = QuantizationAnnotation(output_qspec=theirs.output_qspec, _annotated=True)
        theirs.output_qspec = None
        fused.append(node.name)
    return fused


def keep_float_where_not_quantizable(model, float_layers: tuple[str, ...] = ()) -> list[str]:
    """Remove the annotation of every op that reads or writes a tensor int8 may not touch, of every
    op inside the modules named in `float_layers`, and of every op whose annotation shares an
    observer with one removed (SharedQuantizationSpec: it would point an activation's observer at a
    mask). Returns the names of the ops kept float."""
    from torchao.quantization.pt2e.quantizer import SharedQuantizationSpec

    quantizable = fx_quantizable(model)
    annotated = [n for n in model.graph.nodes if n.meta.get(_ANNOTATION) is not None]
    kept_float = [n for n in annotated if n not in quantizable or set(node_scopes(n)) & set(float_layers) or any(
        arg not in quantizable for arg in n.meta[_ANNOTATION].input_qspec_map)]
    dropped: set = set()

    def drop(node) -> None:
        ann = node.meta[_ANNOTATION]
        dropped.add(node)
        dropped.update((arg, node) for arg in ann.input_qspec_map)
        ann.input_qspec_map.clear()
        ann.output_qspec = None

    for node in kept_float:
        drop(node)
    changed = bool(kept_float)
    while changed:  # shared specs chain: repeat until none points at a dropped edge or node
        changed = False
        for node in annotated:
            if node in dropped:
                continue
            ann = node.meta[_ANNOTATION]
            specs = [*ann.input_qspec_map.values(), ann.output_qspec]
            if any(isinstance(s, SharedQuantizationSpec) and s.edge_or_node in dropped for s in specs):
                drop(node)
                kept_float.append(node)
                changed = True
    return [n.name for n in kept_float]
