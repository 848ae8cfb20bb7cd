"""SmoothQuant activation smoothing of a float model before static int8 (`--smooth-quant ALPHA`).

Transformer activations carry a few outlier channels: the same hidden dimensions are
10-100x larger than the rest in every token (Dettmers et al., 2022, "LLM.int8()").
Every format quantizes an activation with one scale per tensor, so those channels set
the range and the others are left a handful of the 256 levels. Weights have no such
outliers and are quantized per output channel. Xiao et al., 2023, "SmoothQuant:
Accurate and Efficient Post-Training Quantization for Large Language Models" (ICML,
section 4, eq. 4) divide each input channel j of a Linear by

    s_j = max |X_j| ** alpha / max |W_:,j| ** (1 - alpha)

and multiply column j of its weight by s_j: X W^T = (X / s) (W s)^T exactly, and the
quantization difficulty moves from the activation to the weight in a share set by
alpha (0.5 balances them; the paper uses 0.5 for OPT and BLOOM, up to 0.75-0.85 for
models with stronger outliers). The division is folded into the op that produced X, so
the artifact computes nothing more.

Written once for every format, on the float model, like equalize.py: .pte, .ptl,
.onnx and .tflite quantize the same smoothed network.

What is smoothed (read from torch.export's graph, never from names): a normalisation
whose per-channel affine is a parameter, every one of whose users is a Linear with a
weight of its own:

- `layer_norm(x, shape, weight, bias)`: weight and bias divided by s (pre-LN blocks:
  ViT/DeiT, GPT-style, Whisper: the LayerNorm before q/k/v and before the MLP);
- `mul(weight, x)` by a 1-D parameter of the channel count (RMSNorm as Llama, Qwen2,
  T5 write it: the normalised x times its weight, last; or any learned per-feature
  scale read by Linears only): the weight divided by s.

Post-LN encoders (BERT, MiniLM, RoBERTa) have no such pair: their LayerNorm's output
is also the residual stream added after the next block, and dividing it would change
what is added. They come back unchanged, and the record says so. (Measured on
all-MiniLM-L6-v2 with every Linear's input smoothed through an explicit division:
no gain, its static int8 error does not enter at the Linear inputs.)

The float model of the build is not touched: the gate still compares the artifact
with the original float outputs.
"""

from __future__ import annotations

import copy
from collections import Counter

from edgekit.errors import FormatUnsupported
from edgekit.formats.base import aten_name, torch_export
from edgekit.formats.equalize import input_ranges

DEFAULT_ALPHA = 0.5  # the paper's migration strength for most models (section 4)
# A channel's factor stays within these bounds: a dead channel (max |x| = 0) or an all-zero weight
# column would otherwise give 0 or infinity; 1e4 either way is far past any outlier ratio measured
# in transformers (LLM.int8(): ~20x-100x).
MIN_SCALE, MAX_SCALE = 1e-4, 1e4


def smooth(model, example: tuple, calib_batches, alpha: float = DEFAULT_ALPHA) -> tuple[object, dict]:
    """A copy of `model` with the smoothable pairs of the module doc rescaled, and the record of what
    changed: {"method", "alpha", "pairs", "outlier_ratio_before", "outlier_ratio_after", "layers"}.
    Models torch.export cannot trace come back unchanged, with the reason."""
    model = copy.deepcopy(model).eval()
    try:
        ep = torch_export(model, example)
    except FormatUnsupported as e:
        return model, {"pairs": 0, "alpha": alpha, "note": f"{e.message}: left as it is"}
    pairs = _pairs(ep, model)
    if not pairs:
        return model, {"pairs": 0, "alpha": alpha,
                       "note": "no normalisation whose output feeds Linear layers only (post-LN encoders such as "
                               "BERT add it to the residual stream too): nothing to smooth"}
    # the first consumer's input is the normalisation's output: one pre-hook per pair
    ranges = input_ranges(model, [p["consumers"][0] for p in pairs], calib_batches, channel_dim=-1)
    layers = []
    for p in pairs:
        r = ranges.get(p["consumers"][0])
        if r is None:
            continue
        s = _factors(model, p, r, alpha)
        before, after = _outlier_ratio(r), _outlier_ratio(r / s)
        _apply(model, p, s)
        layers.append({"producer": p["producer"], "kind": p["kind"], "consumers": p["consumers"],
                       "outlier_ratio_before": round(before, 1), "outlier_ratio_after": round(after, 1)})
    return model, {
        "method": "SmoothQuant activation smoothing into Linear layers (Xiao et al., 2023)",
        "alpha": alpha,
        "pairs": len(layers),
        "outlier_ratio_before": round(max((x["outlier_ratio_before"] for x in layers), default=1.0), 1),
        "outlier_ratio_after": round(max((x["outlier_ratio_after"] for x in layers), default=1.0), 1),
        "layers": layers,
    }


def _pairs(ep, model) -> list[dict]:
    """(normalisation, its affine parameters, the Linear consumers) in the exported graph."""
    import torch

    params = ep.graph_signature.inputs_to_parameters
    uses = Counter(params.get(a.name) for n in ep.graph.nodes if n.op == "call_function"
                   for a in n.args if hasattr(a, "name"))  # a parameter two ops read is left alone

    def param(arg):
        return params.get(arg.name) if hasattr(arg, "name") else None

    found = []
    for node in ep.graph.nodes:
        if node.op != "call_function":
            continue
        kind, affine = _affine(node, param)
        if kind is None or any(uses.get(a) != 1 for a in affine):
            continue
        channels = model.get_parameter(affine[0]).numel()
        consumers = []
        for user in node.users:
            weight = param(user.args[1]) if aten_name(user) == "linear" and len(user.args) > 1 else None
            if user.args[0] is not node or weight is None or uses.get(weight) != 1 or not weight.endswith(".weight"):
                break
            name = weight.rpartition(".")[0]
            layer = model.get_submodule(name)
            if not isinstance(layer, torch.nn.Linear) or layer.in_features != channels:
                break
            consumers.append(name)
        else:
            if consumers:
                found.append({"producer": affine[0].rpartition(".")[0], "kind": kind, "affine": affine,
                              "consumers": consumers})
    return found


def _affine(node, param) -> tuple[str | None, tuple[str, ...]]:
    """("layer_norm" | "rms_norm", the parameters to divide by s) or (None, ()) for any other op."""
    name = aten_name(node)
    if name == "layer_norm" and len(node.args) >= 3:
        weight = param(node.args[2])
        bias = param(node.args[3]) if len(node.args) >= 4 and node.args[3] is not None else None
        if weight is None or (len(node.args) >= 4 and node.args[3] is not None and bias is None):
            return None, ()
        return "layer_norm", (weight,) + ((bias,) if bias else ())
    if name == "mul" and len(node.args) == 2:
        scales = [param(a) for a in node.args]
        weight = next((w for w in scales if w is not None), None)
        tensor = node.args[1] if scales[0] is not None else node.args[0]
        shape = getattr(getattr(tensor, "meta", {}).get("val"), "shape", None)
        wshape = getattr(getattr(node.args[scales.index(weight)], "meta", {}).get("val"), "shape", None) \
            if weight is not None else None
        # a 1-D weight of the channel count scaling the last dim, the output the input's shape
        if None in scales and shape and len(shape) >= 2 and wshape is not None and tuple(wshape) == (shape[-1],) \
                and tuple(node.meta["val"].shape) == tuple(shape):
            return "rms_norm", (weight,)
    return None, ()


def _factors(model, pair: dict, r, alpha: float):
    """s per channel (the module doc's eq.), from the calibration max |x| `r` and the consumers' weights."""
    import torch

    w = torch.cat([model.get_submodule(c).weight.detach().abs() for c in pair["consumers"]]).amax(dim=0)
    s = r.clamp(min=1e-12) ** alpha / w.clamp(min=1e-12) ** (1 - alpha)
    s = torch.where((r > 0) & (w > 0), s, torch.ones_like(s))
    return s.clamp(MIN_SCALE, MAX_SCALE)


def _outlier_ratio(r) -> float:
    """The widest channel's max |x| over the median channel's: how much of the range outliers take."""
    live = r[r > 0]
    return float(live.max() / live.median()) if live.numel() else 1.0


def _apply(model, pair: dict, s) -> None:
    """x' = x / s: into the normalisation's affine, out of (into) every consumer's weight columns."""
    import torch

    with torch.no_grad():
        for name in pair["affine"]:
            model.get_parameter(name).div_(s)
        for c in pair["consumers"]:
            model.get_submodule(c).weight.mul_(s)
