"""Cross-layer range equalization of a float model before static int8 (`--equalize`).

Depthwise-separable nets (MobileNet, EfficientNet-Lite) feed each depthwise
convolution a tensor whose channels differ in range by two or three orders of
magnitude: EfficientNet-Lite0's expanded activations, measured on photo crops,
span 180-800x between their largest and smallest live channel. Every format
quantizes activations with one scale per tensor, so the narrow channels are
left a handful of the 256 levels. Nagel et al., 2019, "Data-Free Quantization
Through Weight Equalization and Bias Correction" (ICCV, section 4.1) observe
that a positive per-channel scale moves through a piecewise-linear activation:
with x' = k x per channel, conv2(W2) of act(x) equals conv2(W2 / k) of act(k x)
when act is ReLU (homogeneous). The scale is put into the producer (the batch
norm's affine, or the convolution's weight and bias) and taken out of the
consumer.

Written once for every format, on the float model: a transform of weights
only, before any quantizer sees the model, so .pte, .ptl, .onnx and .tflite
quantize the same equalized network.

What is equalized, and how (read from torch.export's graph, never from names):

- producer conv -> [batch norm] -> [ReLU | ReLU6/Hardtanh(0, M) | none] ->
  [zero padding] -> depthwise conv, each intermediate used once. Depthwise consumers only: their
  weights are quantized per output channel, which is the same channel, so the
  division by k costs their weights nothing. (A dense consumer's per-channel
  weight scale is set by its widest input column; shrinking columns there
  trades weight precision for activation precision: Nagel's balance, not done
  here.)
- producer weights are quantized per output channel too (the default); with
  per-tensor weights (`--per-tensor`) nothing is equalized.
- the scale grows each channel to the tensor's widest: with no upper clamp
  (ReLU, or none) k = R / r exactly, R the widest channel's max |x| on the
  calibration data. Under a clamp at M (ReLU6) the identity holds only while
  the clamp does not fire, so a channel that reached M / 2 on the calibration
  data keeps k = 1, and the others grow to M / 2 (HEADROOM): the identity then
  holds up to twice each channel's calibration maximum, and beyond that the
  clamp cuts the channel there.

The float model of the build is not touched: the gate still compares the
artifact with the original float outputs, so an equalization that changed
predictions would fail the build like any other error.
"""

from __future__ import annotations

import copy
import math
import operator
from collections import Counter

from edgekit.errors import FormatUnsupported
from edgekit.formats.base import aten_name, torch_export

# Largest growth of one channel: a channel 1000x narrower than the widest carries almost
# nothing; growing it further makes its consumer's weights that much smaller (fp32 has room,
# the per-channel weight scale absorbs it) for no measurable gain.
MAX_SCALE = 1000.0
# A channel whose calibration maximum is within this share of the clamp reached it (ReLU6's
# output is exactly 6.0 where it cut; 1e-6 covers fp32 rounding of a batch norm's affine).
CLAMP_REACHED = 1e-6

# Under a clamp, a free channel grows to M / HEADROOM, not to M: inputs the calibration data did not
# show exceed its calibration maximum (EfficientNet-Lite0's evaluation crops do, on many channels),
# and grown to M those values would be cut by the clamp. Twice the calibration maximum passes
# unchanged, for one of the eight bits.
HEADROOM = 2.0
_CLAMP_OPS = {"relu", "relu_", "relu6", "relu6_", "hardtanh", "hardtanh_", "clamp", "clamp_", "clamp_min", "clamp_min_"}


def equalize(model, example: tuple, calib_batches) -> tuple[object, dict]:
    """A copy of `model` with the equalizable pairs of the module doc rescaled, and the record of
    what changed: {"pairs", "spread_before", "spread_after", "layers": [...]}. Models torch.export
    cannot trace come back unchanged, with the reason."""
    model = copy.deepcopy(model).eval()
    try:
        ep = torch_export(model, example)
    except FormatUnsupported as e:  # a model torch.export cannot trace is left as it is, and says why
        return model, {"pairs": 0, "note": f"{e.message}: left as it is"}
    pairs = _pairs(ep, model)
    if not pairs:
        return model, {"pairs": 0, "note": "no conv -> activation -> depthwise conv pair"}
    ranges = input_ranges(model, [p["consumer"] for p in pairs], calib_batches)
    layers = []
    for p in pairs:
        r = ranges.get(p["consumer"])
        if r is None:
            continue
        k, before, after = _scales(r, p["clamp"])
        if k is None:
            continue
        _apply(model, p, k)
        layers.append({"consumer": p["consumer"], "producer": p["producer"], "activation": p["activation"],
                       "spread_before": round(before, 1), "spread_after": round(after, 1)})
    return model, {
        "method": "cross-layer range equalization into depthwise convolutions (Nagel et al., 2019)",
        "pairs": len(layers),
        "spread_before": round(max((x["spread_before"] for x in layers), default=1.0), 1),
        "spread_after": round(max((x["spread_after"] for x in layers), default=1.0), 1),
        "layers": layers,
    }


def _pairs(ep, model) -> list[dict]:
    """(producer, batch norm, activation, depthwise consumer) chains in the exported graph."""
    import torch

    params = ep.graph_signature.inputs_to_parameters
    convs = [n for n in ep.graph.nodes if n.op == "call_function" and aten_name(n) == "conv2d"]
    uses = Counter(params.get(n.args[1].name) for n in convs)  # a weight shared by two convs is left alone

    def module_of(node, what):
        fqn = params.get(node.name)
        if fqn is None or not fqn.endswith("." + what) and fqn != what:
            return None
        return fqn.rpartition(".")[0]

    found = []
    for conv2 in convs:
        consumer = module_of(conv2.args[1], "weight")
        if consumer is None or uses.get(params[conv2.args[1].name]) != 1:
            continue
        layer = model.get_submodule(consumer)
        if not isinstance(layer, torch.nn.Conv2d) or layer.groups == 1 or layer.groups != layer.in_channels:
            continue
        n, activation, clamp = conv2.args[0], "none", math.inf
        while _zero_pad(n):
            n = n.args[0]  # "same" padding in zeros: k * 0 = 0, so it moves with the scale
        if aten_name(n) in _CLAMP_OPS:
            clamp = _upper_clamp(n)
            if clamp is None or len(n.users) != 1:
                continue
            activation = "relu" if clamp == math.inf else f"clamp(0, {clamp:g})"
            n = n.args[0]
        if n.op == "call_function" and n.target is operator.getitem:
            n = n.args[0]
        bn = None
        if "batch_norm" in aten_name(n):
            bn = module_of(n.args[1], "weight") if n.args[1] is not None else None
            if bn is None or not isinstance(model.get_submodule(bn), torch.nn.modules.batchnorm._BatchNorm):
                continue
            n = n.args[0]
        if not (n.op == "call_function" and aten_name(n) == "conv2d") or any(len(u.users) > 1 for u in _chain(n, conv2)):
            continue
        producer = module_of(n.args[1], "weight")
        if producer is None or uses.get(params[n.args[1].name]) != 1 or \
                not isinstance(model.get_submodule(producer), torch.nn.Conv2d):
            continue
        found.append({"producer": producer, "bn": bn, "activation": activation, "clamp": clamp, "consumer": consumer})
    return found


def _chain(start, end):
    """The producer `start` and the nodes between it and the consumer `end` (each must have one user)."""
    out, n = [], end.args[0]
    while n is not start:
        out.append(n)
        n = n.args[0]
    return [start, *out]


def _zero_pad(node) -> bool:
    """aten.pad(x, pad, "constant", 0) or aten.constant_pad_nd(x, pad, 0)."""
    name, args = aten_name(node), list(getattr(node, "args", ())) + [None, None, None]
    if name == "constant_pad_nd":
        return args[2] in (0, 0.0, None)
    return name == "pad" and args[2] in ("constant", None) and args[3] in (0, 0.0, None)



def _upper_clamp(node) -> float | None:
    """The activation's upper bound (inf for ReLU), or None when its lower bound is not 0."""
    name = aten_name(node).rstrip("_")
    if name == "relu":
        return math.inf
    if name == "relu6":
        return 6.0
    args = list(node.args[1:]) + [None, None]
    if name == "hardtanh":
        low, high = (args[0] if args[0] is not None else -1.0), (args[1] if args[1] is not None else 1.0)
    elif name == "clamp":
        low, high = args[0], args[1] if args[1] is not None else math.inf
    elif name == "clamp_min":
        low, high = args[0], math.inf
    else:
        return None
    return float(high) if low == 0 and high is not None and high > 0 else None


def input_ranges(model, consumers: list[str], calib_batches, channel_dim: int = 1) -> dict:
    """Per-channel max |x| of each consumer's input over the calibration data (channels on
    `channel_dim`: 1 for a conv's NCHW input, -1 for a Linear's; smoothing.py reads it too)."""
    import torch

    ranges: dict[str, torch.Tensor] = {}
    calls: dict[str, int] = {}

    def hook(name):
        def record(_module, args):
            x = args[0].detach().abs().movedim(channel_dim, 0).reshape(args[0].shape[channel_dim], -1).amax(dim=1)
            ranges[name] = x if name not in ranges else torch.maximum(ranges[name], x)
            calls[name] = calls.get(name, 0) + 1
        return record

    handles = [model.get_submodule(c).register_forward_pre_hook(hook(c)) for c in consumers]
    try:
        with torch.no_grad():
            batches = 0
            for batch in calib_batches:
                model(*batch)
                batches += 1
    finally:
        for h in handles:
            h.remove()
    # a module called more than once per forward is shared: its input is not one tensor
    return {c: r for c, r in ranges.items() if calls[c] == batches}


def _scales(r, clamp: float):
    """(k per channel, spread before, spread after) or (None, ...) when nothing would change."""
    import torch

    live = r > 0
    if live.sum() < 2:
        return None, 1.0, 1.0
    before = float(r[live].max() / r[live].min())
    if clamp == math.inf:
        k = torch.where(live, r[live].max() / r, torch.ones_like(r))
    else:
        free = live & (r < clamp * (1 - CLAMP_REACHED))  # channels the clamp never cut
        k = torch.where(free, torch.clamp(clamp / (r * HEADROOM), min=1.0), torch.ones_like(r))
    k = k.clamp(max=MAX_SCALE)
    if bool((k == 1).all()):
        return None, before, before
    grown = (r * k)[live]
    return k, before, float(grown.max() / grown.min())


def _apply(model, pair: dict, k) -> None:
    """x' = k x: into the producer's affine, out of the depthwise consumer's weights."""
    import torch

    with torch.no_grad():
        if pair["bn"] is not None:
            bn = model.get_submodule(pair["bn"])
            bn.weight.mul_(k)
            bn.bias.mul_(k)
        else:
            conv = model.get_submodule(pair["producer"])
            conv.weight.mul_(k.view(-1, *([1] * (conv.weight.dim() - 1))))
            if conv.bias is not None:
                conv.bias.mul_(k)
        dw = model.get_submodule(pair["consumer"])
        per_out = k.repeat_interleave(dw.out_channels // dw.in_channels)  # depth multiplier
        dw.weight.div_(per_out.view(-1, 1, 1, 1))
