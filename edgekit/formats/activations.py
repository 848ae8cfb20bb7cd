"""Which tensors of a graph int8 may touch: activations, never indices or masks.

Hugging Face encoders compute with integers between their inputs and their
float layers: position ids from `arange(seq) + offset`, token-type buffers,
attention masks expanded, compared and used as indices. They also turn the
integer attention mask into a float one, 0 where a token is kept and
finfo(float32).min (-3.4e38) where it is masked, and add it to the attention
scores. None of these may be observed or quantized: an int8 range spanning
-3.4e38 rounds every real attention score to one level (measured on
all-MiniLM-L6-v2: embedding cosine 0.34 against float, in both the PT2E and
the onnxruntime quantizer).

The rule, the same for every format, read from the graph itself (dtypes and
what each tensor is computed from, never names):

- an *activation* is a floating-point tensor that depends on a floating-point
  model input or on a learned tensor (a float parameter, buffer or initializer
  of more than one element);
- a tensor *carries sentinels* when it is computed from a constant of
  magnitude >= SENTINEL (or inf/nan), or from a tensor that carries them;
  SENTINEL_STOPS (softmax, exp, ...) map sentinels back to ordinary values;
- *quantizable* = activations and float constants that carry no sentinels.
  Integer tensors, float tensors computed at run time from integers and
  scalars only (a mask as 0/1 floats, token counts), masks and the scores they
  were added to are not: an op that reads or writes one stays float.

`fx_quantizable` applies it to a torch.export graph (the PT2E formats:
edgekit/formats/pt2e.py), `onnx_float_nodes` to an ONNX graph (onnx.py).
"""

from __future__ import annotations

import math

# A constant this large stands for -inf/+inf (finfo(float32).min is -3.4e38; fp16's -65504 is
# smaller but has no int8 meaning either: no activation of a trained network reaches 1e4).
SENTINEL = 1e4
# Ops whose output has no sentinels left whatever their input held: softmax and exp turn
# -3.4e38 into 0, bounded activations clip it.
SENTINEL_STOPS_ATEN = {"softmax", "_softmax", "_safe_softmax", "exp", "sigmoid", "tanh", "relu", "relu6",
                       "hardtanh", "clamp", "hardsigmoid"}
SENTINEL_STOPS_ONNX = {"Softmax", "Exp", "Sigmoid", "Tanh", "Relu", "Clip", "HardSigmoid"}


def is_sentinel(value) -> bool:
    """A Python scalar that stands for infinity rather than a value an activation takes."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return not math.isfinite(value) or abs(value) >= SENTINEL


def tensor_has_sentinels(t) -> bool:
    """A constant tensor (numpy or torch) holding +-inf, nan or values of magnitude >= SENTINEL."""
    import numpy as np

    a = t.detach().float().numpy() if hasattr(t, "detach") else np.asarray(t, dtype=np.float64)
    return a.size > 0 and bool((~np.isfinite(a)).any() or np.abs(a).max() >= SENTINEL)


# ---------------------------------------------------------------- torch.export graphs


def is_float_tensor(node) -> bool:
    """Does this graph node produce a floating-point tensor?"""
    import torch

    val = getattr(node, "meta", {}).get("val")
    return isinstance(val, torch.Tensor) and val.is_floating_point()


def fx_quantizable(model) -> set:
    """The nodes of `model`'s graph (a torch.export GraphModule) whose outputs int8 may quantize."""
    import torch

    activations, constants, sentinels = set(), set(), set()
    for node in model.graph.nodes:
        if node.op == "placeholder":
            if is_float_tensor(node):
                activations.add(node)
            continue
        if node.op == "get_attr":
            tensor = _attribute(model, node.target)
            if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
                if tensor_has_sentinels(tensor):
                    sentinels.add(node)
                else:
                    (activations if tensor.numel() > 1 else constants).add(node)
            continue
        if not is_float_tensor(node):
            continue
        inputs = node.all_input_nodes
        if any(arg in activations for arg in inputs):
            activations.add(node)
        stops = _short_name(node.target) in SENTINEL_STOPS_ATEN
        if not stops and (any(arg in sentinels for arg in inputs) or any(map(is_sentinel, _scalars(node)))):
            sentinels.add(node)
    return (activations | constants) - sentinels


def _scalars(node) -> list:
    out = []
    for arg in [*node.args, *node.kwargs.values()]:
        out.extend(arg if isinstance(arg, (list, tuple)) else [arg])
    return [a for a in out if not hasattr(a, "op")]


def _short_name(target) -> str:
    """aten.softmax.int -> softmax."""
    name = getattr(target, "__name__", str(target))
    parts = name.split(".")
    return parts[-2] if len(parts) >= 2 else parts[0]


def _attribute(model, target: str):
    obj = model
    for part in target.split("."):
        obj = getattr(obj, part, None)
    return obj


# ---------------------------------------------------------------- ONNX graphs


def onnx_float_nodes(model) -> list[str]:
    """Names of the nodes of an ONNX model (a ModelProto with inferred shapes) that must stay
    float because a float tensor they read or write is not quantizable."""
    from onnx import TensorProto, numpy_helper

    graph = model.graph
    floats = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}
    dtype = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.output, *graph.value_info]}
    activations = {i.name for i in graph.input if dtype.get(i.name) in floats}
    constants: set[str] = set()
    sentinels: set[str] = set()

    def constant(name: str, tensor) -> None:
        dtype[name] = tensor.data_type
        constants.add(name)
        if tensor.data_type in floats:
            array = numpy_helper.to_array(tensor)
            if tensor_has_sentinels(array):
                sentinels.add(name)
            elif array.size > 1:
                activations.add(name)

    for init in graph.initializer:
        constant(init.name, init)
    kept_float = []
    for node in graph.node:  # ONNX nodes are topologically sorted
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                constant(node.output[0], value)
            continue
        inputs = [i for i in node.input if i]
        # a tensor of unknown type passes activation-ness on (shape inference may leave gaps)
        outputs = [o for o in node.output if dtype.get(o, TensorProto.FLOAT) in floats]
        if any(i in activations for i in inputs):
            activations.update(outputs)
        if node.op_type not in SENTINEL_STOPS_ONNX and any(i in sentinels for i in inputs):
            sentinels.update(outputs)
        touched = [t for t in inputs + list(node.output) if dtype.get(t) in floats]
        if any(t in sentinels or (t not in activations and t not in constants) for t in touched):
            kept_float.append(node.name)
    return kept_float
